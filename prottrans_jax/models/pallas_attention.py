"""A fused attention kernel (Pallas; Triton on CUDA GPUs) that computes T5's relative-position
bias inside the kernel.

cuDNN's fused attention takes the position bias as a dense (heads, q, k) array: 78 GB in
bfloat16 for ProtT5-XL's 32 heads over one 35,213-residue protein. Here each program (one
block of queries of one row and head) builds the bias of its tiles from the query and key
positions, as `AttentionBias` describes it. T5's bucket of a distance is constant beyond
`max_distance`, so the bias of every distance is one (heads, 2 * max_distance + 1) table,
computed once outside the kernel and gathered per logit inside it. Padding and packing are
one integer code per position (equal codes may attend), causality an index comparison: the
kernel reads O(length) inputs besides q, k and v, and writes only the output.

Forward only. The gradient is `chunked_attention`'s (it recomputes the forward in tiles,
memory linear in the length), so the kernel speeds up inference (embedding long proteins)
first; training runs with it, its backward at chunked's speed. Tested against `xla` on CPU in
Pallas' interpret mode (`interpret=True`) and, compiled, on a GPU (benchmarks/gpu_tests.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from prottrans_jax.models.attention_bias import MASKED_LOGIT, AttentionBias, relative_position_bucket
from prottrans_jax.models.chunked_attention import chunked_attention, pad_length
from prottrans_jax.shapes import next_power_of_two, round_up

# Tiles of 64 x 64 logits: what Triton flash-attention kernels use at head_dim 64-128 on
# A100 / H100 (jax.experimental.pallas.ops.gpu.attention takes 128 x 128 without a bias; the
# gathered bias needs registers too). Tunable per call; not yet tuned on a GPU.
QUERY_BLOCK = 64
KEY_BLOCK = 64
_MIN_BLOCK = 16  # Triton's smallest dot operand


def distance_bias(bias: AttentionBias) -> jax.Array:
    """float32 (heads, W): T5's position bias of each distance key - query clipped to
    [-max_distance, max_distance], at index distance + max_distance; W is a power of 2."""
    distance = jnp.arange(-bias.max_distance, bias.max_distance + 1)
    buckets = relative_position_bucket(distance, bias.bidirectional, bias.num_buckets, bias.max_distance)
    values = jnp.take(jnp.asarray(bias.relative_table, jnp.float32), buckets, axis=1)
    width = next_power_of_two(values.shape[1])
    return jnp.pad(values, ((0, 0), (0, width - values.shape[1])))


def _codes(valid: jax.Array | None, segments: jax.Array | None, batch: int, length: int,
           invalid: int) -> jax.Array:
    """int32 (batch, length): a query and a key may attend when their codes are equal (the
    same segment, both valid); `invalid` differs between queries and keys."""
    code = jnp.zeros((1, length), jnp.int32) if segments is None else segments.astype(jnp.int32)
    if valid is not None:
        code = jnp.where(valid, code, invalid)
    return jnp.broadcast_to(code, (batch, length))


def _kernel(*refs, key_length: int, key_block: int, causal: bool, max_distance: int, has_position: bool):
    """One program: queries [i * q_block, (i + 1) * q_block) of one row and head, against
    the keys in blocks of `key_block`, with the online softmax of `chunked_attention`."""
    if has_position:
        q_ref, k_ref, v_ref, q_code_ref, k_code_ref, q_pos_ref, k_pos_ref, distance_ref, o_ref = refs
    else:
        q_ref, k_ref, v_ref, q_code_ref, k_code_ref, o_ref = refs
    query_block, head_dim = q_ref.shape
    block_index = pl.program_id(0)
    q = q_ref[...]
    q_code = q_code_ref[...]
    q_index = block_index * query_block + jnp.arange(query_block)
    q_pos = q_pos_ref[...] if has_position else None

    def key_step(step, carry):
        acc, m, l = carry
        keys = pl.ds(step * key_block, key_block)
        logits = plgpu.dot(q, k_ref[keys, :].T)  # float32
        if has_position:
            distance = jnp.clip(k_pos_ref[keys][None, :] - q_pos[:, None], -max_distance, max_distance)
            logits = logits + distance_ref[distance + max_distance]
        allowed = q_code[:, None] == k_code_ref[keys][None, :]
        k_index = step * key_block + jnp.arange(key_block)
        if causal:
            allowed = jnp.logical_and(allowed, q_index[:, None] >= k_index[None, :])
        logits = logits + jnp.where(allowed, 0.0, MASKED_LOGIT)
        logits = jnp.where((k_index < key_length)[None, :], logits, -jnp.inf)  # our padding: weight 0
        m_new = jnp.maximum(m, jnp.max(logits, axis=1))
        weights = jnp.exp(logits - m_new[:, None])
        correction = jnp.exp(m - m_new)
        v = v_ref[keys, :]
        acc = acc * correction[:, None] + plgpu.dot(weights.astype(v.dtype), v)
        return acc, m_new, l * correction + jnp.sum(weights, axis=1)

    steps = -(-key_length // key_block)
    if causal:  # the key blocks after this query block's last query hold no allowed key
        steps = jnp.minimum(steps, jax.lax.div((block_index + 1) * query_block + key_block - 1, key_block))
    init = (jnp.zeros((query_block, head_dim), jnp.float32), jnp.full((query_block,), -jnp.inf, jnp.float32),
            jnp.zeros((query_block,), jnp.float32))
    acc, _, l = jax.lax.fori_loop(0, steps, key_step, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)


def _block(requested: int, length: int) -> int:
    """A power-of-2 tile edge, at least Triton's minimum, no longer than the padded rows need."""
    if requested <= 0 or requested & (requested - 1):
        raise ValueError(f"pallas attention: block sizes must be powers of 2, got {requested}")
    return max(_MIN_BLOCK, min(requested, next_power_of_two(length)))


