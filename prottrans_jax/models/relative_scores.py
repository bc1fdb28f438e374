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
attention computes the position term tile by tile and never holds an L x L score array; the
mask (XLNet's perm mask is an input of that size) is sliced per tile.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from prottrans_jax.models.attention_bias import _rows


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
class RelativeScores:
    """The position term, the segment term and the mask of one relative attention call.

    position_query (b, q, heads, d): (q + r_r_bias) * scale; position_keys (1 or b, P, heads, d):
    the projected distances, `position_start` of them padding before the first; segment_query
    (b, q, heads, d) and segment_embed (2, heads, d) with different_segment (b, q, k) bool, or
    all None; mask_bias (b or 1, 1, q, k) float32 or None. `query_origin` is the query length
    the distances are counted for (padding adds queries, not distances).
    """

    query_length: int = flax.struct.field(pytree_node=False)
    key_length: int = flax.struct.field(pytree_node=False)
    query_origin: int = flax.struct.field(pytree_node=False)
    position_start: int = flax.struct.field(pytree_node=False)
    position_query: jax.Array
    position_keys: jax.Array
    segment_query: jax.Array | None = None
    segment_embed: jax.Array | None = None
    different_segment: jax.Array | None = None
    mask_bias: jax.Array | None = None

    @classmethod
    def create(cls, position_query: jax.Array, position_keys: jax.Array, key_length: int, *,
               segment_query: jax.Array | None = None, segment_embed: jax.Array | None = None,
               different_segment: jax.Array | None = None, mask_bias: jax.Array | None = None) -> RelativeScores:
        """The scores of `position_query`'s queries over `key_length` keys, the distances padded
        so that every tile of the unpadded rows finds its band (a "uni" model has fewer)."""
        query_length = position_query.shape[1]
        if (segment_query is None) != (different_segment is None) or (segment_query is None) != (segment_embed is None):
            raise ValueError("RelativeScores: segment_query, segment_embed and different_segment go together")
        missing = max(0, query_length + key_length - position_keys.shape[1])
        return cls(query_length=query_length, key_length=key_length, query_origin=query_length, position_start=0,
                   position_query=position_query, position_keys=_pad_axis(position_keys, 1, 0, missing),
                   segment_query=segment_query, segment_embed=segment_embed, different_segment=different_segment,
                   mask_bias=mask_bias)

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
            different_segment=_pad_axis(_pad_axis(self.different_segment, 1, 0, extra_q), 2, 0, extra_k),
            mask_bias=_pad_axis(_pad_axis(self.mask_bias, 2, 0, extra_q), 3, 0, extra_k))

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
            different = jax.lax.dynamic_slice_in_dim(_rows(self.different_segment, q0, qn), k0, kn, axis=2)
            scores = scores + jnp.where(different[:, None], ef[..., 1:], ef[..., :1])
        if self.mask_bias is not None:
            mask = jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(self.mask_bias, q0, qn, axis=2),
                                                k0, kn, axis=3)
            scores = scores + mask
        return scores

    def dense(self) -> jax.Array:
        """float32 (b, heads, q, k): every score (what `xla` and `cudnn` attention add)."""
        return self.block(0, self.query_length, 0, self.key_length)
