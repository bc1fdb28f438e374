"""Jitted train and eval steps with on-device metrics and a NaN/Inf guard.

The state is the checkpointed dict {"step", "params", "opt_state"} plus "halted", a sticky
boolean: a step whose loss or gradient norm is not finite leaves step, params and optimizer
state untouched and sets "halted". The host reads the flag together with the metrics every
`log_every` steps, so guarding costs no per-step device-to-host round trip; once halted,
every later step is a no-op, so the state the host finds is the last good one.

Metrics are sums accumulated on device by the steps themselves (loss, weights, correct
tokens, ...): `summarize` divides them on the host when they are fetched.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prottrans_jax import optimizers
from prottrans_jax.partitioning import Partitioner

CHECKPOINTED_KEYS = ("step", "params", "opt_state")
AUX_KEYS = ("weight_sum", "correct", "masked_correct", "masked_count", "masked_loss", "z_loss",
            "num_sequences")
METRIC_KEYS = ("loss_sum", *AUX_KEYS, "grad_norm_sum", "steps")

# Dense bf16 peak FLOP/s per chip (vendor datasheets). Matched against
# jax.Device.device_kind, lower-cased, first match wins (order matters: "v5p" before "v5").
PEAK_FLOPS = (
    ("tpu v6", 918e12),       # v6e (Trillium); device_kind "TPU v6 lite"
    ("tpu v5p", 459e12),
    ("tpu v5", 197e12),       # v5e; device_kind "TPU v5 lite"
    ("tpu v4", 275e12),
    ("h200", 989e12),         # SXM, dense (the sparse figure is 2x)
    ("h100", 989e12),         # SXM; PCIe parts are slower (756e12)
    ("a100", 312e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None when unknown (CPU, other chips)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for name, flops in PEAK_FLOPS:
        if name in kind:
            if name == "h100" and "pcie" in kind:
                return 756e12
            return flops
    return None


def zeros_metrics() -> dict[str, jax.Array]:
    return {key: jnp.zeros((), jnp.float32) for key in METRIC_KEYS}


def summarize(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host-side means from fetched sums: loss per target token, accuracies, grad norm."""
    m = {key: float(value) for key, value in jax.device_get(dict(metrics)).items()}
    weights = max(m["weight_sum"], 1e-9)
    out = {
        "loss": m["loss_sum"] / weights,
        "z_loss": m["z_loss"] / weights,
        "accuracy": m["correct"] / weights,
        "masked_accuracy": m["masked_correct"] / max(m["masked_count"], 1e-9),
        "masked_loss": m["masked_loss"] / max(m["masked_count"], 1e-9),
        "target_tokens": m["weight_sum"],
        "masked_tokens": m["masked_count"],
        "sequences": m["num_sequences"],
        "steps": m["steps"],
    }
    if m["steps"] > 0:
        out["grad_norm"] = m["grad_norm_sum"] / m["steps"]
    return out


