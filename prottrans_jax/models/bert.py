"""The ProtBert family: BERT in Flax Linen (numerically Hugging Face's), its MLM model, its encoder.

    config = BertConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    variables = Bert(config).init(rng, tokens)
    mlm_logits, nsp_logits = Bert(config).apply(variables, tokens)
    hidden = Bert(config).apply(variables, tokens, method=Bert.encode)      # embeddings

BERT as ProtBert was released (Rostlab/prot_bert: 30 layers, 1024 wide, 16 heads, d_ff 4096,
vocabulary 30, 40k absolute positions): learned absolute positions and token types, post-
LayerNorm with bias, GELU (exact erf as the released config says and Hugging Face computes
it; `gelu_tanh` is what the TF code that trained ProtBert ran), an MLM head tied to the token
embeddings, and the pooler + next-sentence head that the released checkpoint carries
(`pretraining_heads`), so it imports and exports whole. Padding is token 0; with packing,
segment ids (0 = padding) keep attention inside each protein and positions restart at 0.

`BertMLMModel` is the trainer's `PretrainModel`: the cross-entropy of the chosen positions
(`bert_mlm`'s 15%: [MASK], random and unchanged alike); masked-token accuracy and loss are
measured on the positions that became [MASK]. `BertEncoder` frames a protein as
`[CLS] residues [SEP]` for embedding and returns the residues' last hidden states.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import families
from prottrans_jax.data.feature_converters import EncoderMLMFeatureConverter
from prottrans_jax.errors import UserError
from prottrans_jax.models.attention import MultiHeadAttention
from prottrans_jax.models.attention_bias import AttentionBias, segment_or_token_validity
from prottrans_jax.models.base import ComputeDtypes, Metrics, Sum, count_sequences, token_metrics
from prottrans_jax.models.layers import (ACTIVATIONS, REMAT_POLICIES, Dense, Embed, LayerNorm, MlpBlock,
                                         activation, apply_layer_stack, remat_layer)
from prottrans_jax.vocab import ProteinVocabulary, prot_bert_vocabulary


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BertConfig(ComputeDtypes):
    """Hyper-parameters of a BERT model; bound from gin (`BertConfig.hidden_size = 1024`).

    Field names follow Hugging Face's BertConfig where one exists (num_layers:
    num_hidden_layers, attention_dropout_prob: attention_probs_dropout_prob).
    """

    # Fields that change how the model runs, not what its weights compute.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_dropout_prob", "attention_dropout_prob",
                                                  "dtype", "param_dtype", "remat_policy", "scan_layers",
                                                  *ComputeDtypes.ATTENTION_FIELDS)

    vocab_size: int = 30
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # "gelu" (erf, Hugging Face) | "gelu_tanh" (TF BERT)
    max_position_embeddings: int = 40000
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pretraining_heads: bool = True  # pooler + next-sentence head (BertForPreTraining's layout)
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"  # "none" | "full" | "minimal"
    scan_layers: bool = False
    attention_implementation: str = "xla"  # "xla" | "chunked" | "cudnn" | "pallas" (models/dot_product_attention.py)
    attention_block_size: int = 512  # chunked: queries / keys per tile
    pad_id: int = 0

    def __post_init__(self):
        self.check_fields(("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                           "max_position_embeddings", "type_vocab_size"),
                          {"hidden_act": ACTIVATIONS, "remat_policy": REMAT_POLICIES})
        if self.hidden_size % self.num_heads:
            raise UserError(f"BertConfig.hidden_size {self.hidden_size} must divide by "
                             f"num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kernel_init(self):
        return nn.initializers.normal(self.initializer_range)


# ------------------------------------------------------------------------------- layers


def dense(cfg: BertConfig, features: int, axes: tuple[str, str | None], name: str) -> Dense:
    """A Dense layer with a bias, in the config's dtypes and initialiser (BERT-like families)."""
    return Dense(features, axes, cfg.compute_dtype, cfg.parameter_dtype, cfg.kernel_init, use_bias=True,
                 name=name)


def _norm(cfg: BertConfig, name: str) -> LayerNorm:
    return LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.parameter_dtype, name=name)


