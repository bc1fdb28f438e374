"""What the trainer, `embed` and `export_hf` know of a model family: the seam.

T5X's `BaseModel` idea, kept to what the families here need. A pre-training model is any
object with these members (hashable, so jitted steps may close over it):

    family                          the registered family name ("prot_t5", "prot_bert", ...)
    config                          its config dataclass (written to MODEL_DIR/model.json)
    feature_converter_cls           the seqio converter its batches come from (T5X's
                                    FEATURE_CONVERTER_CLS); a task whose features do not fit
                                    it is refused before anything is written
    headline_metrics                the metric names the console line shows
    init_params(rng)                boxed parameters (logical axis names attached)
    loss_and_metrics(params, batch, rng, train) -> (loss_sum, {name: Average | Sum})
    flops_per_batch(batch)          model FLOPs of one training step on a batch of this shape
                                    (the family's own formula: shared layers count per use)
    masked_targets(batch)           (targets, weights) of the positions the objective hid,
                                    for baselines computed on the host

and optionally

    metric_baselines(metrics) -> [(metric, label, value)]
                                    a baseline for one of its accuracies, from the summarised
                                    evaluation metrics (ELECTRA: always "original"); the demo
                                    prints each beside the metric's interval

A model that carries state from one training step to the next (ProtTXL's memory: the hidden
states of its rows' previous segments) declares it with

    init_carry(batch_size)          the carry of a fresh run: a tree of arrays, every one with
                                    the batch (rows) first, boxed with logical axes ("batch",
                                    ...), or None for no carry
    loss_and_metrics(params, batch, rng, train, carry) -> (loss_sum, metrics, new_carry)

and the trainer (trainer.py) keeps it in the train state, sharded along "batch", splits it
with the rows of each microbatch, skips it on a skipped step, saves it beside the state in
every checkpoint and restores it on resume (a resumed run continues bit for bit); a new phase
(another batch size) starts it afresh, and so does every evaluation (`init_carry` again, then
carried over the evaluation's batches in order). The new carry must hold no gradient
(`stop_gradient`). A model without `init_carry` keeps the 2-tuple and sees no change.

Metrics are pairs of sums, so microbatches, devices and evaluation batches add up exactly
and the division happens once, on the host (`summarize`). "loss" is required: its `count`
is the number of target tokens, the denominator of the loss and of the gradients.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax import losses
from prottrans_jax.errors import UserError
from prottrans_jax.models.dot_product_attention import IMPLEMENTATIONS


class Average(NamedTuple):
    """A metric reported as total / count (a loss per token, an accuracy)."""

    total: jax.Array
    count: jax.Array


class Sum(NamedTuple):
    """A metric reported as its total (tokens, sequences); the trainer also logs it per second."""

    total: jax.Array


Metric = Average | Sum
Metrics = Mapping[str, Metric]


class PretrainModel(Protocol):
    family: str
    config: Any
    feature_converter_cls: type
    headline_metrics: tuple[str, ...]

    def init_params(self, rng: jax.Array) -> Any: ...

    def loss_and_metrics(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array,
                         train: bool) -> tuple[jax.Array, Metrics]: ...

    def flops_per_batch(self, batch: Mapping[str, Any]) -> float: ...

    def masked_targets(self, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...


def init_carry_fn(model: Any):
    """`model.init_carry` if the model carries state across steps (with mem_len 0, ProtTXL
    declares none), else None."""
    init_carry = getattr(model, "init_carry", None)
    if init_carry is None or jax.eval_shape(lambda: init_carry(1)) is None:
        return None
    return init_carry


class ComputeDtypes:
    """`compute_dtype` / `parameter_dtype` of a model config with `dtype` and `param_dtype`
    fields (every family's: parameters in float32, compute in bfloat16 by default), and the
    attention fields every family's config carries:

        attention_implementation: str = "xla"   # "xla" | "chunked" | "cudnn" | "pallas"
        attention_block_size: int = 512         # chunked (and pallas' backward): queries / keys per tile

    They change how attention runs, not what the weights compute: a family lists
    ATTENTION_FIELDS in its RUNTIME_FIELDS, so training and embedding may differ there.
    """

    ATTENTION_FIELDS: ClassVar[tuple[str, ...]] = ("attention_implementation", "attention_block_size")
    ATTENTION_IMPLEMENTATIONS: ClassVar[tuple[str, ...]] = IMPLEMENTATIONS  # what the family's attention takes

    def check_dtypes(self) -> None:
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # raises TypeError naming the bad dtype

    def check_fields(self, positive: tuple[str, ...], choices: Mapping[str, tuple[str, ...]]) -> None:
        """UserError naming the first field that is not positive or not one of its choices
        (the attention fields included), then the dtypes: the checks every family's config
        runs in `__post_init__`."""
        where = type(self).__name__
        choices = {**choices, "attention_implementation": self.ATTENTION_IMPLEMENTATIONS}
        positive = (*positive, "attention_block_size")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{where}.{name}={getattr(self, name)!r}; expected one of {allowed}")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        self.check_dtypes()

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)


def zeros_like_metrics(metrics: Metrics) -> dict[str, Metric]:
    """float32 zeros with the structure of `metrics` (concrete or from jax.eval_shape)."""
    return jax.tree.map(lambda _: jnp.zeros((), jnp.float32), dict(metrics))


def add_metrics(sums: Metrics, new: Metrics, keep: jax.Array | bool = True) -> dict[str, Metric]:
    """sums + new, leaf by leaf in float32; `keep=False` adds nothing (a skipped step)."""
    return jax.tree.map(lambda s, n: s + jnp.where(keep, jnp.asarray(n, jnp.float32), 0.0),
                        dict(sums), dict(new))


def summarize(metrics: Metrics) -> dict[str, float]:
    """Host-side values from fetched sums: Average -> total / count (NaN when nothing was
    counted), Sum -> total. An Average also reports its count as `<name>_count`."""
    fetched = jax.device_get(dict(metrics))
    out: dict[str, float] = {}
    for name, metric in fetched.items():
        if isinstance(metric, Average):
            count = float(metric.count)
            out[name] = float(metric.total) / count if count > 0 else float("nan")
            out[f"{name}_count"] = count
        else:
            out[name] = float(metric.total)
    return out


def token_metrics(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  masked: jax.Array, label_smoothing: float = 0.0, z_loss: float = 0.0
                  ) -> tuple[jax.Array, dict[str, Metric]]:
    """(loss_sum, metrics) of a token-level cross-entropy objective (every family's LM loss).

    `weights` mark the targets the loss covers; `masked` the positions the objective hid from
    the model (ProtT5's sentinels, BERT's chosen positions): the accuracy that measures what
    the model learnt. "masked_loss" is their cross-entropy alone, without smoothing or z-loss,
    the number to compare with the residue distribution's entropy (~2.9 nats on UniProtKB).
    """
    loss_sum, z_loss_sum, weight_sum = losses.weighted_cross_entropy(
        logits, targets, weights, label_smoothing, z_loss)
    masked = masked.astype(jnp.float32)
    masked_count = jnp.sum(masked)
    metrics = {
        "loss": Average(loss_sum, weight_sum),
        "accuracy": Average(losses.weighted_correct(logits, targets, weights), weight_sum),
        "masked_accuracy": Average(losses.weighted_correct(logits, targets, masked), masked_count),
        "masked_loss": Average(losses.weighted_cross_entropy(logits, targets, masked)[0],
                               masked_count),
        "target_tokens": Sum(weight_sum),
    }
    if z_loss:
        metrics["z_loss"] = Average(z_loss_sum, weight_sum)
    return loss_sum, metrics


def count_sequences(weights: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """Sequences in a batch: rows with any target when unpacked, segments when packed."""
    if segment_ids is None:
        return jnp.sum(jnp.any(weights > 0, axis=-1)).astype(jnp.float32)
    return jnp.sum(jnp.max(segment_ids, axis=-1)).astype(jnp.float32)
