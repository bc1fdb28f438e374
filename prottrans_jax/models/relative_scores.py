"""Transformer-XL's attention scores beyond q . k, described per tile: what XLNet and ProtTXL pass
to the one attention entry point (models/dot_product_attention.py) next to an `AttentionBias`.

    score(i, j) = (q_i + r_w_bias) . k_j  * scale          the entry point's q . k
                + (q_i + r_r_bias) . k_r[p(i, j)] * scale  position term (bd)
                + (q_i + r_s_bias) . seg[s_i != s_j] * scale   segment term (ef; XLNet)
                + mask_bias(i, j)                           0 or MASKED_LOGIT

`k_r[p]` is the projected sinusoid of distance `klen - p` (relative_attention.py's
`relative_distances`, largest first), so query i (absolute position mlen + i) meets key j at
p(i, j) = qlen - i + j. Transformer-XL computes all (i, p) scores and shifts them
(`rel_shift`); a tile of queries i0.. (qn of them) and keys j0.. (kn) needs only the band of
qn + kn distances starting at p = qlen - i0 - qn + j0, shifted the same way. So `chunked`
attention computes the position term tile by tile and never holds an L x L score array. The
segment term and the mask (`RelativeMask`) are described by per-query and per-key parts that
each tile evaluates for itself; only XLNet's perm mask, an input of size L x L in the batch,
is sliced per tile.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from prottrans_jax.models.attention_bias import MASKED_LOGIT, _rows


def rel_shift(x: jax.Array, klen: int) -> jax.Array:
    """(b, n, q, P) scores against the P distances -> (b, n, q, klen) against the keys:
    out[i, j] = x[i, q - i + j] (XLNet's `rel_shift_bnij`, the reshape trick of
    Transformer-XL). Entries whose distance lies outside the P given are another row's: masked."""
    b, n, q, p = x.shape
    x = x.reshape(b, n, p, q)[:, :, 1:, :]
    return x.reshape(b, n, q, p - 1)[..., :klen]


def _pad_axis(array: jax.Array | None, axis: int, before: int, after: int, value=0):
    if array is None or (before == 0 and after == 0):
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (before, after)
    return jnp.pad(array, widths, constant_values=value)


@flax.struct.dataclass
class RelativeMask:
    """Which keys each query of one relative attention call may see, as parts a tile
    evaluates for itself. Keys are memory ++ segment, so query i sits at key memory_length + i.

    causal ("uni", Transformer-XL): query i sees the keys <= memory_length + i; with
    same_length also not those more than memory_length before it (XLNet's `create_mask`).
    key_visible (b, k) bool: False for padding and for memory that holds no token yet.
    hidden (b, q, k) bool: True where XLNet's perm mask forbids (a batch input of that size).
    sees_itself: query i always sees key memory_length + i (XLNet's content stream).
    """

    memory_length: int = flax.struct.field(pytree_node=False, default=0)
    causal: bool = flax.struct.field(pytree_node=False, default=False)
    same_length: bool = flax.struct.field(pytree_node=False, default=False)
    sees_itself: bool = flax.struct.field(pytree_node=False, default=False)
    key_visible: jax.Array | None = None
    hidden: jax.Array | None = None

    def padded(self, extra_queries: int, extra_keys: int) -> RelativeMask:
        """The same mask over rows longer at the end (the caller masks or discards what is added)."""
        return self.replace(key_visible=_pad_axis(self.key_visible, 1, 0, extra_keys, True),
                            hidden=_pad_axis(_pad_axis(self.hidden, 1, 0, extra_queries), 2, 0, extra_keys))

    def visible(self, q0, qn: int, k0, kn: int) -> jax.Array | None:
        """Boolean (b or 1, qn, kn): which pairs of one tile may attend, or None (all)."""
        query = (q0 + jnp.arange(qn))[:, None] + self.memory_length  # each query's own key index
        key = (k0 + jnp.arange(kn))[None, :]
        parts = []
        if self.causal:
            before = key <= query
            parts.append(jnp.logical_and(before, key >= query - self.memory_length) if self.same_length else before)
        if self.key_visible is not None:
            parts.append(_rows(self.key_visible, k0, kn)[:, None, :])
        if self.hidden is not None:
            parts.append(~jax.lax.dynamic_slice_in_dim(_rows(self.hidden, q0, qn), k0, kn, axis=2))
        if not parts:
            return None
        visible = parts[0]
        for part in parts[1:]:
            visible = jnp.logical_and(visible, part)
        if self.sees_itself:
            visible = jnp.logical_or(visible, key == query)
        return visible if visible.ndim == 3 else visible[None]


