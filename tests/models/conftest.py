"""Attention cases shared by the attention tests: inputs, and the bias of each pattern
(T5's encoder and decoder, cross-attention, packed rows) at lengths that divide no block."""

import jax
import jax.numpy as jnp
import numpy as np

from prottrans_jax.models.attention_bias import AttentionBias

HEADS, HEAD_DIM, BUCKETS, MAX_DISTANCE = 4, 8, 32, 128
TOL = dict(rtol=1e-5, atol=1e-5)
ATTENTION_CASES = ("encoder", "decoder", "cross", "packed", "packed_decoder")


def attention_inputs(batch, q_length, k_length, seed=0):
    """q, k, v, a relative-bias table and an output cotangent, float32 normal."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, q_length, HEADS, HEAD_DIM)).astype(np.float32)
    k = rng.normal(size=(batch, k_length, HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(batch, k_length, HEADS, HEAD_DIM)).astype(np.float32)
    table = rng.normal(size=(HEADS, BUCKETS)).astype(np.float32)
    cotangent = rng.normal(size=(batch, q_length, HEADS, HEAD_DIM)).astype(np.float32)
    return [jnp.asarray(x) for x in (q, k, v, table, cotangent)]


def valid_rows(lengths, length):
    return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


def packed_rows(length):
    """Two packed rows (segments 1.., 0 = padding) with positions restarting per segment."""
    rows = [[1] * 10 + [2] * 15 + [3] * 7, [1] * 20 + [2] * 12 + [3] * 3]
    segments = np.zeros((2, length), np.int32)
    positions = np.zeros((2, length), np.int32)
    for row, ids in enumerate(rows):
        segments[row, :len(ids)] = ids
        for segment in set(ids):
            where = np.flatnonzero(segments[row] == segment)
            positions[row, where] = np.arange(len(where))
    return jnp.asarray(segments), jnp.asarray(positions)


def attention_case(name, table):
    """(q_length, k_length, AttentionBias built from `table`) of one attention pattern."""
    relative = dict(relative_table=table, num_buckets=BUCKETS, max_distance=MAX_DISTANCE)
    arange = jnp.arange(37)[None, :]
    if name == "encoder":  # bidirectional T5 bias, right padding
        valid = valid_rows([37, 30], 37)
        return 37, 37, AttentionBias.create(37, 37, query_positions=arange, key_positions=arange,
                                            bidirectional=True, query_valid=valid, key_valid=valid, **relative)
    if name == "decoder":  # causal T5 bias, right padding
        valid = valid_rows([37, 25], 37)
        return 37, 37, AttentionBias.create(37, 37, query_positions=arange, key_positions=arange,
                                            bidirectional=False, causal=True, query_valid=valid,
                                            key_valid=valid, **relative)
    if name == "cross":  # no position bias, q length != k length
        return 21, 37, AttentionBias.create(21, 37, query_valid=valid_rows([21, 15], 21),
                                            key_valid=valid_rows([37, 30], 37))
    if name == "packed":  # segments, per-segment positions, trailing padding
        segments, positions = packed_rows(37)
        return 37, 37, AttentionBias.create(37, 37, query_positions=positions, key_positions=positions,
                                            bidirectional=True, query_valid=segments > 0, key_valid=segments > 0,
                                            query_segments=segments, key_segments=segments, **relative)
    if name == "packed_decoder":
        segments, positions = packed_rows(37)
        return 37, 37, AttentionBias.create(37, 37, query_positions=positions, key_positions=positions,
                                            bidirectional=False, causal=True, query_segments=segments,
                                            key_segments=segments, **relative)
    raise KeyError(name)


def value_and_grads(f, q, k, v, table, cotangent):
    """f's output and its gradients w.r.t. q, k, v and the table."""
    out, vjp = jax.vjp(f, q, k, v, table)
    return out, vjp(cotangent)


def assert_fused_equals_xla(implementation, name, length):
    """A fused GPU kernel (`cudnn`, `pallas`) against `xla` in bfloat16, head_dim 64, T5's
    bias with padding ("encoder") or causality ("decoder"): the output and the gradient
    w.r.t. the relative-bias table (once silently zero in JAX for some shapes with cudnn).
    Padded query rows are left out: cudnn leaves them at 0, xla averages every value."""
    from prottrans_jax.models.dot_product_attention import dot_product_attention

    rng = np.random.default_rng(0)
    q, k, v, cotangent = (jnp.asarray(rng.normal(size=(2, length, HEADS, 64)), jnp.bfloat16) for _ in range(4))
    table = jnp.asarray(rng.normal(size=(HEADS, BUCKETS)), jnp.float32)

    def run(implementation):
        def attend(q, k, v, table):
            pos = jnp.arange(length)[None, :]
            valid = valid_rows([length, length - 7], length)
            bias = AttentionBias.create(length, length, relative_table=table, query_positions=pos, key_positions=pos,
                                        num_buckets=BUCKETS, max_distance=MAX_DISTANCE,
                                        bidirectional=name == "encoder", causal=name == "decoder",
                                        query_valid=valid, key_valid=valid)
            return dot_product_attention(q, k, v, bias, implementation=implementation, dtype=jnp.bfloat16)
        return jax.jit(lambda *a: value_and_grads(attend, *a))(q, k, v, table, cotangent)

    expected, expected_grads = run("xla")
    got, got_grads = run(implementation)
    rows = slice(0, length - 7)
    np.testing.assert_allclose(np.asarray(got[:, rows], np.float32), np.asarray(expected[:, rows], np.float32),
                               rtol=2e-2, atol=2e-2)
    assert float(jnp.abs(expected_grads[3]).max()) > 1e-2
    np.testing.assert_allclose(np.asarray(got_grads[3]), np.asarray(expected_grads[3]), rtol=5e-2, atol=5e-2)
