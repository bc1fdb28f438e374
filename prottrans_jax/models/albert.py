"""The ProtAlbert family: ALBERT in Flax Linen (numerically Hugging Face's), its MLM model, its encoder.

    config = AlbertConfig(embedding_size=16, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128)
    variables = Albert(config).init(rng, tokens)
    mlm_logits, sop_logits = Albert(config).apply(variables, tokens)
    hidden = Albert(config).apply(variables, tokens, method=Albert.encode)      # embeddings

ALBERT as ProtAlbert was released (Rostlab/prot_albert: albert-xxlarge-v2's shape with a
34-piece vocabulary and 40k positions): a factorised embedding (tokens, absolute positions
and token types at width `embedding_size` E, LayerNorm, then `embedding_hidden_mapping_in`
E -> hidden), and layers whose parameters are shared across depth. Hugging Face's semantics:
`num_hidden_groups` groups of `inner_group_num` layers each; layer i of `num_layers` runs
group int(i / (num_layers / num_hidden_groups)). ProtAlbert has one group of one layer,
applied 12 times, so its parameters are stored once whatever the depth.

The layer is BERT's post-LayerNorm layer (`bert.BertLayer`, the same math as Hugging Face's
AlbertLayer; it also drops out the FFN branch, as TF ALBERT does and HF's AlbertLayer does
not: the same with ProtAlbert's dropout 0). A shared group runs under `nn.scan` with its
parameters broadcast (`scan_layers`: one compiled body) or as one module called repeatedly.
The MLM head (dense hidden -> E, activation, LayerNorm(E), the token embedding tied as the
decoder, a bias) and the pooler + sentence-order head (`pretraining_heads`) exist so that
`AlbertForPreTraining`-shaped checkpoints import and export whole. With packing, segment ids
keep attention inside each protein and positions restart at 0, as in bert.py.

`AlbertMLMModel` is the trainer's `PretrainModel` (BertMLMModel's loss and metrics, MLM only);
`AlbertEncoder` frames a protein as `[CLS] residues [SEP]` and returns the last hidden states.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from prottrans_jax import families
from prottrans_jax.errors import UserError
from prottrans_jax.models.attention_bias import AttentionBias
from prottrans_jax.models.base import ComputeDtypes
from prottrans_jax.models.bert import Bert, BertConfig, BertEncoder, BertLayer, BertMLMModel, dense
from prottrans_jax.models.layers import (ACTIVATIONS, REMAT_POLICIES, Dense, Embed, LayerNorm, activation,
                                         remat_layer)
from prottrans_jax.vocab import prot_albert_vocabulary

# The logical axis of the factorised embedding width E (gin/models/albert/base.gin maps it).
FACTORIZED_EMBED = "factorized_embed"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AlbertConfig(ComputeDtypes):
    """Hyper-parameters of an ALBERT model; bound from gin (`AlbertConfig.hidden_size = 4096`).

    Field names follow BertConfig (and so Hugging Face's AlbertConfig where BertConfig does);
    `embedding_size`, `num_hidden_groups` and `inner_group_num` are ALBERT's own.
    """

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = BertConfig.RUNTIME_FIELDS

    vocab_size: int = 34
    embedding_size: int = 128
    hidden_size: int = 768
    num_layers: int = 12
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # "gelu" (erf, Hugging Face) | "gelu_tanh" (TF ALBERT)
    max_position_embeddings: int = 40000
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.0  # ALBERT v2's and ProtAlbert's
    attention_dropout_prob: float = 0.0
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pretraining_heads: bool = True  # pooler + sentence-order head (AlbertForPreTraining's layout)
    dtype: str = "bfloat16"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"  # "none" | "full" | "minimal"
    scan_layers: bool = False
    attention_implementation: str = "xla"  # "xla" | "chunked" | "cudnn" | "pallas" (models/dot_product_attention.py)
    attention_block_size: int = 512  # chunked: queries / keys per tile
    pad_id: int = 0

    def __post_init__(self):
        self.check_fields(("vocab_size", "embedding_size", "hidden_size", "num_layers", "num_hidden_groups",
                           "inner_group_num", "num_heads", "intermediate_size", "max_position_embeddings",
                           "type_vocab_size"), {"hidden_act": ACTIVATIONS, "remat_policy": REMAT_POLICIES})
        if self.hidden_size % self.num_heads:
            raise UserError(f"AlbertConfig.hidden_size {self.hidden_size} must divide by "
                             f"num_heads {self.num_heads}")
        if self.num_hidden_groups > self.num_layers:
            raise UserError(f"AlbertConfig.num_hidden_groups {self.num_hidden_groups} exceeds num_layers "
                             f"{self.num_layers}: a group would never run")

    @property
    def kernel_init(self):
        return nn.initializers.normal(self.initializer_range)

    @property
    def layer_config(self) -> BertConfig:
        """The view `bert.BertLayer` reads: every BertConfig field, with this config's values."""
        return BertConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BertConfig)
                             if hasattr(self, f.name)})

    @property
    def group_uses(self) -> tuple[int, ...]:
        """How many consecutive layers run each group (Hugging Face's group index formula)."""
        groups = [int(i / (self.num_layers / self.num_hidden_groups)) for i in range(self.num_layers)]
        return tuple(groups.count(g) for g in range(self.num_hidden_groups))


