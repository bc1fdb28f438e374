"""Optimizers and learning-rate schedules: thin, gin-configurable wrappers over optax.

ProtT5 (Elnaggar et al. 2021) trained with T5's recipe: Adafactor, factored second moments,
no momentum, an inverse-square-root learning rate held constant during warm-up. ProtBert
used LAMB with linear warm-up and linear decay; AdamW is here for the other families.

`make_optimizer` returns `Optimizer(transform, schedule)` (a named pair) so the trainer can
log the learning rate of any step as `schedule(step)`; gin injects it into `train` as
`train.optimizer = @optimizers.make_optimizer()`.

gin example (T5X's defaults, which are also the functions' defaults):

    optimizers.make_optimizer.name = "adafactor"
    optimizers.make_optimizer.learning_rate = @optimizers.rsqrt_schedule()
    optimizers.rsqrt_schedule.base_learning_rate = 1.0
    optimizers.rsqrt_schedule.warmup_steps = 10000
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax

from prottrans_jax.errors import UserError

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


class Optimizer(NamedTuple):
    transform: optax.GradientTransformation
    schedule: Schedule


@gin.configurable
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000,
                   linear_warmup: bool = False) -> Schedule:
    """T5's inverse-square-root schedule: lr = base / sqrt(max(step, warmup_steps)).

    T5X's `create_learning_rate_scheduler(factors="constant * rsqrt_decay")`, whose defaults
    (base 1.0, 10k warm-up steps) give lr 0.01 for the first 10k steps, then 1/sqrt(step).
    `linear_warmup=True` multiplies by min(1, step / warmup_steps) (T5X's `linear_warmup`
    factor), ramping from 0 instead of starting at the plateau.
    """
    if warmup_steps < 1:
        raise UserError(f"warmup_steps must be >= 1, got {warmup_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        learning_rate = base_learning_rate / jnp.sqrt(jnp.maximum(step, warmup_steps))
        if linear_warmup:
            learning_rate *= jnp.minimum(1.0, step / warmup_steps)
        return learning_rate

    return schedule


@gin.configurable
def warmup_decay_schedule(peak_learning_rate: float, warmup_steps: int, total_steps: int,
                          decay: str = "linear", end_learning_rate: float = 0.0) -> Schedule:
    """Linear warm-up from 0 to the peak over `warmup_steps`, then linear or cosine decay to
    `end_learning_rate` at `total_steps` (BERT / ProtBert style)."""
    if not 0 <= warmup_steps < total_steps:
        raise UserError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
    if decay == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak_learning_rate, warmup_steps, total_steps, end_learning_rate)
    if decay == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak_learning_rate, warmup_steps),
             optax.linear_schedule(peak_learning_rate, end_learning_rate,
                                   total_steps - warmup_steps)],
            [warmup_steps])
    raise UserError(f"decay must be 'linear' or 'cosine', got {decay!r}")


def _matrices_only(params: Any) -> Any:
    """Weight-decay mask: decay weight matrices, not biases or layer-norm scales (BERT)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


@gin.configurable
def adafactor(learning_rate: float | Schedule,
              min_dim_size_to_factor: int = 128,
              decay_rate: float = 0.8,
              clipping_threshold: float | None = 1.0,
              multiply_by_parameter_scale: bool = True,
              momentum: float | None = None,
              weight_decay_rate: float | None = None,
              epsilon: float = 1e-30,
              factored: bool = True) -> optax.GradientTransformation:
    """Adafactor (Shazeer & Stern 2018) with T5X's defaults (t5x/adafactor.py, `Adafactor`).

    - factored=True, min_dim_size_to_factor=128: matrices whose two largest dimensions are
      >= 128 keep row and column second-moment statistics instead of a full matrix.
    - decay_rate=0.8: second-moment decay 1 - (step + 1)^-0.8 (T5X `decay_rate`, step_offset 0).
    - clipping_threshold=1.0: each update's RMS clipped to 1 (update clipping, not global norm).
    - multiply_by_parameter_scale=True: the step is relative to the parameter's RMS, floored
      at 1e-3 (T5X `epsilon2`; optax `scale_by_param_block_rms`).
    - momentum=None (T5X beta1=None): no first moment, the memory saving ProtT5 relied on.
    - weight_decay_rate=None: weight decay off.
    - epsilon=1e-30 (T5X `epsilon1`), added to squared gradients.
    """
    return optax.adafactor(
        learning_rate=learning_rate,
        min_dim_size_to_factor=min_dim_size_to_factor,
        decay_rate=decay_rate,
        decay_offset=0,
        multiply_by_parameter_scale=multiply_by_parameter_scale,
        clipping_threshold=clipping_threshold,
        momentum=momentum,
        weight_decay_rate=weight_decay_rate,
        eps=epsilon,
        factored=factored,
    )