@flax.struct.dataclass
class RelativeScores:
    """The position term, the segment term and the mask of one relative attention call.

    position_query (b, q, heads, d): (q + r_r_bias) * scale; position_keys (1 or b, P, heads, d):
    the projected distances, `position_start` of them padding before the first; segment_query
    (b, q, heads, d) and segment_embed (2, heads, d) with query_types (b, q) and key_types
    (b, k) (the term's "different segment" is query_types[i] != key_types[j]), or all None;
    mask a `RelativeMask` or None. `query_origin` is the query length the distances are
    counted for (padding adds queries, not distances).
    """

    query_length: int = flax.struct.field(pytree_node=False)
    key_length: int = flax.struct.field(pytree_node=False)
    query_origin: int = flax.struct.field(pytree_node=False)
    position_start: int = flax.struct.field(pytree_node=False)
    position_query: jax.Array
    position_keys: jax.Array
    segment_query: jax.Array | None = None
    segment_embed: jax.Array | None = None
    query_types: jax.Array | None = None
    key_types: jax.Array | None = None
    mask: RelativeMask | None = None

    @classmethod
    def create(cls, position_query: jax.Array, position_keys: jax.Array, key_length: int, *,
               segment_query: jax.Array | None = None, segment_embed: jax.Array | None = None,
               segment_types: tuple[jax.Array, jax.Array] | None = None,
               mask: RelativeMask | None = None) -> RelativeScores:
        """The scores of `position_query`'s queries over `key_length` keys, the distances padded
        so that every tile of the unpadded rows finds its band (a "uni" model has fewer).
        segment_types: (query_types (b, q), key_types (b, k))."""
        query_length = position_query.shape[1]
        if (segment_query is None) != (segment_types is None) or (segment_query is None) != (segment_embed is None):
            raise ValueError("RelativeScores: segment_query, segment_embed and segment_types go together")
        query_types, key_types = (None, None) if segment_types is None else segment_types
        missing = max(0, query_length + key_length - position_keys.shape[1])
        return cls(query_length=query_length, key_length=key_length, query_origin=query_length, position_start=0,
                   position_query=position_query, position_keys=_pad_axis(position_keys, 1, 0, missing),
                   segment_query=segment_query, segment_embed=segment_embed, query_types=query_types,
                   key_types=key_types, mask=mask)

    def padded(self, query_length: int, key_length: int) -> RelativeScores:
        """The same scores over longer rows (the added queries and keys are padding, which the
        caller discards or masks): every tile of the padded rows finds its band of distances."""
        extra_q, extra_k = query_length - self.query_length, key_length - self.key_length
        if extra_q < 0 or extra_k < 0:
            raise ValueError(f"RelativeScores.padded: ({query_length}, {key_length}) is shorter than "
                             f"({self.query_length}, {self.key_length})")
        return self.replace(
            query_length=query_length, key_length=key_length, position_start=self.position_start + extra_q,
            position_query=_pad_axis(self.position_query, 1, 0, extra_q),
            position_keys=_pad_axis(self.position_keys, 1, extra_q, extra_k),
            segment_query=_pad_axis(self.segment_query, 1, 0, extra_q),
            query_types=_pad_axis(self.query_types, 1, 0, extra_q), key_types=_pad_axis(self.key_types, 1, 0, extra_k),
            mask=None if self.mask is None else self.mask.padded(extra_q, extra_k))

    def block(self, q0, qn: int, k0, kn: int) -> jax.Array:
        """float32 (b, heads, qn, kn): the scores of queries q0.. and keys k0.. beyond q . k.
        q0 and k0 may be traced; the tile must lie inside the rows (pad with `padded`)."""
        f32 = dict(preferred_element_type=jnp.float32)
        query = _rows(self.position_query, q0, qn)
        band = jax.lax.dynamic_slice_in_dim(self.position_keys, self.position_start + self.query_origin - q0 - qn + k0,
                                            qn + kn, axis=1)
        spec = "bind,pnd->bnip" if band.shape[0] == 1 else "bind,bpnd->bnip"
        scores = rel_shift(jnp.einsum(spec, query, band[0] if band.shape[0] == 1 else band, **f32), kn)
        if self.segment_query is not None:
            ef = jnp.einsum("bind,snd->bnis", _rows(self.segment_query, q0, qn), self.segment_embed, **f32)
            different = _rows(self.query_types, q0, qn)[:, :, None] != _rows(self.key_types, k0, kn)[:, None, :]
            scores = scores + jnp.where(different[:, None], ef[..., 1:], ef[..., :1])
        visible = None if self.mask is None else self.mask.visible(q0, qn, k0, kn)
        if visible is not None:
            scores = scores + jnp.where(visible[:, None], 0.0, MASKED_LOGIT).astype(jnp.float32)
        return scores

    def dense(self) -> jax.Array:
        """float32 (b, heads, q, k): every score (what `xla` and `cudnn` attention add)."""
        return self.block(0, self.query_length, 0, self.key_length)