class Trainer:
    """Builds, shards and runs the train and eval steps of one model on one mesh.

    `model` has the EncoderDecoderModel interface (init_params, loss_and_metrics).
    Call the steps inside `partitioner.context()`.
    """

    def __init__(self, model: Any, optimizer: optax.GradientTransformation,
                 partitioner: Partitioner, num_microbatches: int = 1, seed: int = 0):
        self.model = model
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.num_microbatches = num_microbatches
        self.seed = seed
        self.abstract, self.checkpoint_shardings = partitioner.abstract_train_state(
            model.init_params, optimizer, jax.random.key(seed))
        replicated = partitioner.replicated
        self.state_shardings = {**self.checkpoint_shardings, "halted": replicated}
        metric_shardings = {key: replicated for key in METRIC_KEYS}
        data = partitioner.data_sharding
        self._train_step = jax.jit(
            self._train_step_fn,
            in_shardings=(self.state_shardings, data, metric_shardings),
            out_shardings=(self.state_shardings, metric_shardings),
            donate_argnums=(0, 2))
        self._eval_step = jax.jit(
            self._eval_step_fn,
            in_shardings=(self.checkpoint_shardings["params"], data, metric_shardings),
            out_shardings=metric_shardings,
            donate_argnums=(2,))
        self.compile_seconds: float | None = None

    # ------------------------------------------------------------------ state

    def init_state(self) -> dict:
        """A fresh sharded state from `seed` (never materialised on one device)."""
        state, _ = self.partitioner.init_train_state(
            self.model.init_params, self.optimizer, jax.random.key(self.seed))
        return self.with_halted(state)

    def with_halted(self, checkpointed_state: Mapping[str, Any]) -> dict:
        halted = jax.device_put(jnp.zeros((), bool), self.partitioner.replicated)
        return {**checkpointed_state, "halted": halted}

    @staticmethod
    def checkpointed(state: Mapping[str, Any]) -> dict:
        """The part of the state that is saved (the halted flag is not)."""
        return {key: state[key] for key in CHECKPOINTED_KEYS}

    def new_metrics(self) -> dict[str, jax.Array]:
        return jax.device_put(zeros_metrics(), self.partitioner.replicated)

    # ------------------------------------------------------------------ steps

    def _loss_and_grads(self, params, batch, rng):
        def loss_fn(p, microbatch, microbatch_rng):
            return self.model.loss_and_metrics(p, microbatch, microbatch_rng, train=True)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        return optimizers.accumulate_gradients(grad_fn, params, batch,
                                               self.num_microbatches, rng)

    def _train_step_fn(self, state, batch, metrics):
        # Dropout depends on (seed, step) only: a resumed run draws the same masks.
        rng = jax.random.fold_in(jax.random.key(self.seed), state["step"])
        loss, aux, grads = self._loss_and_grads(state["params"], batch, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & ~state["halted"]
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        new_state = {
            "step": jnp.where(ok, state["step"] + 1, state["step"]),
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "halted": ~ok,
        }
        increments = {"loss_sum": loss * aux["weight_sum"], **{k: aux[k] for k in AUX_KEYS},
                      "grad_norm_sum": grad_norm, "steps": jnp.ones((), jnp.float32)}
        new_metrics = {key: metrics[key] + jnp.where(ok, increments[key].astype(jnp.float32), 0.0)
                       for key in METRIC_KEYS}
        return new_state, new_metrics

    def _eval_step_fn(self, params, batch, metrics):
        loss_sum, aux = self.model.loss_and_metrics(params, batch, jax.random.key(0), train=False)
        increments = {"loss_sum": loss_sum, **{k: aux[k] for k in AUX_KEYS}}
        return {key: metrics[key] + jnp.asarray(increments.get(key, 0.0), jnp.float32)
                for key in METRIC_KEYS}

    def train_step(self, state: dict, batch: Any, metrics: dict) -> tuple[dict, dict]:
        """One optimizer step; no host sync except on the first call (compile timing)."""
        if self.compile_seconds is None:
            start = time.perf_counter()
            state, metrics = self._train_step(state, batch, metrics)
            jax.block_until_ready(metrics)
            self.compile_seconds = time.perf_counter() - start
            return state, metrics
        return self._train_step(state, batch, metrics)

    def eval_step(self, params: Any, batch: Any, metrics: dict) -> dict:
        return self._eval_step(params, batch, metrics)

    def evaluate(self, params: Any, batches: Callable[[], Any]) -> dict[str, float]:
        """Summarised metrics over an iterable of global batches (one fetch at the end)."""
        metrics = self.new_metrics()
        for batch in batches():
            metrics = self.eval_step(params, batch, metrics)
        return summarize(metrics)

    @staticmethod
    def halted(state: Mapping[str, Any]) -> bool:
        return bool(np.asarray(jax.device_get(state["halted"])))