def _scale_by_adam_without_bias_correction(b1: float, b2: float,
                                           eps: float) -> optax.GradientTransformation:
    """m / (sqrt(v) + eps) with plain exponential moments, as TF ALBERT's LAMB computes it."""

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        scaled = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return scaled, optax.ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


@gin.configurable
def lamb(learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-6, weight_decay: float = 0.01,
         tf_albert: bool = False) -> optax.GradientTransformation:
    """LAMB (You et al. 2019), as ProtBert used it; weight decay on matrices only.

    tf_albert=True follows google-research/albert's `lamb_optimizer.py`, the code the BERT
    family's LAMB runs most likely used: Adam moments without bias correction, and neither
    weight decay nor the trust ratio for biases and LayerNorm parameters (the vectors here).
    optax's LAMB (the default) bias-corrects and applies the trust ratio to every parameter.
    """
    if not tf_albert:
        return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                          mask=_matrices_only)
    return optax.chain(
        _scale_by_adam_without_bias_correction(b1, b2, eps),
        optax.add_decayed_weights(weight_decay, mask=_matrices_only),
        optax.masked(optax.scale_by_trust_ratio(), _matrices_only),
        optax.scale_by_learning_rate(learning_rate),
    )


@gin.configurable
def adamw(learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.01) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019); weight decay on matrices only."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=_matrices_only)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adafactor": adafactor,
    "lamb": lamb,
    "adamw": adamw,
}


@gin.configurable
def make_optimizer(name: str = "adafactor",
                   learning_rate: float | Schedule | None = None,
                   grad_clip_norm: float | None = None,
                   **optimizer_kwargs: Any) -> Optimizer:
    """Builds the named optimizer; returns it with its learning-rate schedule.

    `learning_rate` defaults to `rsqrt_schedule()` (ProtT5's recipe); a float is a constant
    rate. `grad_clip_norm` clips the gradients' global norm before the optimizer sees them.
    Other keyword arguments go to the optimizer's builder (or bind them in gin).
    """
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    if learning_rate is None:
        learning_rate = rsqrt_schedule()
    schedule = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
    optimizer = OPTIMIZERS[name](schedule, **optimizer_kwargs)
    if grad_clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(grad_clip_norm), optimizer)
    return Optimizer(optimizer, schedule)


def _split_microbatches(x: jax.Array, num_microbatches: int) -> jax.Array:
    """(batch, ...) -> (num_microbatches, batch // num_microbatches, ...), strided.

    Microbatch i takes examples i, i + n, i + 2n, ...: with the batch split into contiguous
    blocks along `data`, every device then holds its own share of every microbatch and the
    loop needs no data movement. The constraint keeps the example axis on `data` (a no-op
    without a mesh in context).
    """
    import flax.linen as nn  # Local: optimizers otherwise need no Flax.

    if x.shape[0] % num_microbatches:
        raise UserError(f"batch size {x.shape[0]} is not divisible by "
                         f"num_microbatches={num_microbatches}")
    micro = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:])
    micro = jnp.swapaxes(micro, 0, 1)
    return nn.with_logical_constraint(micro, (None, "batch") + (None,) * (x.ndim - 1))


