"""One attention entry point with four implementations, chosen by the model config.

    out = dot_product_attention(query, key, value, bias, implementation="chunked", block_size=512)

query (batch, q, heads, head_dim), key and value (batch, k, heads, head_dim), `bias` an
`AttentionBias` (the description of the additive logit bias, never a dense array), and for
Transformer-XL's relative attention (XLNet, ProtTXL) `scores`, a `RelativeScores`: its
position and segment terms and mask, computed per tile as the bias is. No logit scaling
happens here: T5 folds 1/sqrt(head_dim) into the query initialisation, BERT and the relative
models scale the queries before calling.

- "xla": the dense computation (logits and softmax in float32): memory O(q * k); on a CPU,
  a large batch's forward, when not differentiated, one row at a time (its scores then stay
  in cache).
- "chunked": query blocks x key blocks with an online softmax (Rabe & Staats 2021,
  "Self-attention does not need O(n^2) memory"), the bias of each tile from `bias.block`;
  memory linear in the length, forward and backward, on any backend.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused cuDNN kernel
  (CUDA GPUs, bfloat16 / float16, no attention dropout); the bias goes in dense.
- "pallas": a fused Pallas (Triton) kernel that computes T5's bias inside the kernel
  (`pallas_attention.py`): memory linear in the length at fused speed, for long proteins
  (CUDA GPUs, any float dtype, no attention dropout, no relative scores; its gradient is
  chunked's, in tiles of `block_size`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from prottrans_jax.errors import UserError
from prottrans_jax.models.attention_bias import AttentionBias
from prottrans_jax.models.chunked_attention import chunked_attention, dropout_keep
from prottrans_jax.models.pallas_attention import pallas_attention
from prottrans_jax.models.relative_scores import RelativeScores

IMPLEMENTATIONS = ("xla", "chunked", "cudnn", "pallas")
RELATIVE_IMPLEMENTATIONS = ("xla", "chunked", "cudnn")  # those that take `RelativeScores`
GPU_IMPLEMENTATIONS = ("cudnn", "pallas")  # fused kernels for CUDA GPUs


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: AttentionBias, *,
                          implementation: str = "xla", block_size: int = 512, dropout_rate: float = 0.0,
                          dropout_rng: jax.Array | None = None, deterministic: bool = True,
                          dtype: jnp.dtype = jnp.float32, scores: RelativeScores | None = None) -> jax.Array:
    """softmax(q k^T + bias [+ scores]) v per head, (batch, q, heads, head_dim) in `dtype`.

    Attention dropout (`dropout_rate`, when not `deterministic`) needs `dropout_rng`.
    """
    if query.ndim != 4 or key.shape != value.shape or query.shape[-1] != key.shape[-1]:
        raise ValueError(f"dot_product_attention: query {query.shape}, key {key.shape}, value {value.shape}")
    if (bias.query_length, bias.key_length) != (query.shape[1], key.shape[1]):
        raise ValueError(f"dot_product_attention: bias is ({bias.query_length}, {bias.key_length}), "
                         f"attention is ({query.shape[1]}, {key.shape[1]})")
    if scores is not None and (scores.query_length, scores.key_length) != (query.shape[1], key.shape[1]):
        raise ValueError(f"dot_product_attention: scores are ({scores.query_length}, {scores.key_length}), "
                         f"attention is ({query.shape[1]}, {key.shape[1]})")
    dropout = 0.0 if deterministic else float(dropout_rate)
    if dropout > 0.0 and dropout_rng is None:
        raise ValueError("dot_product_attention: attention dropout needs dropout_rng")
    if implementation == "xla":
        return _xla(query, key, value, bias, dropout, dropout_rng, dtype, scores)
    if implementation == "chunked":
        return chunked_attention(query, key, value, bias, block_size=block_size, dropout=dropout,
                                 rng=dropout_rng, dtype=dtype, scores=scores)
    if implementation == "cudnn":
        return _cudnn(query, key, value, bias, dropout, dtype, scores)
    if implementation == "pallas":
        return _pallas(query, key, value, bias, block_size, dropout, dtype, scores)
    raise UserError(f"attention_implementation={implementation!r}; expected one of {IMPLEMENTATIONS}")


def check_available(implementation: str, dtype) -> None:
    """A one-line UserError where `implementation` cannot run on this backend in `dtype`."""
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"attention_implementation={implementation!r}; expected one of {IMPLEMENTATIONS}")
    if implementation not in GPU_IMPLEMENTATIONS:
        return
    backend = jax.default_backend()
    if backend != "gpu":
        raise UserError(f"attention_implementation={implementation!r} needs a CUDA GPU; this backend is "
                        f"{backend!r} (use 'xla' or 'chunked')")
    if implementation == "cudnn" and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise UserError(f"attention_implementation='cudnn' needs dtype bfloat16 or float16, got "
                        f"{jnp.dtype(dtype).name}")


# ----------------------------------------------------------------------------------- xla


# From this size of the batch's float32 scores (batch, heads, q, k) on, `xla` attention's
# forward on a CPU runs the batch one row at a time (see _xla). One layer on a 2-core CPU:
# 1.2-2.3x quicker at `embed`'s CPU batches (4,096 tokens) of 8 and 16 heads x 64; with 2-4
# heads or 2-4 rows 0.89-1.05x at six shapes of 16-128 MiB (2.8x at a seventh); 0.64x and
# 0.94x at two of 8 MiB, hence the threshold. The rows' loop would gather a batch sharded
# over several devices; a CPU job here is one device (the tests' 8-device CPU meshes run
# batches far under this size).
CPU_BY_ROWS_MIN_BYTES = 16 * 2**20


def _xla(query, key, value, bias: AttentionBias, dropout: float, rng, dtype, scores=None) -> jax.Array:
    """The dense computation. On a CPU, once the batch's scores outgrow its caches (a ProtBert
    embedding batch of 12 x 320 tokens x 8 heads: 39 MB), a forward that is not differentiated
    (embedding, evaluation) runs one batch row at a time: the same values, each row's scores
    staying in cache; one such layer's forward 65 -> 36 ms on two threads, the embedding 6-11%
    faster end to end (README, Performance). Differentiated, the whole batch at once: rows
    made the gradient slower (ProtBert's CPU train step by 10-13%). Elsewhere, and with
    attention dropout or relative scores (XLNet, ProtTXL), always the whole batch.
    `platform_dependent` picks at lowering: the CPU branch costs other platforms nothing
    (tests/models/test_dot_product_attention.py).
    """
    batch, q_length, heads, _ = query.shape
    if (scores is not None or dropout > 0.0 or batch == 1
            or 4 * batch * heads * q_length * key.shape[1] < CPU_BY_ROWS_MIN_BYTES):
        return _dense(query, key, value, bias, dropout, rng, dtype, scores)
    return jax.lax.platform_dependent(query, key, value, bias,
                                      cpu=lambda *args: _by_rows_unless_differentiated(*args, dtype),
                                      default=lambda *args: _dense(*args, 0.0, None, dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _by_rows_unless_differentiated(query, key, value, bias: AttentionBias, dtype) -> jax.Array:
    """`_dense` over one batch row at a time (a `jax.lax.map`), no dropout, no relative scores;
    differentiated (forward or reverse mode), the whole batch's `_dense` (the custom JVP)."""
    def row(xs):
        q, k, v, bias_row = xs
        return _dense(q[None], k[None], v[None], bias.of_row(bias_row), 0.0, None, dtype)[0]

    return jax.lax.map(row, (query, key, value, bias.batch_rows(query.shape[0])))


@_by_rows_unless_differentiated.defjvp
def _whole_batch_jvp(dtype, primals, tangents):
    return jax.jvp(lambda *args: _dense(*args, 0.0, None, dtype), primals, tangents)


def _dense(query, key, value, bias: AttentionBias, dropout: float, rng, dtype, scores=None) -> jax.Array:
    """The whole batch's (batch, heads, q, k) scores at once, as MultiHeadAttention always did."""
    # Heads before positions for the two products, (b, h, l, d): XLA:CPU then runs them with no
    # transposed copies of the (b, h, q, k) weights (ProtT5 base width on one CPU core: the
    # model's forward 7-26% faster at 512-1,024 tokens, forward + backward level to 9% faster);
    # GPU and TPU layouts are XLA's choice either way.
    query, key, value = (jnp.swapaxes(x, 1, 2) for x in (query, key, value))
    # Accumulate and keep the logits in float32 even when the inputs are bfloat16.
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits + bias.dense()
    if scores is not None:
        logits = logits + scores.dense()
    weights = softmax(logits).astype(dtype)
    if dropout > 0.0:
        keep = dropout_keep(rng, dropout, weights.shape)
        weights = jax.lax.select(keep, weights / (1.0 - dropout), jnp.zeros_like(weights))
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", weights, value), 1, 2).astype(dtype)


def softmax(logits: jax.Array) -> jax.Array:
    """jax.nn.softmax over the last axis, with jax's custom gradient y * (dy - sum(y * dy)).

    Under jax's default (`jax_softmax_custom_jvp=False`, as of jax 0.10.2) the gradient is
    the quotient rule through exp / sum: more passes over the (batch, heads, q, k) scores in
    the backward, and 3-14% slower forward + backward for ProtT5 base on a CPU core (README).
    The flag is turned on here only, while this call is traced, not for the user's process.
    """
    with jax.softmax_custom_jvp(True):
        return jax.nn.softmax(logits, axis=-1)


# --------------------------------------------------------------------------------- cudnn


def _cudnn(query, key, value, bias: AttentionBias, dropout: float, dtype, scores=None) -> jax.Array:
    """The fused cuDNN kernel: the position bias as (1 or b, heads, q, k) in the compute dtype,
    padding as sequence lengths (rows are right-padded everywhere here: the feature
    converters and `embed` pad at the end), packing as a boolean mask, causal as its flag.
    Relative `scores` join the bias, dense (b, heads, q, k): the kernel takes any bias."""
    check_available("cudnn", dtype)
    if dropout > 0.0:
        raise UserError("attention_implementation='cudnn' has no attention dropout: set the attention "
                        "dropout rate to 0 or use 'xla' or 'chunked'")
    position = bias.position_bias(0, bias.query_length, 0, bias.key_length)
    if scores is not None:
        position = scores.dense() if position is None else position + scores.dense()
    mask, query_lengths, key_lengths = None, None, None
    if bias.query_segments is not None:
        mask = bias.allowed(0, bias.query_length, 0, bias.key_length, causal=False)
    else:
        batch = query.shape[0]
        if bias.query_valid is not None:
            query_lengths = jnp.broadcast_to(jnp.sum(bias.query_valid, axis=1, dtype=jnp.int32), (batch,))
        if bias.key_valid is not None:
            key_lengths = jnp.broadcast_to(jnp.sum(bias.key_valid, axis=1, dtype=jnp.int32), (batch,))
    out = jax.nn.dot_product_attention(
        query.astype(dtype), key.astype(dtype), value.astype(dtype),
        bias=None if position is None else position.astype(dtype), mask=mask, scale=1.0,
        is_causal=bias.causal, query_seq_lengths=query_lengths, key_value_seq_lengths=key_lengths,
        implementation="cudnn")
    return out.astype(dtype)


# -------------------------------------------------------------------------------- pallas


def _pallas(query, key, value, bias: AttentionBias, block_size: int, dropout: float, dtype,
            scores=None) -> jax.Array:
    """The fused kernel with the bias computed in it; chunked's gradient (tiles of block_size)."""
    check_available("pallas", dtype)
    if dropout > 0.0:
        raise UserError("attention_implementation='pallas' has no attention dropout: set the attention "
                        "dropout rate to 0 or use 'xla' or 'chunked'")
    if scores is not None:
        raise UserError("attention_implementation='pallas' takes T5's and BERT's biases, not XLNet's or "
                        "ProtTXL's relative scores: use 'chunked', 'xla' or 'cudnn'")
    return pallas_attention(query, key, value, bias, dtype=dtype, backward_block_size=block_size)