# ------------------------------------------------------------------------------- layers


def _factorized_norm(cfg: AlbertConfig, name: str) -> LayerNorm:
    return LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.parameter_dtype, axes=(FACTORIZED_EMBED,),
                     name=name)


class AlbertLayerGroup(nn.Module):
    """`inner_group_num` BERT layers in a row (HF's AlbertLayerGroup), rematerialised by policy."""

    config: AlbertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, attention_bias: AttentionBias) -> jax.Array:
        cfg = self.config
        layer_cls = remat_layer(BertLayer, cfg.remat_policy, cfg.scan_layers)
        for j in range(cfg.inner_group_num):
            x = layer_cls(cfg.layer_config, self.deterministic, name=f"layers_{j}")(x, attention_bias)
        return x


def _group_step(group: nn.Module, x: jax.Array, attention_bias: AttentionBias):
    return group(x, attention_bias), None


def repeat_shared(module: nn.Module, times: int, scan: bool, x: jax.Array, attention_bias: AttentionBias) -> jax.Array:
    """`module` applied `times` times with one set of parameters: under nn.scan with the
    parameters broadcast (one compiled body, fresh dropout per step), or called repeatedly."""
    if not scan:
        for _ in range(times):
            x = module(x, attention_bias)
        return x
    scanned = nn.scan(_group_step, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                      in_axes=(nn.broadcast,), length=times)
    x, _ = scanned(module, x, attention_bias)
    return x


class Embeddings(nn.Module):
    """Token + absolute position + token type embeddings at width E, LayerNorm, dropout."""

    config: AlbertConfig

    def setup(self):
        cfg = self.config
        embed = functools.partial(Embed, features=cfg.embedding_size, dtype=cfg.compute_dtype,
                                  param_dtype=cfg.parameter_dtype, embedding_init=cfg.kernel_init)
        self.word = embed(cfg.vocab_size, axes=("vocab", FACTORIZED_EMBED))
        self.position = embed(cfg.max_position_embeddings, axes=("abspos_buckets", FACTORIZED_EMBED))
        self.token_type = embed(cfg.type_vocab_size, axes=("token_types", FACTORIZED_EMBED))
        self.layer_norm = _factorized_norm(cfg, "layer_norm")
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def __call__(self, tokens: jax.Array, token_types: jax.Array, positions: jax.Array,
                 deterministic: bool) -> jax.Array:
        x = self.word(tokens) + self.position(positions) + self.token_type(token_types)
        x = self.dropout(self.layer_norm(x), deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", FACTORIZED_EMBED))


class Encoder(nn.Module):
    """E -> hidden (`embedding_hidden_mapping_in`), then each group for its run of layers."""

    config: AlbertConfig

    @nn.compact
    def __call__(self, x: jax.Array, attention_bias: AttentionBias, deterministic: bool) -> jax.Array:
        cfg = self.config
        x = Dense(cfg.hidden_size, (FACTORIZED_EMBED, "embed"), cfg.compute_dtype, cfg.parameter_dtype,
                  cfg.kernel_init, use_bias=True, name="embedding_hidden_mapping_in")(x)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        for group, uses in enumerate(cfg.group_uses):
            x = repeat_shared(AlbertLayerGroup(cfg, deterministic, name=f"groups_{group}"), uses,
                              cfg.scan_layers, x, attention_bias)
        return x


class MlmHead(nn.Module):
    """Dense hidden -> E, activation, LayerNorm(E), then the tied token embedding plus a bias."""

    config: AlbertConfig
    embeddings: Embeddings

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        h = dense(cfg, cfg.embedding_size, ("embed", FACTORIZED_EMBED), "transform")(hidden)
        h = _factorized_norm(cfg, "layer_norm")(activation(cfg.hidden_act)(h))
        bias = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.parameter_dtype)
        logits = self.embeddings.word.attend(h) + jnp.asarray(bias, cfg.compute_dtype)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class Albert(Bert):
    """ALBERT: BERT's forward over ALBERT's parts. Parameters: embeddings, encoder, mlm (and
    pooler, sop with pretraining_heads)."""

    config: AlbertConfig
    SENTENCE_HEAD = "sop"

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.mlm = MlmHead(cfg, self.embeddings)
        if cfg.pretraining_heads:
            self.pooler = dense(cfg, cfg.hidden_size, ("embed", "mlp"), "pooler")
            self.sop = dense(cfg, 2, ("embed", None), "sop")


