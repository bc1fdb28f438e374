"""ProtTXL: Transformer-XL (Dai et al. 2019) in Flax Linen, a causal protein LM with
segment-level recurrence.

    config = TransfoXLConfig(hidden_size=32, num_layers=2, num_heads=4, head_dim=8, mem_len=16)
    variables = TransfoXL(config).init(rng, tokens)
    logits, memory = TransfoXL(config).apply(variables, tokens)               # first segment
    logits, memory = TransfoXL(config).apply(variables, next_tokens, memory)  # the next one
    hidden, memory = TransfoXL(config).apply(variables, tokens, method=TransfoXL.encode)

The layer stack is models/relative_attention.py's with "uni" attention: relative positional
attention (sinusoids, per-layer r_w_bias / r_r_bias, the rel-shift) over `memory ++ segment`
under a causal mask, post-LayerNorm, ReLU FFN. The memory of each layer is its input over the
last `mem_len` tokens, without gradient. The output layer is the token embedding (tied, as a
protein vocabulary needs no adaptive softmax) plus a bias.

No ProtTXL weights or config were ever released and transformers 5 has no Transformer-XL
class (families-spec section 6), so the trusted reference is Hugging Face's
`XLNetModel(attn_type="uni", bi_data=False, ff_activation="relu")`, which this model equals
with `scale_embedding=False` and that config's `layer_norm_eps`. Where the original TXL
(kimiyoung / cybertronai `mem_transformer.py`, which ProtTXL was trained with) and XLNet's
"uni" path differ, the difference is a config field:

  - `scale_embedding`: TXL multiplies the token embedding by sqrt(d_model) (its
    AdaptiveEmbedding's `emb_scale`); XLNet does not. The tied output layer uses the
    unscaled table either way.
  - `layer_norm_eps`: TXL's nn.LayerNorm default 1e-5; XLNet's 1e-12.
  - `same_length`: XLNet's `create_mask` (each query sees at most mem_len earlier keys);
    kimiyoung's mask shift for same_length differs in detail and is not reproduced.
  - positions: TXL's pos_seq is klen-1 .. 0, XLNet's klen .. 0 with a shift one further; both
    give each visible key the same distance (checked to 4e-7, families-spec 6.5).

Padding is not masked: a causal model's outputs at real tokens do not see padding after them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import families
from prottrans_jax.data.stream import StreamFeatureConverter
from prottrans_jax.models.base import Metrics, token_metrics
from prottrans_jax.models.relative_attention import (RelativeConfig, RelativeStack, TiedLmHead, cached_length,
                                                     checked_memory, memory_carry, memory_of, next_carry,
                                                     next_memory_valid, relative_position_embedding, word_embedding)
from prottrans_jax.models.relative_scores import RelativeMask
from prottrans_jax.vocab import ProteinVocabulary, prot_txl_vocabulary


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransfoXLConfig(RelativeConfig):
    """Hyper-parameters of a Transformer-XL; bound from gin (`TransfoXLConfig.num_layers = 32`).

    The defaults are ProtTXL-BFD's architecture as remembered from the paper's Table 2:
    UNVERIFIED (the table could not be read; families-spec 6.2). 32 layers x 1024, 14 heads x
    128, d_inner 4096 give 562,479,136 parameters with a 32-token vocabulary, which matches the
    paper's "562M"; the vocabulary itself, mem_len 512 and the dropouts are unverified too.
    """

    vocab_size: int = 32  # UNVERIFIED: cybertronai pads its word vocabulary to a multiple of 8
    hidden_size: int = 1024
    num_layers: int = 32  # UNVERIFIED (ProtTXL-BFD; ProtTXL: 30 layers x 16 heads x 64)
    num_heads: int = 14  # UNVERIFIED
    head_dim: int = 128  # UNVERIFIED
    intermediate_size: int = 4096  # UNVERIFIED
    hidden_act: str = "relu"
    dropout_prob: float = 0.1  # UNVERIFIED (kimiyoung wt103: 0.1; cybertronai default 0.0)
    attention_dropout_prob: float = 0.0  # TXL's dropatt; UNVERIFIED
    layer_norm_eps: float = 1e-5  # TXL's nn.LayerNorm default (XLNet's reference: set 1e-12 or its own)
    mem_len: int = 512  # UNVERIFIED (paper extraction: target length 512, memory 512)
    scale_embedding: bool = True  # TXL's sqrt(d_model) on the input embedding; XLNet has none
    pad_id: int = 0

    def __post_init__(self):
        self.check_relative_fields()


class TransfoXL(nn.Module):
    """Transformer-XL. Parameters: word_embedding, stack, lm_head (the output bias)."""

    config: TransfoXLConfig

    def setup(self):
        cfg = self.config
        self.word_embedding = word_embedding(cfg)
        self.stack = RelativeStack(cfg, segments=False)
        self.lm_head = TiedLmHead(cfg, self.word_embedding)
        self.dropout = nn.Dropout(cfg.dropout_prob)

    def encode(self, tokens: jax.Array, memory: jax.Array | None = None,
               deterministic: bool = True, memory_valid: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array | None]:
        """(hidden states (batch, seg_len, d), new memory (num_layers, batch, mem_len, d) or
        None when mem_len is 0). `memory` is the previous call's (None: the first segment);
        `memory_valid` (batch, mlen) bool, if given, hides the memory positions that hold no
        token yet (a fixed-shape memory that starts empty: the trainer's carry)."""
        cfg = self.config
        batch, qlen = tokens.shape
        memory = checked_memory(cfg, memory, batch)
        mlen = memory.shape[2]
        x = self.word_embedding(tokens)
        if cfg.scale_embedding:
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), x.dtype)
        x = nn.with_logical_constraint(self.dropout(x, deterministic=deterministic), ("batch", "length", "embed"))
        pos_emb = relative_position_embedding(qlen, mlen + qlen, cfg.hidden_size, "uni", cfg.clamp_len)
        pos_emb = self.dropout(pos_emb.astype(cfg.compute_dtype), deterministic=deterministic)
        key_visible = None
        if memory_valid is not None:
            key_visible = jnp.concatenate([memory_valid.astype(bool), jnp.ones((batch, qlen), bool)], axis=1)
        mask = RelativeMask(memory_length=mlen, causal=True, same_length=cfg.same_length, key_visible=key_visible)
        h, _, new_memory = self.stack(x, None, memory, pos_emb, mask, None, None, None, deterministic)
        return self.dropout(h, deterministic=deterministic), new_memory

    def __call__(self, tokens: jax.Array, memory: jax.Array | None = None,
                 deterministic: bool = True, memory_valid: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array | None]:
        """(next-token logits (batch, seg_len, vocab) float32, new memory or None)."""
        hidden, new_memory = self.encode(tokens, memory, deterministic, memory_valid)
        return self.lm_head(hidden), new_memory


