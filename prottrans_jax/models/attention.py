"""Multi-head dot-product attention and T5's relative position bias (the learned table).

The bias attention adds to its logits is an `AttentionBias` (models/attention_bias.py), a
description that each attention implementation (models/dot_product_attention.py) turns into
logits its own way: whole (`xla`) or one tile at a time (`chunked`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.models.attention_bias import AttentionBias
from prottrans_jax.models.dot_product_attention import dot_product_attention
from prottrans_jax.models.layers import Dense, Initializer, default_kernel_init



class RelativePositionBias(nn.Module):
    """Learned per-head scalar bias for each relative-position bucket (one table per stack)."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: nn.initializers.Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array, **masks) -> AttentionBias:
        """(b, q) and (b, k) int positions (b may be 1) -> the AttentionBias of the table at
        those positions, with `masks` (AttentionBias fields: query_valid, causal, ...)."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(self.embedding_init, ("heads", "relpos_buckets")),
            (self.num_heads, self.num_buckets),
            self.param_dtype,
        )
        return AttentionBias.create(
            query_positions.shape[1], key_positions.shape[1], relative_table=jnp.asarray(table, jnp.float32),
            query_positions=query_positions, key_positions=key_positions, num_buckets=self.num_buckets,
            max_distance=self.max_distance, bidirectional=self.bidirectional, **masks)


# ---------------------------------------------------------------------------- attention


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention, as T5 (the default) or BERT computes it.

    T5: no biases, no 1/sqrt(d) logit scaling (T5 folds the 1/sqrt(head_dim) scale into the
    query initialisation). BERT: `use_bias` on the four projections and `scale_logits`.
    Logits are softmaxed in float32 after adding `bias` (mask + position bias);
    `implementation` ("xla" | "chunked" | "cudnn" | "pallas") and `block_size` choose how
    (models/dot_product_attention.py). None as `bias`: nothing added.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = False
    scale_logits: bool = False
    kernel_init: Initializer | None = None  # None: T5X's fan-in init (query scaled down)
    implementation: str = "xla"
    block_size: int = 512

    @nn.compact
    def __call__(
        self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: AttentionBias | None, deterministic: bool = True
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
        if bias is None:
            bias = AttentionBias.create(inputs_q.shape[1], inputs_kv.shape[1])

        dropout = not deterministic and self.dropout_rate > 0.0
        out = dot_product_attention(
            query, key, value, bias, implementation=self.implementation, block_size=self.block_size,
            dropout_rate=self.dropout_rate, dropout_rng=self.make_rng("dropout") if dropout else None,
            deterministic=deterministic, dtype=self.dtype)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        out = out.reshape(out.shape[:-2] + (inner_dim,))
        out = Dense(inputs_q.shape[-1], ("joined_kv", "embed"), self.dtype, self.param_dtype,
                    kernel_init, self.use_bias, name="out")(out)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))
