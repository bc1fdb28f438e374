"""T5 encoder-decoder (ProtT5) in Flax Linen, numerically equivalent to Hugging Face's T5.

    config = T5Config(d_model=64, num_heads=4, head_dim=16, d_ff=128,
                      num_encoder_layers=2, num_decoder_layers=2)
    model = T5(config)
    variables = model.init(rng, encoder_tokens, decoder_tokens)
    logits = model.apply(variables, encoder_tokens, decoder_tokens, decoder_target_tokens)
    hidden = model.apply(variables, encoder_tokens, method=T5.encode)   # embeddings

Padding is token 0; with packing, segment ids (0 = padding) keep attention inside each packed
sequence. The encoder-only entry point `encode` needs only the `token_embedder` and `encoder`
parameters, so an encoder-only checkpoint (ProtT5 "-enc") runs it without a decoder.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prottrans_jax.errors import UserError
from prottrans_jax.models.attention import MultiHeadAttention, RelativePositionBias
from prottrans_jax.models.attention_bias import AttentionBias, segment_or_token_validity
from prottrans_jax.models.base import ComputeDtypes
from prottrans_jax.models.layers import (
    REMAT_POLICIES,
    Dense,
    Embed,
    MlpBlock,
    RmsNorm,
    apply_layer_stack,
    remat_layer,
)

FEED_FORWARD_TYPES = ("relu", "gated-gelu")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config(ComputeDtypes):
    """Hyper-parameters of a T5 model; bound from gin (`T5Config.d_model = 1024`)."""

    # Fields that change how the model runs, not what its weights compute.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("dropout_rate", "dtype", "param_dtype", "remat_policy",
                                                  "scan_layers", *ComputeDtypes.ATTENTION_FIELDS)

    vocab_size: int = 128
    d_model: int = 768
    num_heads: int = 12
    head_dim: int = 64  # Hugging Face's d_kv
    d_ff: int = 3072
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    feed_forward: str = "relu"  # "relu" (T5 1.0, ProtT5) | "gated-gelu" (T5 1.1)
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    # Tied: the input embedding is also the output layer. Untied: a separate `logits_dense`.
    tie_word_embeddings: bool = True
    # Multiply decoder outputs by d_model**-0.5 before the output layer. None: the T5
    # convention, i.e. equal to tie_word_embeddings (T5 1.0 tied + scaled, T5 1.1 untied +
    # unscaled). transformers 5 decides it separately (config.scale_decoder_outputs): a
    # transformers-4 config.json without tie_word_embeddings, as the released ProtT5's, is
    # scaled even when the checkpoint's lm_head is separate.
    scale_decoder_outputs: Optional[bool] = None
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"  # "none" | "full" | "minimal"
    scan_layers: bool = False
    attention_implementation: str = "xla"  # "xla" | "chunked" | "cudnn" | "pallas" (models/dot_product_attention.py)
    attention_block_size: int = 512  # chunked: queries / keys per tile
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0

    def __post_init__(self):
        self.check_fields(("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers"),
                          {"feed_forward": FEED_FORWARD_TYPES, "remat_policy": REMAT_POLICIES})
        if self.num_decoder_layers < 0:
            raise UserError(f"T5Config.num_decoder_layers must be >= 0, got {self.num_decoder_layers}")

    @property
    def scales_decoder_outputs(self) -> bool:
        """Whether decoder outputs are multiplied by d_model**-0.5 before the output layer."""
        if self.scale_decoder_outputs is None:
            return self.tie_word_embeddings
        return self.scale_decoder_outputs


# ------------------------------------------------------------------------------- layers


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward, each with dropout on its residual branch."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, attention_bias: AttentionBias) -> jax.Array:
        cfg = self.config
        dropout = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)  # noqa: E731
        h = _norm(cfg, "pre_attention_layer_norm")(x)
        h = _attention(cfg, "attention")(h, h, attention_bias, self.deterministic)
        x = x + dropout(h)
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        h = _mlp(cfg, "mlp")(h, self.deterministic)
        x = x + dropout(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    """Causal self-attention, attention over the encoder output, then feed-forward."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(
        self, x: jax.Array, encoded: jax.Array, self_attention_bias: AttentionBias,
        cross_attention_bias: AttentionBias
    ) -> jax.Array:
        cfg = self.config
        dropout = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)  # noqa: E731
        h = _norm(cfg, "pre_self_attention_layer_norm")(x)
        h = _attention(cfg, "self_attention")(h, h, self_attention_bias, self.deterministic)
        x = x + dropout(h)
        h = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        h = _attention(cfg, "encoder_decoder_attention")(h, encoded, cross_attention_bias, self.deterministic)
        x = x + dropout(h)
        h = _norm(cfg, "pre_mlp_layer_norm")(x)
        h = _mlp(cfg, "mlp")(h, self.deterministic)
        x = x + dropout(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _norm(cfg: T5Config, name: str) -> RmsNorm:
    return RmsNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, cfg.parameter_dtype, name=name)


def _attention(cfg: T5Config, name: str) -> MultiHeadAttention:
    return MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, cfg.dropout_rate, cfg.compute_dtype, cfg.parameter_dtype,
        implementation=cfg.attention_implementation, block_size=cfg.attention_block_size, name=name
    )


def _mlp(cfg: T5Config, name: str) -> MlpBlock:
    return MlpBlock(cfg.d_ff, cfg.feed_forward, cfg.dropout_rate, cfg.compute_dtype, cfg.parameter_dtype, name=name)