def init_params(config: TransfoXLConfig, rng: jax.Array) -> Any:
    """Boxed parameters (logical axis names attached)."""
    return TransfoXL(config).init({"params": rng}, jnp.ones((1, 4), jnp.int32))["params"]


# -------------------------------------------------------------------------------- pre-training


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TransfoXLCausalLMModel:
    """ProtTXL's pre-training as the trainer sees it: next-token cross-entropy over a segment
    of the stream (data/stream.py), attending to the memory of its row's previous segments.

    The carry (models/base.py, relative_attention.memory_carry) is each layer's input over the
    last mem_len tokens of the row, without gradient (as Transformer-XL), and which of them
    hold a token yet (a new run, and every evaluation, starts with none). `masked_accuracy` /
    `masked_loss` are the next-residue figures (targets that are residues, not the
    separator); `accuracy` / `loss` count every target, the separator too, as Transformer-XL's
    loss does.
    """

    config: TransfoXLConfig = dataclasses.field(default_factory=TransfoXLConfig)
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    family = "prot_txl"
    feature_converter_cls = StreamFeatureConverter
    headline_metrics = ("loss", "accuracy", "masked_accuracy")
    masked_label = "next-residue"  # what the demo calls its "masked" positions

    @property
    def module(self) -> TransfoXL:
        return TransfoXL(self.config)

    def init_params(self, rng: jax.Array) -> Any:
        return init_params(self.config, rng)

    def init_carry(self, batch_size: int) -> dict | None:
        return memory_carry(self.config, batch_size)

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array, train: bool,
                         carry: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, Metrics, dict | None]:
        """(loss_sum, metrics, the next carry); with no carry, the segment alone (no memory)."""
        tokens = batch["decoder_input_tokens"]
        memory, valid = memory_of(carry)
        logits, new_memory = self.module.apply({"params": params}, tokens, memory, not train, valid,
                                               rngs={"dropout": rng} if train else None)
        loss_sum, metrics = token_metrics(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                          batch["decoder_masked_weights"], self.label_smoothing, self.z_loss)
        return loss_sum, metrics, next_carry(self.config, carry, new_memory, tokens.shape[1])

    def masked_targets(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch["decoder_target_tokens"], batch["decoder_masked_weights"]

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Model FLOPs of one training step (forward + backward, 3x the forward) on a batch:

            3 * (rows * per_row + layers * 2 * (K + 1) * d * A)
            per_row = layers * (2 L d A  +  4 K d A  +  2 L A d  +  4 L d f     q; k, v; o; FFN
                                + 2 L K A  +  2 L (K + 1) A  +  2 L K A)          AC, BD, AV
                      + 2 L d V                                                   output layer

        L: segment length, K = mem_len + L: the keys (memory ++ segment; the keys and values
        of the memory are projected again every step, as the memory holds layer inputs),
        A = heads * head_dim, f: d_inner, V: vocabulary. The relative-position projection
        (K + 1 distances) is shared by the rows. Attention is counted dense (masked entries
        included), as it is computed.
        """
        cfg = self.config
        rows, length = batch["decoder_input_tokens"].shape
        d, a, f, v, layers = (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.intermediate_size,
                              cfg.vocab_size, cfg.num_layers)
        keys = cfg.mem_len + length
        per_row = layers * (2 * length * d * a + 4 * keys * d * a + 2 * length * a * d + 4 * length * d * f
                            + 4 * length * keys * a + 2 * length * (keys + 1) * a) + 2 * length * d * v
        return float(3 * (rows * per_row + layers * 2 * (keys + 1) * d * a))


# -------------------------------------------------------------------------------- embedding


@dataclasses.dataclass(frozen=True)
class TransfoXLEncoder:
    """ProtTXL embeddings: the last layer's hidden state at each residue, the protein read
    after the separator (`<eos>`), as in the training stream.

    A protein longer than `segment_length` (default: mem_len) is read in segments with
    memory, as Transformer-XL reads a stream, so its length has no limit: device memory is
    bounded by one segment's activations (attention scores heads x segment x (segment +
    mem_len) per layer at a time), the memory (num_layers x mem_len x d) and the output
    (length x d): O(length) in all, never O(length^2). While mem_len covers the preceding
    context this equals one causal pass; beyond it each segment sees the last mem_len
    positions of every layer, which is what the model was trained on. (A model with mem_len 0
    has no memory to carry: it reads a protein in one causal pass, O(length^2).)
    """

    config: TransfoXLConfig
    part: str = "encoder"
    segment_length: int | None = None

    PARTS: ClassVar[tuple[str, ...]] = ("encoder",)
    param_keys = ("word_embedding", "stack")

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def framing(self, vocabulary: ProteinVocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (vocabulary.eos_id,), ()

    @property
    def module(self) -> TransfoXL:
        return TransfoXL(self.config)

    def hidden_states(self, params: Any, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        del valid  # causal: padding after a protein changes none of its positions
        cfg = self.config
        batch, length = tokens.shape
        segment = self.segment_length or cfg.mem_len
        encode = lambda x, memory=None, memory_valid=None: self.module.apply(  # noqa: E731
            {"params": params}, x, memory, True, memory_valid, method=TransfoXL.encode)
        if cfg.mem_len <= 0 or length <= segment:
            return encode(tokens)[0]
        count = -(-length // segment)
        padded = jnp.pad(tokens, ((0, 0), (0, count * segment - length)), constant_values=cfg.pad_id)
        segments = jnp.swapaxes(padded.reshape(batch, count, segment), 0, 1)
        start = (jnp.zeros((cfg.num_layers, batch, cfg.mem_len, cfg.hidden_size), cfg.compute_dtype),
                 jnp.zeros((batch, cfg.mem_len), bool))

        def step(carry, segment_tokens):
            memory, memory_valid = carry
            hidden, new_memory = encode(segment_tokens, memory, memory_valid)
            return (new_memory, next_memory_valid(memory_valid, cached_length(cfg.reuse_len, segment))), hidden

        _, hidden = jax.lax.scan(step, start, segments)
        return jnp.swapaxes(hidden, 0, 1).reshape(batch, count * segment, cfg.hidden_size)[:, :length]

    def token_embedding(self, params: Any) -> np.ndarray:
        return np.asarray(params["word_embedding"]["embedding"], np.float32)


families.register(families.Family(
    name=TransfoXLCausalLMModel.family,
    config_cls=TransfoXLConfig,
    hf_model_types=(),  # no released weights, and transformers 5 has no Transformer-XL class
    pretrain_model=lambda config: TransfoXLCausalLMModel(config),
    encoder=TransfoXLEncoder,
    converter_module=None,
    default_vocabulary=prot_txl_vocabulary,
    paper_model="ProtTXL-BFD",
))
