"""XLNet's pre-training input with memory: permutation-LM examples cut from a stream of proteins.

zihangdai/xlnet's `create_tfrecords` layout, per batch row. The row's stream `s` holds proteins
one after another, each ended by `<eod>` (XLNet's end of document, an ordinary token that may be
predicted), laid out as data/stream.py lays out Transformer-XL's rows. Example t of the row reads
`s` at p = t * R (R = `permutation_lm_settings.reuse_len`):

    s[p : p + R]  ++  s[p + R : p + L - 2]  ++  <sep> <cls>
    reused part       new part                  XLNet's framing

The reused part of example t + 1 is the text right after the reused part of example t. The
model keeps each layer's input over the reused part as memory (`XLNetConfig.reuse_len` = R,
`mem_len` of them: models/xlnet.py), so the memory is the context right before the next
example, as in XLNet. Each part is permuted on its own, and the reused part never sees the
new part (data/permutation_lm.py): that is what makes its hidden states valid memory. The new
part's text is seen again, as the next example's reused part (XLNet's overlap).

Not reproduced, because a stream cannot do them and ProtXLNet's use of them is unverified:
- XLNet's A / B sentence pairs, with a random B half of the time. The new part here is the
  continuation of the text, as in XLNet's "B follows A" case, but without the cut. Token types
  are 0 for every position but <cls> (2), as in one-protein examples.
- bi_data's backward half (each row's stream read in reverse). The model's `bi_data` flag
  only changes relative distances, so `init_carry` refuses it with memory.

Randomness: row r of batch b draws its targets and factorisation order from numpy's
generator seeded with (seed, host shard, b, r). A resumed run that skips b batches draws the
same (`training.from_batch`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prottrans_jax.data import objectives
from prottrans_jax.data import permutation_lm as plm
from prottrans_jax.data.objectives import CHOSEN, NOT_CHOSEN, TYPE_CLS, TYPE_SEQUENCE
from prottrans_jax.data.stream import StreamFeatureConverter, stream_windows
from prottrans_jax.errors import UserError

EOD_PIECE = "<eod>"
# (name, shape in units of (L, num_predict)): the model features, as PermutationLMFeatureConverter's,
# plus which targets are residues (not <eod>): the permuted-residue accuracy of the demo.
_FEATURES = {"encoder_input_tokens": ("L",), "attention_mask": ("L",), "token_types": ("L",),
             "perm_mask": ("L", "L"), "target_mapping": ("m", "L"), "target_tokens": ("m",),
             "target_weights": ("m",), "target_masked_weights": ("m",)}


def stream_example(window: np.ndarray, flags: np.ndarray, num_predict: int, rng: np.random.Generator,
                   settings: Mapping) -> dict[str, np.ndarray]:
    """One row's permutation-LM features (int32) from its L - 2 stream tokens `window` and their
    "targets_masked" flags (CHOSEN at residues); `settings` are `permutation_lm_settings`'."""
    tokens = np.concatenate([window, [plm.SEP_ID, plm.CLS_ID]]).astype(np.int32)
    features = plm.permutation_lm_features(
        tokens, num_predict, rng, reuse_len=settings["reuse_len"], perm_size=settings["perm_size"],
        mask_alpha=settings["mask_alpha"], mask_beta=settings["mask_beta"], max_gram=settings["max_gram"])
    residue = np.concatenate([np.asarray(flags) == CHOSEN, [False, False]])
    positions = np.argmax(features["target_mapping"], axis=1)  # 0 in padding rows, whose weight is 0
    types = np.full(len(tokens), TYPE_SEQUENCE, np.int32)
    types[-1] = TYPE_CLS
    weights = features["target_weights"].astype(np.int32)
    return {"encoder_input_tokens": tokens, "attention_mask": np.ones(len(tokens), np.int32), "token_types": types,
            "perm_mask": features["perm_mask"].astype(np.int32),
            "target_mapping": features["target_mapping"].astype(np.int32), "target_tokens": features["target"],
            "target_weights": weights, "target_masked_weights": weights * residue[positions]}


def checked_reuse_len(length: int) -> int:
    """`permutation_lm_settings.reuse_len`, which must leave a new part in `length` positions."""
    reuse_len = objectives.permutation_lm_settings()["reuse_len"]
    if not 0 < reuse_len < length - 2:
        raise UserError(f"permutation_lm_settings.reuse_len={reuse_len}: XLNet's memory needs a reused part, "
                        f"0 < reuse_len < {length - 2} (the length {length} less <sep> <cls>)")
    return reuse_len


class PermutationStreamFeatureConverter(StreamFeatureConverter):
    """{"targets", "targets_masked"} per protein (each ended by <eod>) -> XLNet's permutation-LM
    rows of a stream (module docstring): PermutationLMFeatureConverter's model features plus
    `target_masked_weights`, every row full (attention_mask all 1)."""

    MODEL_FEATURES = {name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for name in _FEATURES}

    def batches(self, proteins: tf.data.Dataset, task_feature_lengths: Mapping[str, int],
                batch_size: int, seed: Sequence[int] = (0,)) -> tf.data.Dataset:
        length = int(task_feature_lengths["targets"])
        reuse_len = checked_reuse_len(length)
        settings = objectives.permutation_lm_settings()  # read here: gin is not for tf.data's threads
        num_predict = objectives.permutation_lm_num_predict(length)
        sizes = {"L": length, "m": num_predict}
        window_spec = tf.TensorSpec((batch_size, length - 2), tf.int32)
        windows = tf.data.Dataset.from_generator(
            lambda: enumerate(stream_windows(proteins.as_numpy_iterator(), batch_size, length - 2, reuse_len)),
            output_signature=(tf.TensorSpec((), tf.int64), (window_spec, window_spec)))

        def features(index, tokens, flags):
            entropy = lambda r: [int(s) & 0xFFFFFFFF for s in (*seed, index, r)]  # noqa: E731 (any seed)
            rows = [stream_example(tokens[r], flags[r], num_predict, np.random.default_rng(entropy(r)), settings)
                    for r in range(batch_size)]
            return tuple(np.stack([row[name] for row in rows]) for name in _FEATURES)

        def to_features(index, window):
            values = tf.numpy_function(features, [index, *window], [tf.int32] * len(_FEATURES), stateful=False)
            out = dict(zip(_FEATURES, values))
            for name, shape in _FEATURES.items():
                out[name].set_shape((batch_size, *(sizes[axis] for axis in shape)))
            return out

        return windows.map(to_features, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = int(task_feature_lengths["targets"])
        num_predict = objectives.permutation_lm_num_predict(length)
        return {name: length if shape[0] == "L" else num_predict for name, shape in _FEATURES.items()}


def end_proteins_with_eod(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """Appends <eod> to each protein's "targets" (NOT_CHOSEN to its "targets_masked"): the
    separator of XLNet's stream."""
    vocabulary = output_features["targets"].vocabulary
    if EOD_PIECE not in vocabulary.pieces:
        raise UserError(f"permutation_lm_stream needs an {EOD_PIECE} token; vocabulary {vocabulary.name!r} has none")
    eod = vocabulary.pieces.index(EOD_PIECE)

    def append(example):
        targets, flags = example["targets"], example["targets_masked"]
        return {**example, "targets": tf.concat([targets, tf.constant([eod], targets.dtype)], 0),
                "targets_masked": tf.concat([flags, tf.constant([NOT_CHOSEN], flags.dtype)], 0)}

    return dataset.map(append, num_parallel_calls=tf.data.AUTOTUNE)