class BertLayer(nn.Module):
    """Post-LayerNorm: LN(x + attention(x)), then LN(h + FFN(h)), dropout on each branch."""

    config: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, attention_bias: AttentionBias) -> jax.Array:
        cfg = self.config
        dropout = lambda y: nn.Dropout(cfg.hidden_dropout_prob)(y, deterministic=self.deterministic)  # noqa: E731
        attention = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.attention_dropout_prob, cfg.compute_dtype,
                                       cfg.parameter_dtype, use_bias=True, scale_logits=True,
                                       kernel_init=cfg.kernel_init, implementation=cfg.attention_implementation,
                                       block_size=cfg.attention_block_size, name="attention")
        h = attention(x, x, attention_bias, self.deterministic)
        x = _norm(cfg, "attention_layer_norm")(x + dropout(h))
        h = MlpBlock(cfg.intermediate_size, cfg.hidden_act, 0.0, cfg.compute_dtype, cfg.parameter_dtype,
                     use_bias=True, kernel_init=cfg.kernel_init, name="mlp")(x, self.deterministic)
        x = _norm(cfg, "mlp_layer_norm")(x + dropout(h))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Embeddings(nn.Module):
    """Token + absolute position + token type embeddings, then LayerNorm and dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        embed = functools.partial(Embed, features=cfg.hidden_size, dtype=cfg.compute_dtype,
                                  param_dtype=cfg.parameter_dtype, embedding_init=cfg.kernel_init)
        self.word = embed(cfg.vocab_size)
        self.position = embed(cfg.max_position_embeddings, axes=("abspos_buckets", "embed"))
        self.token_type = embed(cfg.type_vocab_size, axes=("token_types", "embed"))
        self.layer_norm = _norm(self.config, "layer_norm")
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, tokens: jax.Array, token_types: jax.Array, positions: jax.Array,
                 deterministic: bool) -> jax.Array:
        x = self.word(tokens) + self.position(positions) + self.token_type(token_types)
        x = self.dropout(self.layer_norm(x), deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Encoder(nn.Module):
    """The stack of `num_layers` BertLayers (scanned or not, rematerialised by policy)."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, attention_bias: AttentionBias, deterministic: bool) -> jax.Array:
        cfg = self.config
        layer_cls = remat_layer(BertLayer, cfg.remat_policy, cfg.scan_layers)
        return apply_layer_stack(lambda name: layer_cls(cfg, deterministic, name=name),
                                 cfg.num_layers, cfg.scan_layers, x, attention_bias)


