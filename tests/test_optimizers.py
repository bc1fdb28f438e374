"""Schedules, optimizer recipes and gradient accumulation."""

import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prottrans_jax import optimizers, partitioning

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_rsqrt_schedule_matches_t5_at_known_steps():
    schedule = optimizers.rsqrt_schedule()  # T5X defaults: base 1.0, 10k warm-up steps.
    for step, want in [(0, 0.01), (1, 0.01), (10_000, 0.01), (40_000, 0.005), (1_000_000, 0.001)]:
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6)
    ramped = optimizers.rsqrt_schedule(base_learning_rate=2.0, warmup_steps=100,
                                       linear_warmup=True)
    for step, want in [(0, 0.0), (50, 0.1), (100, 0.2), (400, 0.1)]:
        np.testing.assert_allclose(float(ramped(step)), want, rtol=1e-6)


@pytest.mark.parametrize("decay, midpoint", [("linear", 0.5e-3), ("cosine", 0.5e-3)])
def test_warmup_decay_schedule(decay, midpoint):
    schedule = optimizers.warmup_decay_schedule(1e-3, warmup_steps=100, total_steps=300,
                                                decay=decay)
    np.testing.assert_allclose(float(schedule(0)), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(schedule(50)), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(200)), midpoint, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(300)), 0.0, atol=1e-9)
    with pytest.raises(ValueError, match="linear' or 'cosine"):
        optimizers.warmup_decay_schedule(1e-3, 10, 20, decay="step")


def test_make_optimizer_returns_the_schedule_and_rejects_unknown_names():
    _, schedule = optimizers.make_optimizer("adafactor")
    np.testing.assert_allclose(float(schedule(40_000)), 0.005, rtol=1e-6)
    _, constant = optimizers.make_optimizer("adamw", learning_rate=3e-4)
    np.testing.assert_allclose(float(constant(123)), 3e-4, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        optimizers.make_optimizer("sgd")


def test_adafactor_follows_t5x_defaults():
    params = {"kernel": jnp.zeros((256, 128)), "bias": jnp.zeros((128,))}
    optimizer, _ = optimizers.make_optimizer("adafactor")
    state = optimizer.init(params)
    shapes = {partitioning.path_to_name(path): leaf.shape
              for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    # Factored second moments for the matrix, a full one for the vector, no momentum.
    assert {shapes["0/v_row/kernel"], shapes["0/v_col/kernel"]} == {(256,), (128,)}
    assert shapes["0/v/kernel"] == (1,) and shapes["0/v/bias"] == (128,)
    assert not any("mu" in name for name in shapes)

    grads = {"kernel": jnp.ones((256, 128)),
             "bias": jnp.asarray(np.random.default_rng(0).normal(size=128), jnp.float32)}
    updates, _ = optimizer.update(grads, state, params)
    # Step 0: normalised gradient sign(g) (RMS 1, within the clipping threshold) times the
    # learning rate 0.01 times the parameter scale, floored at 1e-3 for zero parameters.
    np.testing.assert_allclose(np.asarray(updates["bias"]),
                               -1e-5 * np.sign(np.asarray(grads["bias"])), rtol=1e-4)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_skips_vectors(name):
    params = {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}
    optimizer, _ = optimizers.make_optimizer(name, learning_rate=0.1, weight_decay=0.5)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    assert float(jnp.abs(updates["kernel"]).min()) > 0
    np.testing.assert_array_equal(np.asarray(updates["bias"]), 0.0)


def test_global_norm_clipping():
    params = {"w": jnp.zeros((3,))}
    grads = {"w": jnp.asarray([30.0, 40.0, 0.0])}  # norm 50
    clipped, _ = optimizers.make_optimizer("adamw", learning_rate=1.0, weight_decay=0.0,
                                           grad_clip_norm=5.0, eps=0.0)
    plain, _ = optimizers.make_optimizer("adamw", learning_rate=1.0, weight_decay=0.0, eps=0.0)
    # Adam's first step is sign-like, so compare through the second-moment state instead.
    _, clipped_state = clipped.update(grads, clipped.init(params), params)
    _, plain_state = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(np.asarray(clipped_state[1][0].nu["w"]),
                               np.asarray(plain_state[0].nu["w"]) / 100, rtol=1e-6)


def _linear_model_loss(params, batch, rng):
    """Token-weighted cross-entropy sum of a linear softmax model."""
    del rng
    logits = batch["x"] @ params["w"] + params["b"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    return jnp.sum(losses * batch["weights"]), {"weight_sum": jnp.sum(batch["weights"])}


def _problem(batch_size=16, length=5, features=8, classes=6):
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(features, classes)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(classes,)), jnp.float32)}
    weights = (rng.random((batch_size, length)) < 0.6).astype(np.float32)
    # Padding examples that all land in microbatch 0 (microbatches are strided): the token
    # counts per microbatch differ, so averaging per-microbatch means would be wrong.
    weights[[0, 4, 8]] = 0.0
    weights[1] = 1.0
    batch = {"x": rng.normal(size=(batch_size, length, features)).astype(np.float32),
             "y": rng.integers(0, classes, (batch_size, length)).astype(np.int32),
             "weights": weights}
    return params, batch


