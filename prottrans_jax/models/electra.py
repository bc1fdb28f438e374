"""The ProtElectra family: ELECTRA's generator and discriminator in one Flax parameter tree.

    config = ElectraConfig(embedding_size=64, hidden_size=64, num_layers=2, num_heads=4, ...)
    variables = Electra(config).init(rng, tokens)
    logits = Electra(config).apply(variables, tokens, method=Electra.generator_logits)
    hidden = Electra(config).apply(variables, tokens, "discriminator", method=Electra.encode)

ELECTRA (Clark et al. 2020) as ProtElectra was released, numerically Hugging Face's classes:
the generator is an `ElectraForMaskedLM`, the discriminator an `ElectraForPreTraining`, and
the two **share the token, position and token-type embeddings and the embedding LayerNorm**
(the ELECTRA code's default, `untied_generator_embeddings=False`). Each tower is BERT's layer
stack (`bert.Encoder`: post-LayerNorm, GELU, biases) at its own width, behind a projection
from the shared embedding width when the widths differ (Hugging Face's `embeddings_project`).
The generator's output layer is the shared token embedding plus its own bias; its head's
activation is always exact GELU, as in Hugging Face; the discriminator's head is dense, the
configured activation, then one logit per token ("replaced").

Parameters: `embeddings` (shared), `discriminator` and `generator` (each: `projection` when
the widths differ, `encoder`, `head`).

`ElectraPretrainModel` is the trainer's `PretrainModel`: ELECTRA's replaced-token detection
(see its docstring). `ElectraEncoder` embeds `[CLS] residues [SEP]` with the discriminator
(default) or the generator, as the paper reports both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from prottrans_jax import families
from prottrans_jax.data.feature_converters import EncoderMLMFeatureConverter
from prottrans_jax.errors import UserError
from prottrans_jax.models import bert
from prottrans_jax.models.attention_bias import AttentionBias, segment_or_token_validity
from prottrans_jax.models.base import Average, ComputeDtypes, Metrics, Sum, count_sequences, token_metrics
from prottrans_jax.models.layers import ACTIVATIONS, REMAT_POLICIES, LayerNorm, activation
from prottrans_jax.vocab import ProteinVocabulary, prot_bert_vocabulary

TOWERS = ("discriminator", "generator")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ElectraConfig(ComputeDtypes):
    """Both towers of an ELECTRA model; bound from gin (`ElectraConfig.hidden_size = 1024`).

    The discriminator's fields carry Hugging Face's ElectraConfig names (num_layers:
    num_hidden_layers); the generator's the same with a `generator_` prefix. ProtElectra's
    released sizes are reconstructed from file sizes, not read (gin/models/electra/).
    """

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("hidden_dropout_prob", "attention_dropout_prob",
                                                  "dtype", "param_dtype", "remat_policy", "scan_layers",
                                                  *ComputeDtypes.ATTENTION_FIELDS)

    vocab_size: int = 30
    embedding_size: int = 1024  # the shared embedding width
    max_position_embeddings: int = 40000
    type_vocab_size: int = 2
    hidden_size: int = 1024  # discriminator
    num_layers: int = 30
    num_heads: int = 16
    intermediate_size: int = 4096
    generator_hidden_size: int = 256
    generator_num_layers: int = 30
    generator_num_heads: int = 4
    generator_intermediate_size: int = 1024
    hidden_act: str = "gelu"  # the towers' FFN and the discriminator head; ELECTRA's TF gelu is erf
    hidden_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_implementation: str = "xla"  # "xla" | "chunked" | "cudnn" | "pallas" (models/dot_product_attention.py)
    attention_block_size: int = 512  # chunked: queries / keys per tile
    pad_id: int = 0

    def __post_init__(self):
        self.check_fields(("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size",
                           "hidden_size", "num_layers", "num_heads", "intermediate_size", "generator_hidden_size",
                           "generator_num_layers", "generator_num_heads", "generator_intermediate_size"),
                          {"hidden_act": ACTIVATIONS, "remat_policy": REMAT_POLICIES})
        for prefix in ("", "generator_"):
            width, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_heads")
            if width % heads:
                raise UserError(f"ElectraConfig.{prefix}hidden_size {width} must divide by "
                                 f"{prefix}num_heads {heads}")

    def tower(self, name: str) -> bert.BertConfig:
        """One tower as a BertConfig (the layer stack is BERT's, at the tower's width)."""
        prefix = {"discriminator": "", "generator": "generator_"}[name]
        return bert.BertConfig(
            vocab_size=self.vocab_size, hidden_size=getattr(self, f"{prefix}hidden_size"),
            num_layers=getattr(self, f"{prefix}num_layers"), num_heads=getattr(self, f"{prefix}num_heads"),
            intermediate_size=getattr(self, f"{prefix}intermediate_size"), hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings, type_vocab_size=self.type_vocab_size,
            hidden_dropout_prob=self.hidden_dropout_prob, attention_dropout_prob=self.attention_dropout_prob,
            layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
            pretraining_heads=False, dtype=self.dtype, param_dtype=self.param_dtype,
            remat_policy=self.remat_policy, scan_layers=self.scan_layers,
            attention_implementation=self.attention_implementation,
            attention_block_size=self.attention_block_size, pad_id=self.pad_id)

    def embeddings(self) -> bert.BertConfig:
        """The shared embeddings as BERT's at the embedding width (heads are unused there)."""
        return dataclasses.replace(self.tower("discriminator"), hidden_size=self.embedding_size, num_heads=1)


