"""Cross-entropy sums: values, weights (padding), z-loss, label smoothing, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax import losses

VOCAB = 7


def random_case(seed=0, shape=(3, 5)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, VOCAB)).astype(np.float32) * 3
    targets = rng.integers(0, VOCAB, shape).astype(np.int32)
    weights = (rng.random(shape) < 0.7).astype(np.float32)
    return logits, targets, weights


def reference(logits, targets, weights, smoothing=0.0, z=0.0):
    """T5X's formula, written out in float64 numpy."""
    logits = logits.astype(np.float64)
    log_z = np.log(np.sum(np.exp(logits), axis=-1))
    log_p = logits - log_z[..., None]
    low = smoothing / (VOCAB - 1)
    q = np.full(logits.shape, low)
    np.put_along_axis(q, targets[..., None], 1 - smoothing, axis=-1)
    entropy = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0), axis=-1)
    per_token = -np.sum(q * log_p, axis=-1) - entropy + z * log_z ** 2
    return np.sum(per_token * weights), np.sum(z * log_z ** 2 * weights), np.sum(weights)


@pytest.mark.parametrize("smoothing, z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-4)])
def test_matches_t5x_formula(smoothing, z):
    logits, targets, weights = random_case()
    got = losses.weighted_cross_entropy(jnp.asarray(logits), targets, weights, smoothing, z)
    for value, want in zip(got, reference(logits, targets, weights, smoothing, z)):
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


def test_padding_weight_zero_contributes_nothing_even_if_logits_are_garbage():
    logits, targets, weights = random_case(1)
    weights[:, -2:] = 0
    poisoned = logits.copy()
    poisoned[:, -2:] = 1e4  # what a padded position's logits might be
    a = losses.weighted_cross_entropy(jnp.asarray(logits), targets, weights)
    b = losses.weighted_cross_entropy(jnp.asarray(poisoned), targets, weights)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sums_split_exactly_across_microbatches():
    logits, targets, weights = random_case(2, shape=(4, 6))
    whole = losses.weighted_cross_entropy(jnp.asarray(logits), targets, weights, 0.1, 1e-3)
    halves = [losses.weighted_cross_entropy(jnp.asarray(logits[s]), targets[s], weights[s], 0.1, 1e-3)
              for s in (slice(0, 1), slice(1, 4))]
    np.testing.assert_allclose(whole, np.sum(halves, axis=0), rtol=1e-6)


def test_perfect_smoothed_prediction_scores_zero():
    targets = np.array([[1, 4]], np.int32)
    smoothing = 0.1
    q = np.full((1, 2, VOCAB), smoothing / (VOCAB - 1))
    np.put_along_axis(q, targets[..., None], 1 - smoothing, axis=-1)
    loss, _, _ = losses.weighted_cross_entropy(jnp.log(jnp.asarray(q, jnp.float32)), targets,
                                               np.ones((1, 2)), smoothing)
    assert abs(float(loss)) < 1e-5


def test_gradient_is_softmax_minus_target_times_weight():
    logits, targets, weights = random_case(3)
    grad = jax.grad(lambda x: losses.weighted_cross_entropy(x, targets, weights)[0])(
        jnp.asarray(logits))
    softmax = jax.nn.softmax(logits, axis=-1)
    want = (softmax - jax.nn.one_hot(targets, VOCAB)) * weights[..., None]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_are_computed_in_float32():
    logits, targets, weights = random_case(4)
    loss, _, _ = losses.weighted_cross_entropy(jnp.asarray(logits, jnp.bfloat16), targets, weights)
    assert loss.dtype == jnp.float32


def test_weighted_correct_counts_argmax_hits_with_weights():
    logits = np.zeros((1, 3, VOCAB), np.float32)
    logits[0, 0, 2] = logits[0, 1, 5] = logits[0, 2, 1] = 1
    targets = np.array([[2, 5, 0]], np.int32)
    assert float(losses.weighted_correct(logits, targets, np.array([[1, 0, 1]]))) == 1.0
    assert float(losses.weighted_correct(logits, targets, np.ones((1, 3)))) == 2.0


def test_label_smoothing_out_of_range_is_refused():
    logits, targets, weights = random_case()
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.weighted_cross_entropy(logits, targets, weights, label_smoothing=1.0)