def _relative_bias(cfg: T5Config, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        bidirectional,
        cfg.parameter_dtype,
        name="relpos_bias",
    )


def _positions(tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
    """Explicit per-example positions, or the row index shared by the batch (shape (1, L))."""
    if positions is not None:
        return positions
    return jnp.arange(tokens.shape[1])[None, :]


# ------------------------------------------------------------------------------- stacks


class Encoder(nn.Module):
    """Embeds tokens and runs the bidirectional stack; the relative bias is computed once."""

    config: T5Config
    token_embedder: Embed

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        valid = segment_or_token_validity(tokens, segment_ids, cfg.pad_id)
        pos = _positions(tokens, positions)
        bias = _relative_bias(cfg, bidirectional=True)(
            pos, pos, query_valid=valid, key_valid=valid, query_segments=segment_ids, key_segments=segment_ids)

        x = self.token_embedder(tokens)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        layer_cls = remat_layer(EncoderLayer, cfg.remat_policy, cfg.scan_layers)
        x = apply_layer_stack(
            lambda name: layer_cls(cfg, deterministic, name=name), cfg.num_encoder_layers, cfg.scan_layers, x, bias
        )
        x = _norm(cfg, "encoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
    """Causal stack attending to the encoder output, then the output layer (logits)."""

    config: T5Config
    token_embedder: Embed

    @nn.compact
    def __call__(
        self,
        encoded: jax.Array,
        encoder_valid: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_target_tokens: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        cfg = self.config
        # Which decoder positions are real. The first decoder input is the start token, which
        # equals pad (0), so validity comes from targets or segments, never from the inputs.
        if decoder_segment_ids is not None:
            decoder_valid = decoder_segment_ids > 0
        elif decoder_target_tokens is not None:
            decoder_valid = decoder_target_tokens != cfg.pad_id
        else:
            decoder_valid = None  # causal masking alone suffices for right padding

        # Cross attention: no position bias in T5; segments only when both sides are packed.
        cross_segments = decoder_segment_ids is not None and encoder_segment_ids is not None
        pos = _positions(decoder_input_tokens, decoder_positions)
        self_bias = _relative_bias(cfg, bidirectional=False)(
            pos, pos, query_valid=decoder_valid, key_valid=decoder_valid, query_segments=decoder_segment_ids,
            key_segments=decoder_segment_ids, causal=True)
        cross_bias = AttentionBias.create(
            decoder_input_tokens.shape[1], encoded.shape[1], query_valid=decoder_valid, key_valid=encoder_valid,
            query_segments=decoder_segment_ids if cross_segments else None,
            key_segments=encoder_segment_ids if cross_segments else None)

        x = self.token_embedder(decoder_input_tokens)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        layer_cls = remat_layer(DecoderLayer, cfg.remat_policy, cfg.scan_layers)
        x = apply_layer_stack(
            lambda name: layer_cls(cfg, deterministic, name=name),
            cfg.num_decoder_layers,
            cfg.scan_layers,
            x,
            encoded,
            self_bias,
            cross_bias,
        )
        x = _norm(cfg, "decoder_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)

        if cfg.scales_decoder_outputs:
            x = x * (cfg.d_model**-0.5)
        if cfg.tie_word_embeddings:
            logits = self.token_embedder.attend(x)
        else:
            logits = Dense(
                cfg.vocab_size, ("embed", "vocab"), cfg.compute_dtype, cfg.parameter_dtype, name="logits_dense"
            )(x)
        # float32 logits: the loss is computed in float32 and the vocabulary is small.
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        return logits


# -------------------------------------------------------------------------------- model


class T5(nn.Module):
    """The T5 encoder-decoder. Parameters: token_embedder, encoder, decoder."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(
            cfg.vocab_size, cfg.d_model, cfg.compute_dtype, cfg.parameter_dtype, name="token_embedder"
        )
        self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
        self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """The encoder's last hidden state (batch, length, d_model): ProtT5's embeddings."""
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions, not enable_dropout)

    def decode(
        self,
        encoded: jax.Array,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_target_tokens: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Logits (batch, target_length, vocab), float32, given the encoder output."""
        encoder_valid = segment_or_token_validity(encoder_input_tokens, encoder_segment_ids, self.config.pad_id)
        return self.decoder(
            encoded,
            encoder_valid,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            not enable_dropout,
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        decoder_target_tokens: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        """Teacher-forced logits (batch, target_length, vocab), float32."""
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout,
        )


def shift_right(targets: jax.Array, decoder_start_id: int = 0) -> jax.Array:
    """Decoder inputs for teacher forcing: targets shifted right, start token first."""
    shifted = jnp.roll(targets, 1, axis=-1)
    return shifted.at[..., 0].set(decoder_start_id)


def dummy_inputs(config: T5Config, batch_size: int = 1, length: int = 8) -> dict[str, jax.Array]:
    """Shapes for `model.init` / `jax.eval_shape` (values do not matter)."""
    tokens = jnp.ones((batch_size, length), jnp.int32)
    return {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens}


def abstract_variables(config: T5Config, encoder_only: bool = False):
    """Boxed abstract variables (shapes, dtypes and logical axes) without allocating any."""
    model = T5(config)
    inputs = dummy_inputs(config)
    rng = jax.random.key(0)
    if encoder_only:
        return jax.eval_shape(lambda: model.init(rng, inputs["encoder_input_tokens"], method=T5.encode))
    return jax.eval_shape(lambda: model.init(rng, **inputs))