# ------------------------------------------------------------------------------- modules


class DiscriminatorHead(nn.Module):
    """dense, activation, one logit per token: > 0 says "replaced"."""

    config: bert.BertConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        h = activation(cfg.hidden_act)(bert.dense(cfg, cfg.hidden_size, ("embed", "mlp"), "dense")(hidden))
        return bert.dense(cfg, 1, ("mlp", None), "prediction")(h)[..., 0].astype(jnp.float32)


class GeneratorHead(nn.Module):
    """dense to the embedding width, exact GELU, LayerNorm, then the shared token embedding
    as the output layer plus the generator's own bias."""

    config: bert.BertConfig
    embedding_size: int
    embeddings: bert.Embeddings

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        cfg = self.config
        h = activation("gelu")(bert.dense(cfg, self.embedding_size, ("mlp", "embed"), "dense")(hidden))
        h = LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.parameter_dtype, name="layer_norm")(h)
        bias = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.parameter_dtype)
        logits = self.embeddings.word.attend(h) + jnp.asarray(bias, cfg.compute_dtype)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class Tower(nn.Module):
    """One transformer over the shared embeddings: projection (when the widths differ), the
    layer stack, and the tower's head (`predict`)."""

    config: bert.BertConfig
    embedding_size: int
    kind: str  # "discriminator" | "generator"
    embeddings: bert.Embeddings

    def setup(self):
        cfg = self.config
        self.projection = (None if self.embedding_size == cfg.hidden_size
                           else bert.dense(cfg, cfg.hidden_size, ("embed", "mlp"), "projection"))
        self.encoder = bert.Encoder(cfg)
        self.head = (DiscriminatorHead(cfg) if self.kind == "discriminator"
                     else GeneratorHead(cfg, self.embedding_size, self.embeddings))

    def __call__(self, embedded: jax.Array, attention_bias: AttentionBias, deterministic: bool) -> jax.Array:
        x = embedded if self.projection is None else self.projection(embedded)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return self.encoder(x, attention_bias, deterministic)

    def predict(self, hidden: jax.Array) -> jax.Array:
        return self.head(hidden)


