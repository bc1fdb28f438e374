"""XLNet's permutation language model: the features of one example, as a pure numpy function.

XLNet (Yang et al. 2019) predicts tokens in a random factorisation order, and only the last
part of each order (partial prediction: about 1 token in `mask_alpha / mask_beta` = 6, which is
`num_predict` 85 of 512 in the official large recipe: seq 512, reuse 256, mem 384, perm 256).
The algorithm is zihangdai/xlnet's `data_utils.py`, re-written here for residues:

1. Targets (`_sample_mask`): spans of n residues, n ~ 1/n for n in 1..max_gram, each chosen in
   a window of `n * mask_alpha / mask_beta` positions (the span at a uniform offset in it),
   until `num_predict` are chosen; then single random positions top it up. For proteins every
   residue starts a "word", so a span is n consecutive residues; positions that may not be
   targets (padding, <sep>, <cls>, the caller's choice) are skipped.
2. Order and masks (`_local_perm`), separately for the reused part [0, reuse_len) and the new
   part: positions are shuffled in blocks of `perm_size`; non-target, non-functional tokens
   get order -1 (every position sees them; they see no target and no functional token);
   target i may attend to j iff j is such a context token or j comes strictly earlier in the
   order; functional tokens (<sep>, <cls>) take part in the order but are never targets (they
   may see themselves). The reused part never sees the new part; the new part sees all of it.

Features (fixed shapes for a fixed length and num_predict), in the model's convention
(models/xlnet.py, Hugging Face's): `perm_mask` (L, L) float32, 1 = i may not attend to j;
`target_mapping` (num_predict, L) one-hot rows, zero rows as padding; `target`
(num_predict,) int32, the token at each predicted position (0 in padding rows);
`target_weights` (num_predict,) float32, 1 for a real prediction.
"""

from __future__ import annotations

import numpy as np

from prottrans_jax.errors import UserError

# zihangdai/xlnet's special ids (models/xlnet.py SPECIAL_IDS): <sep> and <cls> are "functional".
SEP_ID, CLS_ID = 4, 3


def sample_targets(maskable: np.ndarray, num_predict: int, rng: np.random.Generator, mask_alpha: float = 6,
                   mask_beta: float = 1, max_gram: int = 5) -> np.ndarray:
    """Boolean (L,): at most `num_predict` maskable positions, in n-gram spans (XLNet's
    `_sample_mask` where every piece starts a word), topped up with single positions."""
    maskable = np.asarray(maskable, bool)
    length = len(maskable)
    goal = min(num_predict, int(maskable.sum()))
    chosen = np.zeros(length, bool)
    grams = np.arange(1, max_gram + 1)
    p = 1.0 / grams
    p /= p.sum()
    cursor = 0
    while cursor < length and chosen.sum() < goal:
        n = min(int(rng.choice(grams, p=p)), goal - int(chosen.sum()))
        context = int(n * mask_alpha // mask_beta)
        left = int(rng.integers(context)) if context > 0 else 0
        begin = cursor + left
        while begin < length and not maskable[begin]:
            begin += 1
        end = begin
        while end < length and end - begin < n and maskable[end]:
            end += 1
        if end <= begin:
            break
        chosen[begin:end] = True
        cursor = end + (context - left)
    free = np.flatnonzero(maskable & ~chosen)
    missing = goal - int(chosen.sum())
    if missing > 0:
        chosen[rng.choice(free, missing, replace=False)] = True
    return chosen


def local_permutation(is_target: np.ndarray, functional: np.ndarray, perm_size: int,
                      rng: np.random.Generator) -> np.ndarray:
    """perm_mask (L, L) bool of one part (XLNet's `_local_perm`): True = i may not attend to j."""
    length = len(is_target)
    if length % perm_size:
        raise UserError(f"perm_size {perm_size} must divide the part's length {length}")
    # XLNet's reshape / shuffle / transpose: position b * perm_size + k gets order
    # b * perm_size + pi(k), one shuffle pi shared by all blocks, the blocks in sequence.
    index = np.arange(length).reshape(-1, perm_size).T
    index = index[rng.permutation(perm_size)]
    index = index.T.reshape(-1)
    context = ~is_target & ~functional  # visible to all, sees no target and no functional token
    order = np.where(context, -1, index)
    self_order = np.where(is_target, order, order + 1)  # targets do not see themselves
    return (self_order[:, None] <= order[None, :]) & ~context[None, :]


def permutation_lm_features(tokens: np.ndarray, num_predict: int, rng: np.random.Generator, *,
                            reuse_len: int = 0, perm_size: int | None = None,
                            maskable: np.ndarray | None = None, mask_alpha: float = 6, mask_beta: float = 1,
                            max_gram: int = 5, functional_ids: tuple[int, ...] = (SEP_ID, CLS_ID)
                            ) -> dict[str, np.ndarray]:
    """The permutation-LM features of one example `tokens` (L,) (see the module docstring).

    `maskable` (L,) bool: positions that may be predicted (default: every non-functional one;
    pass False for padding). `reuse_len` > 0 splits the example as XLNet's pipeline does;
    `perm_size` (default: each part's length) must divide both parts and, with a reused part,
    be at most reuse_len (XLNet's condition against leaks).
    """
    tokens = np.asarray(tokens)
    length = len(tokens)
    if not 0 <= reuse_len < length:
        raise UserError(f"reuse_len {reuse_len} must be in [0, {length})")
    if num_predict <= 0:
        raise UserError(f"num_predict must be positive, got {num_predict}")
    functional = np.isin(tokens, functional_ids)
    maskable = ~functional if maskable is None else np.asarray(maskable, bool) & ~functional
    is_target = sample_targets(maskable, num_predict, rng, mask_alpha, mask_beta, max_gram)

    parts = [(0, reuse_len), (reuse_len, length)] if reuse_len else [(0, length)]
    if perm_size is not None and reuse_len and perm_size > reuse_len:
        raise UserError(f"perm_size {perm_size} must be <= reuse_len {reuse_len}")
    perm_mask = np.zeros((length, length), bool)
    for begin, end in parts:
        size = end - begin if perm_size is None else perm_size
        perm_mask[begin:end, begin:end] = local_permutation(is_target[begin:end], functional[begin:end], size, rng)
    if reuse_len:
        perm_mask[:reuse_len, reuse_len:] = True  # the reused part never sees the new part

    positions = np.flatnonzero(is_target)
    target_mapping = np.zeros((num_predict, length), np.float32)
    target_mapping[np.arange(len(positions)), positions] = 1.0
    target = np.zeros(num_predict, np.int32)
    target[:len(positions)] = tokens[positions]
    weights = np.zeros(num_predict, np.float32)
    weights[:len(positions)] = 1.0
    return {"perm_mask": perm_mask.astype(np.float32), "target_mapping": target_mapping, "target": target,
            "target_weights": weights}