# -------------------------------------------------------------------------------- pre-training


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AlbertMLMModel(BertMLMModel):
    """ProtAlbert's pre-training as the trainer sees it: BertMLMModel's masked-language-model
    loss and metrics on the chosen positions. The sentence-order head is kept for import and
    export but not trained: one protein per instance has no sentence order to predict."""

    config: AlbertConfig = dataclasses.field(default_factory=AlbertConfig)

    family = "prot_albert"

    @property
    def module(self) -> Albert:
        return Albert(self.config)

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Model FLOPs of one training step (forward + backward) on a batch of this shape:

            rows * (6 * N * L + 12 * applied_layers * hidden * L^2)

        A shared layer costs per use: applied_layers = num_layers * inner_group_num, however
        few parameter sets there are. N: per applied layer its four attention projections and
        two FFN matrices, plus the embedding projection E -> hidden, the MLM transform
        hidden -> E and the tied output layer E -> vocab; the pooler and SOP head (one token
        per row), embedding lookups and norms are left out.
        """
        cfg = self.config
        rows, length = batch["encoder_input_tokens"].shape
        d, e, f = cfg.hidden_size, cfg.embedding_size, cfg.intermediate_size
        applied_layers = cfg.num_layers * cfg.inner_group_num
        per_token = applied_layers * (4 * d * d + 2 * d * f) + e * d + d * e + e * cfg.vocab_size
        attention = 12 * applied_layers * d * length ** 2
        return float(rows * (6 * per_token * length + attention))


# -------------------------------------------------------------------------------- embedding


@dataclasses.dataclass(frozen=True)
class AlbertEncoder(BertEncoder):
    """ProtAlbert embeddings: the last hidden state over `[CLS] residues [SEP]`; the token
    embedding table is E wide (128 for ProtAlbert), not hidden_size."""

    config: AlbertConfig

    @property
    def module(self) -> Albert:
        return Albert(self.config)


def _is_untyped_albert_config(hf_config: Mapping[str, Any]) -> bool:
    """ProtAlbert's released config.json has no model_type: ALBERT's own fields tell it."""
    return {"embedding_size", "num_hidden_groups", "inner_group_num"} <= set(hf_config)


families.register(families.Family(
    name=AlbertMLMModel.family,
    config_cls=AlbertConfig,
    hf_model_types=("albert",),
    pretrain_model=lambda config: AlbertMLMModel(config),
    encoder=AlbertEncoder,
    converter_module="prottrans_jax.convert.albert",
    default_vocabulary=prot_albert_vocabulary,
    paper_model="ProtAlbert",
    matches_untyped_hf_config=_is_untyped_albert_config,
))
