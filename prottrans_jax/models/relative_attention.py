"""Transformer-XL's relative positional attention with segment-level memory: the layer stack
that ProtXLNet (models/xlnet.py) and ProtTXL (models/transfo_xl.py) share.

The math is Hugging Face's `XLNetRelativeAttention` / `XLNetLayer` / `XLNetModel` (transformers
5, itself zihangdai/xlnet's `rel_multihead_attn`), batch-major here ((batch, length, d), where
the PyTorch code is time-major (length, batch, d)):

    score(i, j) = [(q_i + r_w_bias) . k_j                     content (ac)
                 + (q_i + r_r_bias) . W_r R(pos_i - pos_j)    position (bd, by the rel-shift)
                 + (q_i + r_s_bias) . seg_embed[s_i != s_j]]  segment (ef; XLNet only)
                 / sqrt(d_head)

with R the sinusoid of a relative distance, r_*_bias per layer (XLNet's and TXL's "untie_r";
transformers 5 has no shared variant), keys and values over `memory ++ segment`, post-LayerNorm
after the attention and after the ReLU FFN. Transformer-XL is the special case "uni" attention
(causal over memory and segment), one stream, no segment term.

Attention runs through the one entry point (models/dot_product_attention.py): q . k there, the
position and segment terms and the mask as `RelativeScores` and `RelativeMask` (models/relative_scores.py), so
`attention_implementation` 'chunked' computes them tile by tile and 'cudnn' takes them as its
bias ('pallas', whose kernel computes only T5's and BERT's biases, is refused by the config).

XLNet's query stream (`g`, the two-stream attention of pre-training) uses the same projections
as the content stream `h` and attends to `h`'s keys and values with its own mask.

Memory: each layer's **input** over the current segment (XLNet's `cache_mem`, TXL's
`_update_mems` with ext_len 0), concatenated to the previous memory, the last `mem_len` kept,
under `stop_gradient`. Memories enter and leave as one array (num_layers, batch, mem, d);
mem 0 is no memory (the first segment, as in kimiyoung/cybertronai TXL and XLNet: Hugging
Face's TransfoXL port attended zero memories instead).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from prottrans_jax.errors import UserError
from prottrans_jax.models.attention_bias import AttentionBias
from prottrans_jax.models.base import ComputeDtypes
from prottrans_jax.models.dot_product_attention import RELATIVE_IMPLEMENTATIONS, dot_product_attention
from prottrans_jax.models.layers import (ACTIVATIONS, REMAT_POLICIES, Embed, LayerNorm, MlpBlock,
                                         remat_layer, tokens_matmul)
from prottrans_jax.models.relative_scores import RelativeMask, RelativeScores

ATTN_TYPES = ("bi", "uni")


@dataclasses.dataclass(frozen=True)
class RelativeConfig(ComputeDtypes):
    """The fields the shared stack reads; XLNetConfig and TransfoXLConfig add their own.

    Names follow BertConfig; Hugging Face's XLNetConfig names: hidden_size d_model, num_layers
    n_layer, num_heads n_head, head_dim d_head, intermediate_size d_inner, hidden_act
    ff_activation, dropout_prob and attention_dropout_prob both `dropout` (TXL: dropout, dropatt).
    """

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("dropout_prob", "attention_dropout_prob", "mem_len",
                                                  "dtype", "param_dtype", "remat_policy", "scan_layers",
                                                  *ComputeDtypes.ATTENTION_FIELDS)
    # The Pallas kernel computes T5's and BERT's biases, not the relative scores.
    ATTENTION_IMPLEMENTATIONS: ClassVar[tuple[str, ...]] = RELATIVE_IMPLEMENTATIONS

    vocab_size: int = 32
    hidden_size: int = 1024
    num_layers: int = 30
    num_heads: int = 16
    head_dim: int = 64
    intermediate_size: int = 4096
    hidden_act: str = "relu"
    dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    clamp_len: int = -1  # > 0: relative distances clamped to +-clamp_len
    same_length: bool = False  # "uni": every query sees the same number of keys
    mem_len: int = 0  # > 0: return the new memory, its last mem_len positions; 0: none
    reuse_len: int = 0  # > 0: only the first reuse_len positions of a segment enter the memory
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_implementation: str = "xla"  # "chunked": the relative shift per tile (relative_scores.py)
    attention_block_size: int = 512

    def check_relative_fields(self, positive: tuple[str, ...] = ()) -> None:
        self.check_fields(("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim",
                           "intermediate_size", *positive),
                          {"hidden_act": ACTIVATIONS, "remat_policy": REMAT_POLICIES})
        for name in ("mem_len", "reuse_len"):
            if getattr(self, name) < 0:
                raise UserError(f"{type(self).__name__}.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def kernel_init(self):
        return nn.initializers.normal(self.initializer_range)


# ---------------------------------------------------------------------- positions and masks


def relative_distances(qlen: int, klen: int, attn_type: str) -> jax.Array:
    """The distances the sinusoids encode, largest first: klen .. -qlen+1 ("bi") or klen .. 0
    ("uni", no future keys): XLNet's pos_seq (one more than a query needs; see
    relative_scores.rel_shift)."""
    if attn_type == "bi":
        pos_seq = jnp.arange(klen, -qlen, -1)
    elif attn_type == "uni":
        pos_seq = jnp.arange(klen, -1, -1)
    else:
        raise UserError(f"attn_type {attn_type!r}; expected one of {ATTN_TYPES}")
    return pos_seq.astype(jnp.float32)


def sinusoid_embedding(pos_seq: jax.Array, width: int) -> jax.Array:
    """[sin(p f), cos(p f)] with f = 1 / 10000^(2i / width): (len(pos_seq), width), float32."""
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, width, 2, dtype=jnp.float32) / width))
    angles = pos_seq[:, None] * inv_freq[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def relative_position_embedding(qlen: int, klen: int, width: int, attn_type: str, clamp_len: int = -1,
                                bi_data: bool = False, batch_size: int = 1) -> jax.Array:
    """(1, P, width), or with `bi_data` (batch_size, P, width): the first half of the batch sees
    forward distances, the second half negated ones (XLNet's bidirectional data pipeline);
    distances clamped to +-clamp_len when clamp_len > 0."""
    pos_seq = relative_distances(qlen, klen, attn_type)
    forward = sinusoid_embedding(_clamp(pos_seq, clamp_len), width)[None]
    if not bi_data:
        return forward
    if batch_size % 2:
        raise UserError(f"bi_data needs an even batch size, got {batch_size}")
    backward = sinusoid_embedding(_clamp(-pos_seq, clamp_len), width)[None]
    half = batch_size // 2
    return jnp.concatenate([jnp.broadcast_to(forward, (half,) + forward.shape[1:]),
                            jnp.broadcast_to(backward, (half,) + backward.shape[1:])], axis=0)


def _clamp(pos_seq: jax.Array, clamp_len: int) -> jax.Array:
    return jnp.clip(pos_seq, -clamp_len, clamp_len) if clamp_len > 0 else pos_seq


def cached_length(reuse_len: int, length: int) -> int:
    """How many positions of a segment of `length` enter the memory: its first reuse_len, or
    all of it when reuse_len is 0."""
    return min(reuse_len, length) if reuse_len > 0 else length


def update_memory(x: jax.Array, memory: jax.Array, mem_len: int, reuse_len: int = 0) -> jax.Array | None:
    """The next memory of one layer: the last mem_len of `memory ++ x[:, :reuse_len]`, with no
    gradient (as the original); None when mem_len is 0."""
    if mem_len <= 0:
        return None
    x = x[:, :cached_length(reuse_len, x.shape[1])]
    return jax.lax.stop_gradient(jnp.concatenate([memory.astype(x.dtype), x], axis=1)[:, -mem_len:])


# ------------------------------------------------------------------------------- modules


class RelativeAttention(nn.Module):
    """One layer's relative attention (no output bias, no projection biases, as XLNet/TXL).

    Parameters: q, k, v, r (d, heads, head_dim), o (heads, head_dim, d), r_w_bias, r_r_bias
    (heads, head_dim), and with `segments` r_s_bias and seg_embed (2, heads, head_dim).
    Returns the projected outputs before the residual and LayerNorm.
    """

    config: RelativeConfig
    segments: bool = False
    deterministic: bool = True

    def setup(self):
        cfg = self.config
        d, heads, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        param = lambda name, shape, axes: self.param(  # noqa: E731
            name, nn.with_logical_partitioning(cfg.kernel_init, axes), shape, cfg.parameter_dtype)
        for name in ("q", "k", "v", "r"):
            setattr(self, name, param(name, (d, heads, hd), ("embed", "heads", "kv")))
        self.o = param("o", (heads, hd, d), ("heads", "kv", "embed"))
        self.r_w_bias = param("r_w_bias", (heads, hd), ("heads", "kv"))
        self.r_r_bias = param("r_r_bias", (heads, hd), ("heads", "kv"))
        if self.segments:
            self.r_s_bias = param("r_s_bias", (heads, hd), ("heads", "kv"))
            self.seg_embed = param("seg_embed", (2, heads, hd), (None, "heads", "kv"))

    def _cast(self, w: jax.Array) -> jax.Array:
        return jnp.asarray(w, self.config.compute_dtype)

    def to_heads(self, x: jax.Array, name: str) -> jax.Array:
        """x (b, l, d) @ the (d, n, h) kernel -> (b, l, n, h), as one 2-D product (`tokens_matmul`)."""
        kernel = self._cast(getattr(self, name))
        return tokens_matmul(x, kernel.reshape(kernel.shape[0], -1)).reshape(*x.shape[:-1], *kernel.shape[1:])

    def project(self, x: jax.Array, name: str) -> jax.Array:
        return nn.with_logical_constraint(self.to_heads(x, name), ("batch", "length", "heads", "kv"))

    def core(self, q: jax.Array, k: jax.Array, v: jax.Array, k_r: jax.Array, mask: RelativeMask,
             segment_types: tuple[jax.Array, jax.Array] | None) -> jax.Array:
        """Attention of queries q (b, i, n, h) over keys k, v (b, j, n, h): (b, i, n, h), through
        the one entry point: q . k there, the position and segment terms and the mask as
        `RelativeScores`, per tile when the implementation is `chunked`."""
        cfg = self.config
        scale = cfg.head_dim ** -0.5
        def scaled(bias_name):
            return (q + self._cast(getattr(self, bias_name))) * jnp.asarray(scale, q.dtype)

        segments = {}
        if segment_types is not None:
            segments = dict(segment_query=scaled("r_s_bias"), segment_embed=self._cast(self.seg_embed),
                            segment_types=segment_types)
        scores = RelativeScores.create(scaled("r_r_bias"), k_r, k.shape[1], mask=mask, **segments)
        return dot_product_attention(
            scaled("r_w_bias"), k, v, AttentionBias.create(q.shape[1], k.shape[1]), scores=scores,
            implementation=cfg.attention_implementation, block_size=cfg.attention_block_size,
            dropout_rate=cfg.attention_dropout_prob, deterministic=self.deterministic,
            dropout_rng=None if self.deterministic or not cfg.attention_dropout_prob else self.make_rng("dropout"),
            dtype=cfg.compute_dtype)

    def out(self, attn_vec: jax.Array) -> jax.Array:
        kernel = self._cast(self.o)  # (n, h, d)
        y = tokens_matmul(attn_vec.reshape(*attn_vec.shape[:-2], -1), kernel.reshape(-1, kernel.shape[-1]))
        return nn.with_logical_constraint(y, ("batch", "length", "embed"))

    def __call__(self, h: jax.Array, g: jax.Array | None, memory: jax.Array, pos_emb: jax.Array,
                 mask_h: RelativeMask, mask_g: RelativeMask | None,
                 segment_types: tuple[jax.Array, jax.Array] | None,
                 target_mapping: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """(content stream output, query stream output or None), before residual + LayerNorm.

        memory (b, mlen, d); pos_emb (1 or b, P, d); each stream's `RelativeMask` over
        mlen + q keys; segment_types (query types (b, q), key types (b, mlen + q)) or None
        (no segment term); g (b, m, d) with target_mapping
        (b, m, q): the query stream's m predictions, each at the position its row selects.
        """
        keys_in = jnp.concatenate([memory.astype(h.dtype), h], axis=1)
        k, v = self.project(keys_in, "k"), self.project(keys_in, "v")
        k_r = self.to_heads(pos_emb.astype(h.dtype), "r")  # (1 or b, P, n, h): not constrained to the batch
        out_h = self.out(self.core(self.project(h, "q"), k, v, k_r, mask_h, segment_types))
        if g is None:
            return out_h, None
        q_g = self.project(g, "q")
        if target_mapping is not None:  # each prediction's query moved to its target position
            q_g = jnp.einsum("bmnd,bml->blnd", q_g, target_mapping.astype(q_g.dtype))
        vec_g = self.core(q_g, k, v, k_r, mask_g, segment_types)
        if target_mapping is not None:
            vec_g = jnp.einsum("blnd,bml->bmnd", vec_g, target_mapping.astype(vec_g.dtype))
        return out_h, self.out(vec_g)


class RelativeLayer(nn.Module):
    """Relative attention then the FFN, each LN(x + Dropout(branch)), for h (and g, with the
    same parameters: the query stream shares the content stream's weights)."""

    config: RelativeConfig
    segments: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, g, memory, pos_emb, mask_h, mask_g, segment_types, target_mapping):
        cfg = self.config
        attn_h, attn_g = RelativeAttention(cfg, self.segments, self.deterministic, name="attention")(
            h, g, memory, pos_emb, mask_h, mask_g, segment_types, target_mapping)
        attention_norm = _norm(cfg, "attention_layer_norm")
        mlp = MlpBlock(cfg.intermediate_size, cfg.hidden_act, cfg.dropout_prob, cfg.compute_dtype,
                       cfg.parameter_dtype, use_bias=True, kernel_init=cfg.kernel_init, name="mlp")
        mlp_norm = _norm(cfg, "mlp_layer_norm")
        dropout = nn.Dropout(cfg.dropout_prob)

        def finish(x, attn):
            x = attention_norm(x + dropout(attn, deterministic=self.deterministic))
            x = mlp_norm(x + dropout(mlp(x, self.deterministic), deterministic=self.deterministic))
            return nn.with_logical_constraint(x, ("batch", "length", "embed"))

        return finish(h, attn_h), None if g is None else finish(g, attn_g)


def _norm(cfg: RelativeConfig, name: str) -> LayerNorm:
    return LayerNorm(cfg.layer_norm_eps, cfg.compute_dtype, cfg.parameter_dtype, name=name)


class RelativeStack(nn.Module):
    """`num_layers` RelativeLayers with memory: scanned (parameters stacked on a leading
    `layers` axis) or `layers_0 ..`, rematerialised by policy.

    Returns (h, g or None, new memory (num_layers, b, mem_len, d) or None when mem_len is 0).
    """

    config: RelativeConfig
    segments: bool = False

    @nn.compact
    def __call__(self, h, g, memory, pos_emb, mask_h, mask_g, segment_types, target_mapping,
                 deterministic: bool = True):
        cfg = self.config
        layer_cls = remat_layer(RelativeLayer, cfg.remat_policy, cfg.scan_layers)
        broadcast = (pos_emb, mask_h, mask_g, segment_types, target_mapping)
        make = lambda name: layer_cls(cfg, self.segments, deterministic, name=name)  # noqa: E731
        if not cfg.scan_layers:
            new_memory = []
            for i in range(cfg.num_layers):
                new_memory.append(update_memory(h, memory[i], cfg.mem_len, cfg.reuse_len))
                h, g = make(f"layers_{i}")(h, g, memory[i], *broadcast)
            return h, g, None if cfg.mem_len <= 0 else jnp.stack(new_memory)
        scanned = nn.scan(
            _scan_body,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(0,) + (nn.broadcast,) * len(broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        (h, g), new_memory = scanned(make("layers"), (h, g), memory, *broadcast)
        return h, g, new_memory


def _scan_body(layer: nn.Module, carry, memory, *broadcast):
    h, g = carry
    new_memory = update_memory(h, memory, layer.config.mem_len, layer.config.reuse_len)
    return layer(h, g, memory, *broadcast), new_memory


def empty_memory(config: RelativeConfig, batch_size: int, dtype: Any) -> jax.Array:
    """No memory: (num_layers, batch, 0, d)."""
    return jnp.zeros((config.num_layers, batch_size, 0, config.hidden_size), dtype)


def checked_memory(config: RelativeConfig, memory: jax.Array | None, batch_size: int) -> jax.Array:
    """The previous segment's memory (None: the first segment, no memory), shape-checked."""
    if memory is None:
        return empty_memory(config, batch_size, config.compute_dtype)
    if memory.shape[:2] != (config.num_layers, batch_size) or memory.shape[3] != config.hidden_size:
        raise ValueError(f"memory shape {memory.shape}; expected ({config.num_layers}, {batch_size}, mem, "
                         f"{config.hidden_size})")
    return memory


# ------------------------------------------------------------------ memory carried across steps


def memory_carry(config: RelativeConfig, batch_size: int) -> dict | None:
    """The trainer's carry (models/base.py) of a fresh run: an empty memory for `batch_size`
    rows, boxed with logical axes, batch first; None when mem_len is 0 (no carry).

    {"memory": (batch, num_layers, mem_len, d) in the compute dtype, "valid": (batch, mem_len)
    bool}: which memory positions hold a token yet (none at first: the first segment sees no
    memory, as in kimiyoung / cybertronai TXL).
    """
    if config.mem_len <= 0:
        return None
    boxed = lambda shape, dtype, axes: nn.with_logical_partitioning(  # noqa: E731
        nn.initializers.zeros, axes)(None, shape, dtype)
    return {"memory": boxed((batch_size, config.num_layers, config.mem_len, config.hidden_size),
                            config.compute_dtype, ("batch", "layers", "length", "embed")),
            "valid": boxed((batch_size, config.mem_len), jnp.bool_, ("batch", "length"))}


def next_memory_valid(memory_valid: jax.Array, added: int) -> jax.Array:
    """Which positions of the next memory hold tokens: the last mem_len of valid ++ `added`
    new ones (the segment, or its reused part)."""
    mem_len = memory_valid.shape[1]
    grown = jnp.concatenate([memory_valid, jnp.ones((memory_valid.shape[0], added), bool)], axis=1)
    return grown[:, grown.shape[1] - mem_len:]


def memory_of(carry: dict | None) -> tuple[jax.Array | None, jax.Array | None]:
    """(memory (num_layers, batch, mem, d), valid (batch, mem)) of a carry, as the stack takes them."""
    if carry is None:
        return None, None
    return jnp.swapaxes(carry["memory"], 0, 1), carry["valid"]


def next_carry(config: RelativeConfig, carry: dict | None, new_memory: jax.Array | None,
               segment_length: int) -> dict | None:
    """The carry after a step over `segment_length` positions whose stack returned `new_memory`
    (the positions `update_memory` kept are now valid)."""
    if carry is None:
        return None
    return {"memory": jax.lax.stop_gradient(jnp.swapaxes(new_memory, 0, 1)),
            "valid": next_memory_valid(carry["valid"], cached_length(config.reuse_len, segment_length))}


def word_embedding(config: RelativeConfig, name: str = "word_embedding") -> Embed:
    return Embed(config.vocab_size, config.hidden_size, config.compute_dtype, config.parameter_dtype,
                 config.kernel_init, name=name)


class TiedLmHead(nn.Module):
    """Logits = h @ word_embedding.T + bias (XLNetLMHeadModel's `lm_loss`, tied), float32."""

    config: RelativeConfig
    embedding: Embed

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (self.config.vocab_size,), self.config.parameter_dtype)
        logits = self.embedding.attend(hidden) + jnp.asarray(bias, self.config.compute_dtype)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
