"""Multi-head dot-product attention, attention masks and T5's relative position bias.

Masks are boolean (batch, 1, q_length, kv_length) arrays; `mask_to_bias` turns them into the
additive float32 bias that attention adds to its logits, together with the position bias.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models.layers import Dense, Initializer, default_kernel_init

# A large negative logit, not -inf: a fully masked row (padding) then softmaxes to uniform
# weights instead of NaN, and its output is ignored downstream.
MASKED_LOGIT = -1e10


# ------------------------------------------------------------------------------------ masks


def make_attention_mask(query_input: jax.Array, key_input: jax.Array, pairwise_fn=jnp.logical_and) -> jax.Array:
    """(batch, q) and (batch, k) -> boolean (batch, 1, q, k) = pairwise_fn(query, key)."""
    mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
    return mask[:, None, :, :]


def make_causal_mask(length: int) -> jax.Array:
    """Boolean (1, 1, length, length): position i may attend to positions <= i."""
    idx = jnp.arange(length)
    return (idx[None, :] <= idx[:, None])[None, None, :, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of the masks that are not None (broadcasting)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    combined = masks[0]
    for mask in masks[1:]:
        combined = jnp.logical_and(combined, mask)
    return combined


def mask_to_bias(mask: jax.Array) -> jax.Array:
    """Boolean mask -> additive float32 logit bias (0 where allowed, MASKED_LOGIT elsewhere)."""
    return jnp.where(mask, 0.0, MASKED_LOGIT).astype(jnp.float32)


def segment_or_token_validity(tokens: jax.Array, segment_ids: jax.Array | None, pad_id: int) -> jax.Array:
    """Which positions hold real tokens: segment id > 0 when packed, else token != pad."""
    if segment_ids is not None:
        return segment_ids > 0
    return tokens != pad_id


# ---------------------------------------------------------------------- relative positions


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of (key position - query position), exactly as Mesh TF / Hugging Face.

    Half the buckets hold exact small distances, the other half log-spaced larger ones up to
    max_distance; bidirectional attention splits the buckets between the two directions, and
    causal attention maps every future key (positive distance) to bucket 0.
    """
    relative_position = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Distances below max_exact give log <= 0 or log(0) = -inf; those lanes are discarded by
    # the `where` below, so clamp first to keep the float -> int cast well defined.
    safe_distance = jnp.maximum(distance, max_exact).astype(jnp.float32)
    log_ratio = jnp.log(safe_distance / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, if_large)


class RelativePositionBias(nn.Module):
    """Learned per-head scalar bias for each relative-position bucket (one table per stack)."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: nn.initializers.Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """(b, q) and (b, k) int positions (b may be 1) -> float32 bias (b, heads, q, k)."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(self.embedding_init, ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        relative_position = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(
            relative_position, self.bidirectional, self.num_buckets, self.max_distance
        )
        values = jnp.take(jnp.asarray(table, jnp.float32), buckets, axis=1)  # (heads, b, q, k)
        return jnp.transpose(values, (1, 0, 2, 3))


# ---------------------------------------------------------------------------- attention


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention, as T5 (the default) or BERT computes it.

    T5: no biases, no 1/sqrt(d) logit scaling (T5 folds the 1/sqrt(head_dim) scale into the
    query initialisation). BERT: `use_bias` on the four projections and `scale_logits`.
    Logits are softmaxed in float32 after adding `bias` (mask + position bias).
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = False
    scale_logits: bool = False
    kernel_init: Initializer | None = None  # None: T5X's fan-in init (query scaled down)

    @nn.compact
    def __call__(
        self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: jax.Array | None, deterministic: bool = True
    ) -> jax.Array:
        inner_dim = self.num_heads * self.head_dim
        kernel_init = self.kernel_init or default_kernel_init
        if self.kernel_init is None and not self.scale_logits:
            query_init = lambda *a: default_kernel_init(*a) / math.sqrt(self.head_dim)  # noqa: E731
        else:
            query_init = kernel_init

        def project(x, name, init):
            y = Dense(inner_dim, ("embed", "joined_kv"), self.dtype, self.param_dtype, init,
                      self.use_bias, name=name)(x)
            y = y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))
            return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

        query = project(inputs_q, "query", query_init)
        key = project(inputs_kv, "key", kernel_init)
        value = project(inputs_kv, "value", kernel_init)
        if self.scale_logits:
            query = query * jnp.asarray(self.head_dim ** -0.5, query.dtype)

        # Accumulate and keep the logits in float32 even when the inputs are bfloat16.
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)

        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(out.shape[:-2] + (inner_dim,))
        out = Dense(inputs_q.shape[-1], ("joined_kv", "embed"), self.dtype, self.param_dtype,
                    kernel_init, self.use_bias, name="out")(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))