def _weight_sum(aux: Any) -> jax.Array:
    if "weight_sum" not in aux:
        raise KeyError("loss_and_grad_fn's aux must hold the loss denominator as 'weight_sum'")
    return aux["weight_sum"]


def _merge_microbatches(x: jax.Array) -> jax.Array:
    """The inverse of `_split_microbatches`: (n, batch // n, ...) -> (batch, ...)."""
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def accumulate_gradients(loss_and_grad_fn: Callable, params: Any, batch: Any,
                         num_microbatches: int, rng: jax.Array,
                         denominator: Callable[[Any], jax.Array] = _weight_sum,
                         carry: Any = None) -> tuple:
    """Full-batch loss and gradients computed over microbatches, for use inside jit.

    `loss_and_grad_fn(params, microbatch, rng)` returns `((loss_sum, aux), grads)`: the *sum*
    of per-token losses, a tree of summable metrics from which `denominator(aux)` reads the
    number of target tokens (default: `aux["weight_sum"]`), and the gradients of `loss_sum`,
    e.g. `jax.value_and_grad(loss_sum_fn, has_aux=True)`. Sums are accumulated with
    `lax.scan` and divided once at the end, so the result equals the full batch's
    token-weighted mean however the tokens fall into microbatches.

    Returns `(loss, aux_sums, grads)` with loss and grads divided by the total denominator.
    Microbatch i uses `jax.random.fold_in(rng, i)`.

    With a `carry` (state carried across steps, every leaf with the batch first:
    models/base.py), `loss_and_grad_fn(params, microbatch, rng, carry)` returns
    `((loss_sum, (aux, new_carry)), grads)`; each microbatch gets its own rows' carry (split
    like the batch) and the result is `(loss, aux_sums, grads, new_carry)` with the rows back
    in the batch's order.
    """
    if num_microbatches < 1:
        raise UserError(f"num_microbatches must be >= 1, got {num_microbatches}")
    carried = carry is not None
    call = ((lambda p, b, r, c: loss_and_grad_fn(p, b, r, c)) if carried else
            (lambda p, b, r, c: _with_no_carry(loss_and_grad_fn(p, b, r))))
    if num_microbatches == 1:
        (loss_sum, (aux, new_carry)), grads = call(params, batch, jax.random.fold_in(rng, 0), carry)
    else:
        split = lambda tree: jax.tree.map(lambda x: _split_microbatches(x, num_microbatches), tree)  # noqa: E731
        microbatches, micro_carries = split(batch), split(carry)
        first_batch, first_carry = jax.tree.map(lambda x: x[0], (microbatches, micro_carries))
        (_, (aux_shape, _)), _ = jax.eval_shape(call, params, first_batch, rng, first_carry)
        zeros = (jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape),
                 jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))

        def add_microbatch(sums, inputs):
            index, microbatch, micro_carry = inputs
            (loss_sum, (aux, new_carry)), grads = call(
                params, microbatch, jax.random.fold_in(rng, index), micro_carry)
            new = (loss_sum.astype(jnp.float32), aux, grads)
            return jax.tree.map(lambda total, value: total + value.astype(total.dtype),
                                sums, new), new_carry

        (loss_sum, aux, grads), new_carries = jax.lax.scan(
            add_microbatch, zeros, (jnp.arange(num_microbatches), microbatches, micro_carries))
        new_carry = jax.tree.map(_merge_microbatches, new_carries)
    total = jnp.maximum(jnp.asarray(denominator(aux), jnp.float32), jnp.finfo(jnp.float32).tiny)
    grads = jax.tree.map(lambda g: (g / total).astype(g.dtype), grads)
    if carried:
        return loss_sum / total, aux, grads, new_carry
    return loss_sum / total, aux, grads


def _with_no_carry(result):
    (loss_sum, aux), grads = result
    return (loss_sum, (aux, None)), grads
