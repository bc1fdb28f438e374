"""What attention adds to its logits, described instead of materialised: `AttentionBias`.

A dense (batch, heads, q, k) bias costs L x L memory; a 35,213-residue protein needs hundreds
of GiB for it. `AttentionBias` keeps only what the bias is made of (T5's relative-position
table and the query / key positions, padding validity, packing segment ids, a causal flag),
so `dense()` builds the whole bias (the `xla` implementation, tests) and `block(...)` only one
tile of it (the `chunked` implementation), from the bucketed offsets of that tile alone.

Masks are boolean (batch, 1, q_length, kv_length) arrays; `mask_to_bias` turns them into the
additive float32 bias that attention adds to its logits, together with the position bias.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

# A large negative logit, not -inf: a fully masked row (padding) then softmaxes to uniform
# weights instead of NaN, and its output is ignored downstream.
MASKED_LOGIT = -1e10


# ------------------------------------------------------------------------------------ masks


def make_attention_mask(query_input: jax.Array, key_input: jax.Array, pairwise_fn=jnp.logical_and) -> jax.Array:
    """(batch, q) and (batch, k) -> boolean (batch, 1, q, k) = pairwise_fn(query, key)."""
    mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
    return mask[:, None, :, :]


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


# ------------------------------------------------------------------------------ the bias


def _rows(array: jax.Array | None, start, size: int) -> jax.Array | None:
    """array[:, start:start + size] for a possibly traced `start` (None stays None)."""
    if array is None:
        return None
    return jax.lax.dynamic_slice_in_dim(array, start, size, axis=1)


def _pad_rows(array: jax.Array | None, length: int, value) -> jax.Array | None:
    if array is None or array.shape[1] == length:
        return array
    return jnp.pad(array, ((0, 0), (0, length - array.shape[1])), constant_values=value)


# The (batch or 1, length) arrays of an AttentionBias.
PER_POSITION_FIELDS = ("query_positions", "key_positions", "query_valid", "key_valid", "query_segments",
                       "key_segments")


@flax.struct.dataclass
class AttentionBias:
    """The additive logit bias of one attention call, as its parts (a pytree).

    bias[b, h, i, j] = table[h, bucket(key_positions[b, j] - query_positions[b, i])]
                       + (0 if allowed(b, i, j) else MASKED_LOGIT)
    allowed = query_valid[b, i] & key_valid[b, j] & (query_segments[b, i] == key_segments[b, j])
              & (j <= i if causal)
    Every per-position array has shape (batch or 1, length); None leaves that part out.
    Build it with `AttentionBias.create`, which checks the shapes.
    """

    query_length: int = flax.struct.field(pytree_node=False)
    key_length: int = flax.struct.field(pytree_node=False)
    relative_table: jax.Array | None = None  # (heads, num_buckets) float32: T5's position bias
    query_positions: jax.Array | None = None
    key_positions: jax.Array | None = None
    query_valid: jax.Array | None = None  # bool: padding is False
    key_valid: jax.Array | None = None
    query_segments: jax.Array | None = None  # int: packing, attend only within equal ids
    key_segments: jax.Array | None = None
    num_buckets: int = flax.struct.field(pytree_node=False, default=32)
    max_distance: int = flax.struct.field(pytree_node=False, default=128)
    bidirectional: bool = flax.struct.field(pytree_node=False, default=True)
    causal: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def create(cls, query_length: int, key_length: int, **parts) -> AttentionBias:
        """An AttentionBias, its per-position arrays checked against the two lengths."""
        bias = cls(query_length=int(query_length), key_length=int(key_length), **parts)
        bias.check()
        return bias

    def check(self) -> None:
        """ValueError naming the first part whose shape does not fit (an internal mistake)."""
        if (self.relative_table is None) != (self.query_positions is None) or \
                (self.relative_table is None) != (self.key_positions is None):
            raise ValueError("AttentionBias: relative_table needs both query_positions and key_positions")
        if self.relative_table is not None and (self.relative_table.ndim != 2
                                                or self.relative_table.shape[1] != self.num_buckets):
            raise ValueError(f"AttentionBias: relative_table shape {self.relative_table.shape} is not "
                             f"(heads, {self.num_buckets})")
        if self.causal and self.query_length != self.key_length:
            raise ValueError(f"AttentionBias: causal attention needs q length {self.query_length} == "
                             f"k length {self.key_length}")
        if (self.query_segments is None) != (self.key_segments is None):
            raise ValueError("AttentionBias: query_segments and key_segments go together")
        for name, length in (("query_positions", self.query_length), ("key_positions", self.key_length),
                             ("query_valid", self.query_length), ("key_valid", self.key_length),
                             ("query_segments", self.query_length), ("key_segments", self.key_length)):
            array = getattr(self, name)
            if array is not None and (array.ndim != 2 or array.shape[1] != length):
                raise ValueError(f"AttentionBias: {name} shape {array.shape} is not (batch or 1, {length})")

    @property
    def num_heads(self) -> int:
        """Heads of the bias: the table's, or 1 (a mask broadcasts over heads)."""
        return 1 if self.relative_table is None else self.relative_table.shape[0]

    def padded(self, query_length: int, key_length: int) -> AttentionBias:
        """The same bias over longer rows; the added queries and keys are padding (invalid)."""
        if query_length < self.query_length or key_length < self.key_length:
            raise ValueError(f"AttentionBias.padded: ({query_length}, {key_length}) is shorter than "
                             f"({self.query_length}, {self.key_length})")
        return self.replace(
            query_length=query_length, key_length=key_length,
            query_positions=_pad_rows(self.query_positions, query_length, 0),
            key_positions=_pad_rows(self.key_positions, key_length, 0),
            query_valid=_pad_rows(self.query_valid, query_length, False),
            key_valid=_pad_rows(self.key_valid, key_length, False),
            query_segments=_pad_rows(self.query_segments, query_length, 0),
            key_segments=_pad_rows(self.key_segments, key_length, 0))

    def batch_rows(self, batch: int) -> dict[str, jax.Array]:
        """Its per-position arrays, each broadcast to (batch, length): what `jax.lax.map` maps
        over to run attention one batch row at a time (`of_row` rebuilds one row's bias)."""
        return {name: jnp.broadcast_to(getattr(self, name), (batch, getattr(self, name).shape[1]))
                for name in PER_POSITION_FIELDS if getattr(self, name) is not None}

    def of_row(self, row: dict[str, jax.Array]) -> AttentionBias:
        """The bias of one batch row: `row` holds one entry of each array of `batch_rows`."""
        return self.replace(**{name: array[None] for name, array in row.items()})

    def position_bias(self, q0, qn: int, k0, kn: int) -> jax.Array | None:
        """float32 (b or 1, heads, qn, kn): the relative-position part of one tile, or None."""
        if self.relative_table is None:
            return None
        offsets = _rows(self.key_positions, k0, kn)[:, None, :] - _rows(self.query_positions, q0, qn)[:, :, None]
        buckets = relative_position_bucket(offsets, self.bidirectional, self.num_buckets, self.max_distance)
        values = jnp.take(jnp.asarray(self.relative_table, jnp.float32), buckets, axis=1)  # (heads, b, q, k)
        return jnp.transpose(values, (1, 0, 2, 3))

    def allowed(self, q0, qn: int, k0, kn: int, causal: bool | None = None) -> jax.Array | None:
        """Boolean (b or 1, 1, qn, kn): which pairs of one tile may attend, or None (all).
        `causal=False` leaves the causal part out (for kernels that apply it themselves)."""
        causal = self.causal if causal is None else causal
        masks = []
        query_valid, key_valid = _rows(self.query_valid, q0, qn), _rows(self.key_valid, k0, kn)
        if query_valid is not None or key_valid is not None:
            query_valid = jnp.ones((1, qn), bool) if query_valid is None else query_valid
            key_valid = jnp.ones((1, kn), bool) if key_valid is None else key_valid
            masks.append(make_attention_mask(query_valid, key_valid))
        if self.query_segments is not None:
            masks.append(make_attention_mask(_rows(self.query_segments, q0, qn),
                                             _rows(self.key_segments, k0, kn), jnp.equal))
        if causal:
            query_index = (q0 + jnp.arange(qn))[None, :]
            key_index = (k0 + jnp.arange(kn))[None, :]
            masks.append(make_attention_mask(query_index, key_index, jnp.greater_equal))
        return combine_masks(*masks)

    def block(self, q0, qn: int, k0, kn: int) -> jax.Array:
        """float32 (b or 1, heads or 1, qn, kn): the bias of queries q0.. and keys k0.. only.
        q0 and k0 may be traced; the tile must lie inside the rows (pad with `padded`)."""
        position, allowed = self.position_bias(q0, qn, k0, kn), self.allowed(q0, qn, k0, kn)
        if allowed is None:
            return jnp.zeros((1, 1, qn, kn), jnp.float32) if position is None else position
        if position is None:
            return mask_to_bias(allowed)
        return position + mask_to_bias(allowed)

    def dense(self) -> jax.Array:
        """float32 (b or 1, heads or 1, q, k): the whole bias (what `xla` attention adds)."""
        return self.block(0, self.query_length, 0, self.key_length)