class MlmHead(nn.Module):
    """Transform (dense, activation, LayerNorm), then the tied token embedding plus a bias."""

    config: BertConfig
    embeddings: Embeddings

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        h = dense(cfg, cfg.hidden_size, ("embed", "mlp"), "transform")(hidden)
        h = _norm(cfg, "layer_norm")(activation(cfg.hidden_act)(h))
        bias = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.parameter_dtype)
        logits = self.embeddings.word.attend(h) + jnp.asarray(bias, cfg.compute_dtype)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class Bert(nn.Module):
    """BERT. Parameters: embeddings, encoder, mlm (and pooler, nsp with pretraining_heads).

    ALBERT subclasses it with its own parts (`setup`) and sentence head's name.
    """

    config: BertConfig
    SENTENCE_HEAD = "nsp"  # the pre-training head on the pooled [CLS] (ALBERT's: "sop")

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.mlm = MlmHead(cfg, self.embeddings)
        if cfg.pretraining_heads:
            self.pooler = dense(cfg, cfg.hidden_size, ("embed", "mlp"), "pooler")
            self.nsp = dense(cfg, 2, ("embed", None), "nsp")

    def encode(self, tokens: jax.Array, token_types: jax.Array | None = None,
               segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
        """The last hidden state (batch, length, hidden_size): the embeddings."""
        bias, positions, token_types = encoder_inputs(tokens, token_types, segment_ids, positions,
                                                      self.config.pad_id)
        x = self.embeddings(tokens, token_types, positions, deterministic)
        return self.encoder(x, bias, deterministic)

    def mlm_logits(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
                   positions: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        """MLM logits (batch, length, vocab), float32: what pre-training computes."""
        return self.mlm(self.encode(tokens, None, segment_ids, positions, deterministic))

    def __call__(self, tokens: jax.Array, token_types: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array | None]:
        """(MLM logits (batch, length, vocab), NSP (ALBERT: SOP) logits (batch, 2) or None), float32."""
        hidden = self.encode(tokens, token_types, segment_ids, positions, deterministic)
        sentence = None
        if self.config.pretraining_heads:  # the pooler (dense + tanh on [CLS]), then the head
            head = getattr(self, self.SENTENCE_HEAD)
            sentence = head(jnp.tanh(self.pooler(hidden[:, 0]))).astype(jnp.float32)
        return self.mlm(hidden), sentence


def encoder_inputs(tokens: jax.Array, token_types: jax.Array | None, segment_ids: jax.Array | None,
                   positions: jax.Array | None, pad_id: int) -> tuple[AttentionBias, jax.Array, jax.Array]:
    """(attention bias, positions, token types) of a bidirectional encoder over `tokens`:
    padding masked out, attention kept inside each packed segment, positions from 0 and
    token type 0 unless given. Shared by the BERT-like families."""
    valid = segment_or_token_validity(tokens, segment_ids, pad_id)
    bias = AttentionBias.create(tokens.shape[1], tokens.shape[1], query_valid=valid, key_valid=valid,
                                query_segments=segment_ids, key_segments=segment_ids)
    positions = jnp.arange(tokens.shape[1])[None, :] if positions is None else positions
    token_types = jnp.zeros_like(tokens) if token_types is None else token_types
    return bias, positions, token_types


def dummy_tokens(batch_size: int = 1, length: int = 8) -> jax.Array:
    return jnp.ones((batch_size, length), jnp.int32)


# -------------------------------------------------------------------------------- pre-training


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BertMLMModel:
    """ProtBert's pre-training as the trainer sees it: masked-language-model loss only (the
    cards: NSP not used), on `bert_mlm`'s chosen positions."""

    config: BertConfig = dataclasses.field(default_factory=BertConfig)
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    family = "prot_bert"
    feature_converter_cls = EncoderMLMFeatureConverter
    headline_metrics = ("loss", "accuracy", "masked_accuracy")

    @property
    def module(self) -> Bert:
        return Bert(self.config)

    def init_params(self, rng: jax.Array) -> Any:
        return self.module.init({"params": rng}, dummy_tokens())["params"]

    def abstract_params(self) -> Any:
        return jax.eval_shape(self.init_params, jax.random.key(0))

    def logits(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None = None,
               train: bool = False) -> jax.Array:
        return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                                 batch.get("encoder_segment_ids"), batch.get("encoder_positions"),
                                 not train, method="mlm_logits",  # a subclass's module's (ALBERT)
                                 rngs={"dropout": rng} if train else None)

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                         train: bool) -> tuple[jax.Array, Metrics]:
        logits = self.logits(params, batch, rng, train)
        # accuracy: BERT's masked_lm_accuracy, on every chosen position; masked_accuracy: on
        # those that became [MASK], where the input says nothing of the residue (the random
        # and unchanged 10% each show one, and the model cannot tell which is which).
        loss_sum, metrics = token_metrics(logits, batch["encoder_target_tokens"],
                                          batch["encoder_loss_weights"], batch["encoder_masked_weights"],
                                          self.label_smoothing, self.z_loss)
        metrics["sequences"] = Sum(count_sequences(batch["encoder_input_tokens"] > 0,
                                                   batch.get("encoder_segment_ids")))
        return loss_sum, metrics

    def masked_targets(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch["encoder_target_tokens"], batch["encoder_masked_weights"]

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Model FLOPs of one training step (forward + backward) on a batch of this shape:

            rows * (6 * N * L + 12 * layers * hidden * L^2)

        N: the weight-matrix parameters every token goes through (each layer's four attention
        projections and two FFN matrices, the MLM transform and the tied output layer); the
        pooler and NSP head see one token per row and are left out, as are embedding lookups
        and norms. 12 = 3 (forward + 2x backward) * 2 (multiply-add) * 2 (QK^T and AV).
        """
        cfg = self.config
        rows, length = batch["encoder_input_tokens"].shape
        d, f = cfg.hidden_size, cfg.intermediate_size
        per_token = cfg.num_layers * (4 * d * d + 2 * d * f) + d * d + d * cfg.vocab_size
        attention = 12 * cfg.num_layers * d * length ** 2
        return float(rows * (6 * per_token * length + attention))


# -------------------------------------------------------------------------------- embedding


@dataclasses.dataclass(frozen=True)
class BertEncoder:
    """ProtBert embeddings: the last hidden state over `[CLS] residues [SEP]`."""

    config: BertConfig
    part: str = "encoder"

    PARTS: ClassVar[tuple[str, ...]] = ("encoder",)
    param_keys = ("embeddings", "encoder")

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def framing(self, vocabulary: ProteinVocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (vocabulary.bos_id,), (vocabulary.eos_id,)

    @property
    def module(self) -> Bert:
        return Bert(self.config)

    def hidden_states(self, params: Any, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, tokens, None, valid.astype(jnp.int32), method="encode")

    def token_embedding(self, params: Any) -> np.ndarray:
        return np.asarray(params["embeddings"]["word"]["embedding"], np.float32)


families.register(families.Family(
    name=BertMLMModel.family,
    config_cls=BertConfig,
    hf_model_types=("bert",),
    pretrain_model=lambda config: BertMLMModel(config),
    encoder=BertEncoder,
    converter_module="prottrans_jax.convert.bert",
    default_vocabulary=prot_bert_vocabulary,
    paper_model="ProtBert-BFD",
))