@pytest.mark.parametrize("num_microbatches", [1, 2, 4, 8])
def test_accumulated_gradients_equal_the_full_batch(num_microbatches):
    params, batch = _problem()
    loss_and_grad = jax.value_and_grad(_linear_model_loss, has_aux=True)

    def full_batch(params, batch):
        loss_sum, aux = _linear_model_loss(params, batch, jax.random.key(0))
        return loss_sum / aux["weight_sum"]

    want_loss, want_grads = jax.value_and_grad(full_batch)(params, batch)
    accumulate = jax.jit(optimizers.accumulate_gradients, static_argnums=(0, 3))
    loss, aux, grads = accumulate(loss_and_grad, params, batch, num_microbatches,
                                  jax.random.key(0))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(aux["weight_sum"]), batch["weights"].sum())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 grads, want_grads)


def test_accumulation_on_a_sharded_batch():
    params, batch = _problem()
    partitioner = partitioning.Partitioner(mesh_shape=(4, 2))
    loss_and_grad = jax.value_and_grad(_linear_model_loss, has_aux=True)
    accumulate = jax.jit(lambda p, b, r: optimizers.accumulate_gradients(loss_and_grad, p, b, 2, r))
    want_loss, _, want_grads = accumulate(params, batch, jax.random.key(0))
    with partitioner.context():
        loss, _, grads = accumulate(jax.device_put(params, partitioner.replicated),
                                    partitioner.host_local_batch_to_global(batch),
                                    jax.random.key(0))
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 grads, want_grads)


def test_accumulation_rejects_indivisible_batches():
    params, batch = _problem(batch_size=18)
    loss_and_grad = jax.value_and_grad(_linear_model_loss, has_aux=True)
    with pytest.raises(ValueError, match="not divisible by num_microbatches=4"):
        optimizers.accumulate_gradients(loss_and_grad, params, batch, 4, jax.random.key(0))


@pytest.mark.parametrize("gin_file, name, step, learning_rate, state_field", [
    ("adafactor_rsqrt.gin", "adafactor", 40_000, 0.005, "v_row"),
    ("lamb_linear.gin", "lamb", 20_000, 0.001, "mu"),
])
def test_gin_files_configure_the_factory(gin_file, name, step, learning_rate, state_field):
    gin.clear_config()
    try:
        gin.parse_config_file(str(REPO / "gin" / "optimizers" / gin_file))
        optimizer, schedule = optimizers.make_optimizer()
        bound_name = gin.query_parameter("optimizers.make_optimizer.name")
    finally:
        gin.clear_config()
    assert bound_name == name
    np.testing.assert_allclose(float(schedule(step)), learning_rate, rtol=1e-6)
    state = optimizer.init({"w": jnp.ones((4, 4))})
    names = [partitioning.path_to_name(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert any(f"{state_field}/w" in n for n in names), names