def pallas_forward(query: jax.Array, key: jax.Array, value: jax.Array, bias: AttentionBias, *,
                   dtype=jnp.float32, interpret: bool = False, query_block: int = QUERY_BLOCK,
                   key_block: int = KEY_BLOCK) -> jax.Array:
    """softmax(q k^T + bias) v, (batch, q, heads, head_dim) in `dtype`, by the fused kernel.

    Rows are padded to whole blocks and head_dim to a power of 2 (zeros: the logits do not
    change); a query that may attend nowhere averages the values of the key blocks it visits
    (all of them, or up to its own with `causal`), an output that callers discard (padding).
    """
    batch, q_length, heads, head_dim = query.shape
    k_length = key.shape[1]
    q_block, k_block = _block(query_block, q_length), _block(key_block, k_length)
    q_padded, k_padded = round_up(q_length, q_block), round_up(k_length, k_block)
    width = max(_MIN_BLOCK, next_power_of_two(head_dim))
    tiles = bias.padded(q_padded, k_padded)

    def rows(x, length):
        return jnp.pad(pad_length(x, length), ((0, 0), (0, 0), (0, 0), (0, width - head_dim)))

    inputs = [rows(query, q_padded), rows(key, k_padded), rows(value, k_padded),
              _codes(tiles.query_valid, tiles.query_segments, batch, q_padded, -1),
              _codes(tiles.key_valid, tiles.key_segments, batch, k_padded, -2)]
    query_rows = pl.BlockSpec((None, q_block), lambda i, b, h: (b, i))
    key_rows = pl.BlockSpec((None, k_padded), lambda i, b, h: (b, 0))
    specs = [pl.BlockSpec((None, q_block, None, width), lambda i, b, h: (b, i, h, 0)),
             pl.BlockSpec((None, k_padded, None, width), lambda i, b, h: (b, 0, h, 0)),
             pl.BlockSpec((None, k_padded, None, width), lambda i, b, h: (b, 0, h, 0)),
             query_rows, key_rows]
    has_position = tiles.relative_table is not None
    if has_position:
        distances = distance_bias(tiles)
        inputs += [jnp.broadcast_to(tiles.query_positions, (batch, q_padded)).astype(jnp.int32),
                   jnp.broadcast_to(tiles.key_positions, (batch, k_padded)).astype(jnp.int32),
                   jnp.broadcast_to(distances, (heads, distances.shape[1]))]
        specs += [query_rows, key_rows, pl.BlockSpec((None, distances.shape[1]), lambda i, b, h: (h, 0))]
    kernel = functools.partial(_kernel, key_length=k_length, key_block=k_block, causal=tiles.causal,
                               max_distance=tiles.max_distance, has_position=has_position)
    out = pl.pallas_call(
        kernel, grid=(q_padded // q_block, batch, heads), in_specs=specs,
        out_specs=pl.BlockSpec((None, q_block, None, width), lambda i, b, h: (b, i, h, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, q_padded, heads, width), dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4 if width <= 64 else 8, num_stages=2),
        interpret=interpret, name="t5_bias_attention")(*inputs)
    return out[:, :q_length, :, :head_dim]


def pallas_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: AttentionBias, *,
                     dtype=jnp.float32, backward_block_size: int = 512, interpret: bool = False,
                     query_block: int = QUERY_BLOCK, key_block: int = KEY_BLOCK) -> jax.Array:
    """`pallas_forward`, differentiable: its gradient is `chunked_attention`'s (tiles of
    `backward_block_size`), which equals it within float rounding."""
    forward = functools.partial(pallas_forward, dtype=dtype, interpret=interpret, query_block=query_block,
                                key_block=key_block)

    @jax.custom_vjp
    def attend(q, k, v, b):
        return forward(q, k, v, b)

    def attend_forward(q, k, v, b):
        return forward(q, k, v, b), (q, k, v, b)

    def attend_backward(residuals, cotangent):
        chunked = functools.partial(chunked_attention, block_size=backward_block_size, dtype=dtype)
        _, vjp = jax.vjp(chunked, *residuals)
        return vjp(cotangent)

    attend.defvjp(attend_forward, attend_backward)
    return attend(query, key, value, bias)