class Electra(nn.Module):
    """Generator and discriminator over shared embeddings (parameters: embeddings,
    discriminator, generator)."""

    config: ElectraConfig

    def setup(self):
        cfg = self.config
        self.embeddings = bert.Embeddings(cfg.embeddings())
        self.discriminator = Tower(cfg.tower("discriminator"), cfg.embedding_size, "discriminator",
                                   self.embeddings)
        self.generator = Tower(cfg.tower("generator"), cfg.embedding_size, "generator", self.embeddings)

    def encode(self, tokens: jax.Array, tower: str = "discriminator", token_types: jax.Array | None = None,
               segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
        """The last hidden state of `tower` (batch, length, its width): the embeddings."""
        bias, positions, token_types = bert.encoder_inputs(tokens, token_types, segment_ids, positions,
                                                           self.config.pad_id)
        x = self.embeddings(tokens, token_types, positions, deterministic)
        return {"discriminator": self.discriminator, "generator": self.generator}[tower](x, bias, deterministic)

    def generator_logits(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
                         positions: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        """(batch, length, vocab) float32: the generator's masked-language-model logits."""
        return self.generator.predict(self.encode(tokens, "generator", None, segment_ids, positions,
                                                  deterministic))

    def discriminator_logits(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
                             positions: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        """(batch, length) float32: the discriminator's "this token was replaced" logits."""
        return self.discriminator.predict(self.encode(tokens, "discriminator", None, segment_ids, positions,
                                                      deterministic))

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(generator logits, discriminator logits) of the same tokens: creates every parameter."""
        return self.generator_logits(tokens), self.discriminator_logits(tokens)


# -------------------------------------------------------------------------------- pre-training


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ElectraPretrainModel:
    """ELECTRA's pre-training as the trainer sees it (google-research/electra
    `run_pretraining.py`, `pretrain_helpers.py`):

    1. the generator predicts the residues at the chosen positions (`electra_mlm`: 15% of the
       residues, 85% shown as [MASK], 15% unchanged, none random);
    2. a token is sampled at each chosen position from the generator's softmax (Gumbel-max,
       `temperature`), under `stop_gradient`, with the step's rng;
    3. the discriminator reads the input with those samples in place and predicts, for every
       token (specials included, padding excluded), whether it differs from the original;
       a sample that equals the original counts as original.

    loss = generator_weight * MLM + discriminator_weight * replaced-token BCE (1 and 50).

    The trainer divides the loss sum by the chosen-token count; the discriminator's mean is
    over all tokens, so its sum is rescaled by chosen/tokens of the same batch, which is exact
    for one microbatch and, with several, up to the variation of that ratio between them.
    """

    config: ElectraConfig = dataclasses.field(default_factory=ElectraConfig)
    generator_weight: float = 1.0
    discriminator_weight: float = 50.0
    temperature: float = 1.0
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    family = "prot_electra"
    feature_converter_cls = EncoderMLMFeatureConverter
    headline_metrics = ("loss", "masked_accuracy", "discriminator_accuracy", "replaced_precision",
                        "replaced_recall")

    def __post_init__(self):
        if self.temperature <= 0:
            raise UserError(f"ElectraPretrainModel.temperature must be positive, got {self.temperature}")

    @property
    def module(self) -> Electra:
        return Electra(self.config)

    def init_params(self, rng: jax.Array) -> Any:
        return self.module.init({"params": rng}, bert.dummy_tokens())["params"]

    def abstract_params(self) -> Any:
        return jax.eval_shape(self.init_params, jax.random.key(0))

    def _apply(self, method, params, tokens, segment_ids, positions, rng, train):
        return self.module.apply({"params": params}, tokens, segment_ids, positions, not train, method=method,
                                 rngs={"dropout": rng} if train else None)

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                         train: bool) -> tuple[jax.Array, Metrics]:
        inputs, targets = batch["encoder_input_tokens"], batch["encoder_target_tokens"]
        chosen = batch["encoder_loss_weights"] > 0
        positions = batch.get("encoder_positions")
        valid = segment_or_token_validity(targets, batch.get("encoder_segment_ids"), self.config.pad_id)
        # Validity goes in as segment ids: a sampled [PAD] must not turn into padding.
        segment_ids = batch.get("encoder_segment_ids", valid.astype(jnp.int32))
        generator_rng, sample_rng, discriminator_rng = jax.random.split(rng, 3)

        logits = self._apply(Electra.generator_logits, params, inputs, segment_ids, positions, generator_rng,
                             train)
        mlm_sum, metrics = token_metrics(logits, targets, batch["encoder_loss_weights"],
                                         batch["encoder_masked_weights"], self.label_smoothing, self.z_loss)
        sampled = jax.random.categorical(sample_rng, jax.lax.stop_gradient(logits) / self.temperature)
        corrupted = jnp.where(chosen, sampled, targets)
        replaced = (corrupted != targets) & valid
        replaced_logits = self._apply(Electra.discriminator_logits, params, corrupted, segment_ids, positions,
                                      discriminator_rng, train)
        weights = valid.astype(jnp.float32)
        bce_sum = jnp.sum(optax.sigmoid_binary_cross_entropy(replaced_logits, replaced.astype(jnp.float32))
                          * weights)
        tokens, chosen_count = jnp.sum(weights), metrics["loss"].count
        loss_sum = (self.generator_weight * mlm_sum
                    + self.discriminator_weight * bce_sum * chosen_count / jnp.maximum(tokens, 1.0))
        flagged = (replaced_logits > 0) & valid
        hits = jnp.sum(flagged & replaced).astype(jnp.float32)
        metrics = {
            "loss": Average(loss_sum, chosen_count),
            "generator_loss": metrics.pop("loss"),
            **metrics,  # the generator's accuracy, masked_accuracy, masked_loss; target_tokens
            "discriminator_loss": Average(bce_sum, tokens),
            "discriminator_accuracy": Average(jnp.sum((flagged == replaced) & valid).astype(jnp.float32), tokens),
            "replaced_precision": Average(hits, jnp.sum(flagged).astype(jnp.float32)),
            "replaced_recall": Average(hits, jnp.sum(replaced).astype(jnp.float32)),
            "replaced_fraction": Average(jnp.sum(replaced).astype(jnp.float32), tokens),
            "sequences": Sum(count_sequences(weights, batch.get("encoder_segment_ids"))),
        }
        return loss_sum, metrics

    def masked_targets(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch["encoder_target_tokens"], batch["encoder_masked_weights"]

    def metric_baselines(self, metrics: Mapping[str, float]) -> list[tuple[str, str, float]]:
        """(metric, baseline, its value): the discriminator against always saying "original"."""
        return [("discriminator_accuracy", "always 'original'", 1.0 - metrics["replaced_fraction"])]

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float:
        """Model FLOPs of one training step: both towers forward and backward,

            rows * sum over towers (6 * N * L + 12 * layers * width * L^2)

        N: the weight-matrix parameters each token goes through: the tower's layers (four
        attention projections, two FFN matrices), its projection from the embedding width when
        there is one, and its head (the generator's: dense, then the tied output layer). The
        sampling and embedding lookups are left out; the generator's backward is counted
        although the discriminator's loss does not reach it (its own MLM loss does).
        """
        cfg = self.config
        rows, length = batch["encoder_input_tokens"].shape
        total = 0.0
        for name in TOWERS:
            tower = cfg.tower(name)
            d, f, e = tower.hidden_size, tower.intermediate_size, cfg.embedding_size
            per_token = tower.num_layers * (4 * d * d + 2 * d * f) + (e * d if e != d else 0)
            per_token += d * e + e * cfg.vocab_size if name == "generator" else d * d + d
            total += 6 * per_token * length + 12 * tower.num_layers * d * length ** 2
        return float(rows * total)


# -------------------------------------------------------------------------------- embedding


@dataclasses.dataclass(frozen=True)
class ElectraEncoder:
    """ProtElectra embeddings: the last hidden state of the discriminator (default) or the
    generator over `[CLS] residues [SEP]`."""

    config: ElectraConfig
    part: str = "discriminator"

    PARTS: ClassVar[tuple[str, ...]] = TOWERS

    @property
    def param_keys(self) -> tuple[str, ...]:
        return ("embeddings", self.part)

    @property
    def width(self) -> int:
        return self.config.tower(self.part).hidden_size

    def framing(self, vocabulary: ProteinVocabulary) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (vocabulary.bos_id,), (vocabulary.eos_id,)

    def hidden_states(self, params: Any, tokens: jax.Array, valid: jax.Array) -> jax.Array:
        return Electra(self.config).apply({"params": params}, tokens, self.part, None, valid.astype(jnp.int32),
                                          method=Electra.encode)

    def token_embedding(self, params: Any) -> np.ndarray:
        return np.asarray(params["embeddings"]["word"]["embedding"], np.float32)


families.register(families.Family(
    name=ElectraPretrainModel.family,
    config_cls=ElectraConfig,
    hf_model_types=("electra",),
    pretrain_model=lambda config: ElectraPretrainModel(config),
    encoder=ElectraEncoder,
    converter_module="prottrans_jax.convert.electra",
    default_vocabulary=prot_bert_vocabulary,
    paper_model={"discriminator": "ProtElectra-Discriminator", "generator": "ProtElectra-Generator"},
))
