"""Token-level cross-entropy in float32, with T5X's z-loss and label smoothing.

Everything returns *sums* over tokens, never means: the trainer adds sums across microbatches
and devices and divides once by the total weight, so the loss of a batch is the same however
it is split (gradient accumulation, data parallelism, packing).

Weights are per target token: 0 for padding (packing-aware: a packed row's padding carries
weight 0), 1 for tokens that count. Semantics follow T5X's `compute_weighted_cross_entropy`:

    loss_i = -sum_v q_v log softmax(logits_i)_v - H(q) + z_loss * logsumexp(logits_i)^2

where q is the (label-smoothed) target distribution and H(q) its entropy, so a perfect
prediction of the smoothed target scores 0 whatever the smoothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prottrans_jax.errors import UserError


def cross_entropy_with_logits(logits: jax.Array, soft_targets: jax.Array,
                              z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy against a distribution, and its z-loss part (both float32).

    z-loss (PaLM, T5X) pulls log Z = logsumexp(logits) towards 0, which keeps bf16 logits
    from drifting; it is included in the first result and returned alone in the second.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_softmax = logits - log_z[..., None]
    loss = -jnp.sum(soft_targets * log_softmax, axis=-1)
    z = z_loss * jnp.square(log_z)
    return loss + z, z


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0,
                           z_loss: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss_sum, z_loss_sum, weight_sum) over all target tokens, in float32.

    logits: (..., vocab); targets: (...) int ids; weights: (...) (0 = padding).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    vocab_size = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low_confidence = label_smoothing / (vocab_size - 1)
    # Entropy of the smoothed target: subtracting it makes the minimum loss 0.
    normalizing_constant = -(confidence * jnp.log(confidence)
                             + (vocab_size - 1) * low_confidence
                             * jnp.log(low_confidence + 1e-20))
    soft_targets = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
    soft_targets = soft_targets * (confidence - low_confidence) + low_confidence
    loss, z = cross_entropy_with_logits(logits, soft_targets, z_loss)
    weights = weights.astype(jnp.float32)
    loss = (loss - normalizing_constant) * weights
    return jnp.sum(loss), jnp.sum(z * weights), jnp.sum(weights)


def weighted_correct(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
    """Sum of weights where argmax(logits) == target: divide by the weight sum for accuracy."""
    correct = jnp.argmax(logits, axis=-1) == targets
    return jnp.sum(correct * weights.astype(jnp.float32))
