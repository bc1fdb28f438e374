"""Jitted train and eval steps with on-device metrics and a NaN/Inf guard.

The state is the checkpointed dict {"step", "params", "opt_state"} plus "halted", a sticky
boolean: a step whose loss or gradient norm is not finite leaves step, params and optimizer
state untouched and sets "halted". The host reads the flag together with the metrics every
`log_every` steps, so guarding costs no per-step device-to-host round trip; once halted,
every later step is a no-op, so the state the host finds is the last good one.

A model that declares a carry (models/base.py: `init_carry`, ProtTXL's memory) has it in
the state as "carry", sharded along "batch": each step reads its rows' carry and leaves the
next (a skipped step keeps the old one), microbatches get their own rows' carry. It is not
part of `checkpointed` (the state item) but saved beside it (checkpoints.py, item "carry"):
resuming within a phase restores it, so the run continues bit for bit; a new phase (another
batch size) and every evaluation start from `init_carry`, the empty memory.

Metrics are whatever the model's `loss_and_metrics` returns (models/base.py: `Average` and
`Sum` pairs), accumulated on device by the steps themselves, plus the trainer's own
`grad_norm` and `steps`; `summarize` divides them on the host when they are fetched. The
trainer knows no metric by name except "loss", whose count is the loss denominator.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prottrans_jax import optimizers
from prottrans_jax.models.base import (Average, Sum, add_metrics, init_carry_fn, summarize,
                                       zeros_like_metrics)
from prottrans_jax.partitioning import Partitioner, unbox_shapes

CHECKPOINTED_KEYS = ("step", "params", "opt_state")

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


class Trainer:
    """Builds, shards and runs the train and eval steps of one model on one mesh.

    `model` is a `models.base.PretrainModel` (init_params, loss_and_metrics are all the
    steps use). Call the steps inside `partitioner.context()`.

    At most `max_steps_in_flight` dispatched steps wait on the devices: without a bound,
    asynchronous dispatch lets the Python loop run tens of steps ahead (about 35 on a CPU),
    so a SIGTERM seen at a step boundary would wait for all of them before its checkpoint
    is written; a spot preemption gives 30 s. Two keep the devices fed while the host
    prepares the next batch.
    """

    def __init__(self, model: Any, optimizer: optax.GradientTransformation,
                 partitioner: Partitioner, num_microbatches: int = 1, seed: int = 0,
                 max_steps_in_flight: int = 2, batch_size: int | None = None):
        """`batch_size` (global rows) sizes the carry of a model that has one."""
        if max_steps_in_flight < 1:
            raise ValueError(f"max_steps_in_flight must be >= 1, got {max_steps_in_flight}")
        self.model = model
        self.init_carry = init_carry_fn(model)
        if self.init_carry is not None and batch_size is None:
            raise ValueError(f"{type(model).__name__} carries state across steps: give the Trainer its batch_size")
        self.batch_size = batch_size
        self.max_steps_in_flight = max_steps_in_flight
        # One small, undonated output per dispatched step (its step counter), to wait on.
        self._in_flight: collections.deque = collections.deque()
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.num_microbatches = num_microbatches
        self.seed = seed
        self.abstract, self.checkpoint_shardings = partitioner.abstract_train_state(
            model.init_params, optimizer, jax.random.key(seed))
        replicated = partitioner.replicated
        self.state_shardings = {**self.checkpoint_shardings, "halted": replicated}
        self.carry_shardings = self.abstract_carry = None
        if self.init_carry is not None:
            self.abstract_carry, self.carry_shardings = self._carry_layout(batch_size)
            self.state_shardings["carry"] = self.carry_shardings
        data = partitioner.data_sharding
        # One sharding for a whole tree applies to every leaf: metrics are replicated scalars.
        self._train_step = jax.jit(
            self._train_step_fn,
            in_shardings=(self.state_shardings, data, replicated),
            out_shardings=(self.state_shardings, replicated, replicated),
            donate_argnums=(0, 2))
        params_sharding = self.checkpoint_shardings["params"]
        if self.init_carry is None:
            self._eval_step = jax.jit(
                lambda params, batch, metrics: self._eval_step_fn(params, batch, metrics, None)[0],
                in_shardings=(params_sharding, data, replicated),
                out_shardings=replicated,
                donate_argnums=(2,))
        else:  # the carry's sharding follows its rows (an eval batch may have other rows)
            self._eval_step = jax.jit(
                self._eval_step_fn,
                in_shardings=(params_sharding, data, replicated, None),
                out_shardings=(replicated, None),
                donate_argnums=(2, 3))
        self.compile_seconds: float | None = None
        self._metric_shapes: dict[bool, Any] = {}
        self.metric_kinds: dict[str, type] = {}  # metric name -> Average | Sum, once traced

    # ------------------------------------------------------------------ state

    def _carry_layout(self, batch_size: int) -> tuple[Any, Any]:
        """(abstract carry with shardings, shardings) for `batch_size` rows."""
        with self.partitioner.context():
            boxed = jax.eval_shape(lambda: self.init_carry(batch_size))
        shardings = self.partitioner.param_shardings(boxed)
        abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                                unbox_shapes(boxed), shardings)
        return abstract, shardings

    def fresh_carry(self, batch_size: int | None = None) -> Any:
        """The model's initial carry for `batch_size` rows (default: the training batch),
        sharded along the batch; None for a model without a carry."""
        if self.init_carry is None:
            return None
        batch_size = self.batch_size if batch_size is None else batch_size
        shardings = self.carry_shardings if batch_size == self.batch_size else self._carry_layout(batch_size)[1]
        with self.partitioner.context():
            return jax.jit(lambda: unbox_shapes(self.init_carry(batch_size)), out_shardings=shardings)()

    @staticmethod
    def carry_of(state: Mapping[str, Any]) -> Any:
        """The carry of a state (None for a model without one): saved beside the state."""
        return state.get("carry")

    def init_state(self) -> dict:
        """A fresh sharded state from `seed` (never materialised on one device)."""
        state, _ = self.partitioner.init_train_state(
            self.model.init_params, self.optimizer, jax.random.key(self.seed))
        return self.with_halted(state)

    def init_state_from_params(self, params: Any) -> dict:
        """A fresh state (step 0, a new optimizer state) around given host parameters, e.g.
        released weights: each device receives only its own shards of every array."""
        shardings = self.checkpoint_shardings
        abstract = self.abstract["params"]
        placed = jax.tree.map(
            lambda x, a, s: jax.make_array_from_callback(
                a.shape, s, lambda index, x=x: np.asarray(x[index], a.dtype)),
            params, abstract, shardings["params"])
        with self.partitioner.context():
            opt_state = jax.jit(self.optimizer.init, out_shardings=shardings["opt_state"])(placed)
        step = jax.device_put(jnp.zeros((), jnp.int32), self.partitioner.replicated)
        return self.with_halted({"step": step, "params": placed, "opt_state": opt_state})

    def with_halted(self, checkpointed_state: Mapping[str, Any], carry: Any = None) -> dict:
        """The train state around a checkpointed one: not halted, with `carry` (a restored
        one) or, for a model with a carry, a fresh one."""
        halted = jax.device_put(jnp.zeros((), bool), self.partitioner.replicated)
        state = {**checkpointed_state, "halted": halted}
        if self.init_carry is not None:
            state["carry"] = self.fresh_carry() if carry is None else carry
        return state

    @staticmethod
    def checkpointed(state: Mapping[str, Any]) -> dict:
        """The part of the state that is saved (the halted flag is not)."""
        return {key: state[key] for key in CHECKPOINTED_KEYS}

    def new_metrics(self, batch: Any, train: bool = True) -> dict:
        """Zeroed metric sums for batches shaped like `batch` (the model decides the names;
        train steps add `grad_norm` and `steps`). The structure is traced once per kind."""
        if train not in self._metric_shapes:
            _, shapes = jax.eval_shape(
                lambda p, b: self._model_loss(p, b, jax.random.key(0), train, self._carry_for(b))[:2],
                self.abstract["params"], batch)
            if train:
                shapes = {**shapes, "grad_norm": Average(0.0, 0.0), "steps": Sum(0.0)}
            self._metric_shapes[train] = shapes
            self.metric_kinds.update({name: type(m) for name, m in shapes.items()})
        return jax.device_put(zeros_like_metrics(self._metric_shapes[train]),
                              self.partitioner.replicated)

    # ------------------------------------------------------------------ steps

    def _model_loss(self, params, batch, rng, train, carry):
        """(loss_sum, metrics, new carry or None), for models with and without a carry."""
        if self.init_carry is None:  # [:2]: a model that can carry (ProtTXL) returns its None carry
            return (*self.model.loss_and_metrics(params, batch, rng, train)[:2], None)
        return self.model.loss_and_metrics(params, batch, rng, train, carry=carry)

    def _carry_for(self, batch):
        """An empty carry for the rows of `batch` (inside traced code)."""
        if self.init_carry is None:
            return None
        return unbox_shapes(self.init_carry(jax.tree.leaves(batch)[0].shape[0]))

    def _loss_and_grads(self, params, batch, rng, carry):
        if self.init_carry is None:
            def loss_fn(p, microbatch, microbatch_rng):
                return self.model.loss_and_metrics(p, microbatch, microbatch_rng, train=True)[:2]
        else:
            def loss_fn(p, microbatch, microbatch_rng, micro_carry):
                loss_sum, metrics, new_carry = self._model_loss(p, microbatch, microbatch_rng, True, micro_carry)
                return loss_sum, (metrics, new_carry)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        result = optimizers.accumulate_gradients(grad_fn, params, batch, self.num_microbatches, rng,
                                                 denominator=lambda m: m["loss"].count, carry=carry)
        return result if carry is not None else (*result, None)

    def _train_step_fn(self, state, batch, metrics):
        # Dropout depends on (seed, step) only: a resumed run draws the same masks.
        rng = jax.random.fold_in(jax.random.key(self.seed), state["step"])
        loss, aux, grads, new_carry = self._loss_and_grads(state["params"], batch, rng, state.get("carry"))
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
        if new_carry is not None:
            new_state["carry"] = keep(new_carry, state["carry"])
        increments = {**aux, "grad_norm": Average(grad_norm, 1.0), "steps": Sum(1.0)}
        # A copy of the counter, not the state's own buffer (donated to the next step).
        done = new_state["step"] + 0
        return new_state, add_metrics(metrics, increments, keep=ok), done

    def _eval_step_fn(self, params, batch, metrics, carry):
        _, model_metrics, new_carry = self._model_loss(params, batch, jax.random.key(0), False, carry)
        return add_metrics(metrics, model_metrics), new_carry

    def train_step(self, state: dict, batch: Any, metrics: dict) -> tuple[dict, dict]:
        """One optimizer step, dispatched asynchronously: no device-to-host transfer; it waits
        only for the step `max_steps_in_flight` back to finish (and, on the first call, for
        the compilation, which it times)."""
        if self.compile_seconds is None:
            start = time.perf_counter()
            state, metrics, done = self._train_step(state, batch, metrics)
            jax.block_until_ready(metrics)
            self.compile_seconds = time.perf_counter() - start
            return state, metrics
        state, metrics, done = self._train_step(state, batch, metrics)
        self._in_flight.append(done)
        while len(self._in_flight) > self.max_steps_in_flight:
            self._in_flight.popleft().block_until_ready()
        return state, metrics

    def steps_in_flight(self) -> int:
        """How many dispatched steps the devices have not finished yet."""
        return sum(not done.is_ready() for done in self._in_flight)

    def eval_step(self, params: Any, batch: Any, metrics: dict, carry: Any = None):
        """Metrics plus this batch's; with a carry model, (metrics, the next carry)."""
        if self.init_carry is None:
            return self._eval_step(params, batch, metrics)
        return self._eval_step(params, batch, metrics, carry)

    def evaluate(self, params: Any, batches: Callable[[], Any]) -> dict[str, float] | None:
        """Summarised metrics over an iterable of global batches (one fetch at the end);
        None when there was no batch at all. A carry starts empty for every evaluation
        (`fresh_carry`) and goes through the batches in order: an evaluation's result does
        not depend on where training stood, and two evaluations of the same parameters agree."""
        metrics = carry = None
        for batch in batches():
            if metrics is None:
                metrics = self.new_metrics(batch, train=False)
                carry = self.fresh_carry(jax.tree.leaves(batch)[0].shape[0])
            if self.init_carry is None:
                metrics = self.eval_step(params, batch, metrics)
            else:
                metrics, carry = self.eval_step(params, batch, metrics, carry)
        return None if metrics is None else summarize(metrics)

    @staticmethod
    def halted(state: Mapping[str, Any]) -> bool:
        return bool(np.asarray(jax.device_get(state["halted"])))
