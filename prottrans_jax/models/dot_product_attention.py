"""One attention entry point with three implementations, chosen by the model config.

    out = dot_product_attention(query, key, value, bias, implementation="chunked", block_size=512)

query (batch, q, heads, head_dim), key and value (batch, k, heads, head_dim), `bias` an
`AttentionBias` (the description of the additive logit bias, never a dense array), and for
Transformer-XL's relative attention (XLNet, ProtTXL) `scores`, a `RelativeScores`: its
position and segment terms and mask, computed per tile as the bias is. No logit scaling
happens here: T5 folds 1/sqrt(head_dim) into the query initialisation, BERT and the relative
models scale the queries before calling.

- "xla": the dense computation (logits and softmax in float32): memory O(q * k).
- "chunked": query blocks x key blocks with an online softmax (Rabe & Staats 2021,
  "Self-attention does not need O(n^2) memory"), the bias of each tile from `bias.block`;
  memory linear in the length, forward and backward, on any backend.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, the fused cuDNN kernel
  (CUDA GPUs, bfloat16 / float16, no attention dropout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prottrans_jax.errors import UserError
from prottrans_jax.models.attention_bias import AttentionBias
from prottrans_jax.models.relative_scores import RelativeScores

IMPLEMENTATIONS = ("xla", "chunked", "cudnn")


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
        return _chunked(query, key, value, bias, block_size, dropout, dropout_rng, dtype, scores)
    if implementation == "cudnn":
        return _cudnn(query, key, value, bias, dropout, dtype, scores)
    raise UserError(f"attention_implementation={implementation!r}; expected one of {IMPLEMENTATIONS}")


def check_available(implementation: str, dtype) -> None:
    """A one-line UserError where `implementation` cannot run on this backend in `dtype`."""
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"attention_implementation={implementation!r}; expected one of {IMPLEMENTATIONS}")
    if implementation != "cudnn":
        return
    backend = jax.default_backend()
    if backend != "gpu":
        raise UserError(f"attention_implementation='cudnn' needs a CUDA GPU; this backend is {backend!r} "
                        f"(use 'xla' or 'chunked')")
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise UserError(f"attention_implementation='cudnn' needs dtype bfloat16 or float16, got "
                        f"{jnp.dtype(dtype).name}")


def _dropout_keep(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.bernoulli(rng, 1.0 - rate, shape)


# ----------------------------------------------------------------------------------- xla


def _xla(query, key, value, bias: AttentionBias, dropout: float, rng, dtype, scores=None) -> jax.Array:
    """The dense computation, exactly what MultiHeadAttention always did."""
    # Accumulate and keep the logits in float32 even when the inputs are bfloat16.
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits + bias.dense()
    if scores is not None:
        logits = logits + scores.dense()
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    if dropout > 0.0:
        keep = _dropout_keep(rng, dropout, weights.shape)
        weights = jax.lax.select(keep, weights / (1.0 - dropout), jnp.zeros_like(weights))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value).astype(dtype)


# ------------------------------------------------------------------------------- chunked


def _tile_dropout_rng(rng: jax.Array, query_block: jax.Array, key_block: jax.Array) -> jax.Array:
    """The dropout key of one (query block, key block) tile: the same in forward and recompute."""
    return jax.random.fold_in(jax.random.fold_in(rng, query_block), key_block)


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """(b, n * size, h, d) -> (n, b, size, h, d): the scan axis first."""
    b, length, h, d = x.shape
    return jnp.moveaxis(x.reshape(b, length // size, size, h, d), 1, 0)


def _pad_length(x: jax.Array, length: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _chunked(query, key, value, bias: AttentionBias, block_size: int, dropout: float, rng,
             dtype, scores=None) -> jax.Array:
    """Memory-efficient attention: never more than one (q block, k block) tile of logits.

    Each query block scans the key blocks keeping a running max m, normaliser l and
    numerator acc (float32). Lengths that do not divide the block are padded here; padded
    keys get weight exactly 0 (not MASKED_LOGIT, which a fully masked row, like xla's, spreads
    uniformly over the real keys). Dropout multiplies the numerator's weights only, the
    normaliser stays the undropped sum: the same as dropout on the normalised weights.
    Both block functions are rematerialised, so the backward stores per query block only the
    carries of its key steps: memory linear in the length.
    """
    if block_size <= 0:
        raise ValueError(f"chunked attention: block_size must be positive, got {block_size}")
    batch, q_length, heads, head_dim = query.shape
    k_length = key.shape[1]
    q_block, k_block = min(block_size, q_length), min(block_size, k_length)
    q_count, k_count = -(-q_length // q_block), -(-k_length // k_block)
    q_padded, k_padded = q_count * q_block, k_count * k_block
    tiles = bias.padded(q_padded, k_padded)
    score_tiles = None if scores is None else scores.padded(q_padded, k_padded)
    q_blocks = _blocks(_pad_length(query, q_padded), q_block)
    k_blocks = _blocks(_pad_length(key, k_padded), k_block)
    v_blocks = _blocks(_pad_length(value, k_padded), k_block)

    def key_step(carry, xs, q, qi):
        acc, m, l = carry
        k, v, ki = xs
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits + tiles.block(qi * q_block, q_block, ki * k_block, k_block)
        if score_tiles is not None:
            logits = logits + score_tiles.block(qi * q_block, q_block, ki * k_block, k_block)
        real = (ki * k_block + jnp.arange(k_block)) < k_length  # the keys that are not our padding
        logits = jnp.where(real, logits, -jnp.inf)
        # The running max only shifts the exponent; the result does not depend on it.
        m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, axis=-1)))
        weights = jnp.exp(logits - m_new[..., None])
        correction = jnp.exp(m - m_new)
        l_new = l * correction + jnp.sum(weights, axis=-1)
        if dropout > 0.0:
            keep = _dropout_keep(_tile_dropout_rng(rng, qi, ki), dropout, weights.shape)
            weights = jnp.where(keep, weights / (1.0 - dropout), 0.0)
        update = jnp.einsum("bhqk,bkhd->bhqd", weights.astype(value.dtype), v,
                            preferred_element_type=jnp.float32)
        return (acc * correction[..., None] + update, m_new, l_new), None

    def query_block(xs):
        q, qi = xs
        init = (jnp.zeros((batch, heads, q_block, head_dim), jnp.float32),
                jnp.full((batch, heads, q_block), -jnp.inf, jnp.float32),
                jnp.zeros((batch, heads, q_block), jnp.float32))
        step = jax.checkpoint(lambda carry, ys: key_step(carry, ys, q, qi))
        (acc, _, l), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, jnp.arange(k_count)))
        return jnp.moveaxis(acc / l[..., None], 1, 2).astype(dtype)  # (b, q_block, h, d)

    out = jax.lax.map(jax.checkpoint(query_block), (q_blocks, jnp.arange(q_count)))
    out = jnp.moveaxis(out, 0, 1).reshape(batch, q_padded, heads, head_dim)
    return out[:, :q_length]


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
