"""Transformer-XL's input layout: each batch row is one long stream of proteins, in order.

Proteins follow one another, each ended by the separator (`<eos>`: the paper's text layout,
one protein per line), and each row is cut into fixed-length segments: row r of step t + 1
continues row r of step t, so a model that carries memory across steps (models/base.py:
`init_carry`) attends to the end of the previous segment of its own row.

How proteins become rows (`stream_rows`): a row that lacks tokens for the next segment takes
the next protein of this host's stream, rows in order (Transformer-XL's LMShuffledIterator,
its iterator for corpora of independent sentences, such as lm1b). Every row then holds whole
proteins one after another, and a row's buffer never exceeds one segment plus one protein.
The kimiyoung `batchify` (the concatenated corpus cut into `batch_size` contiguous parts)
needs the corpus length up front and restarts every row at an epoch end; this layout is the
same stream per row on an endless, reshuffled corpus. Inputs are `s[i : i + L]`, targets
`s[i + 1 : i + L + 1]` of a row's stream `s`, so consecutive segments share one token.

Deterministic: the host's proteins come from seqio (seeded shuffle, `shard_info`: each
process reads its own proteins, hence its own rows) and the rows are filled in a fixed
order, so a resumed run skips the batches it consumed (`batches_consumed`, training.py) and
continues the same rows. Evaluation reads the split once, in order, and stops at the first
batch that cannot be filled.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prottrans_jax.data.objectives import CHOSEN
from prottrans_jax.errors import UserError

_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
MODEL_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                  "decoder_masked_weights")


def stream_windows(proteins: Iterable[Mapping[str, np.ndarray]], rows: int, window: int, stride: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, flags), each (rows, window) int32, until the proteins end: row r's stream `s`
    (its proteins' "targets" one after another, and their "targets_masked") read as
    `s[p : p + window]` at p = 0, stride, 2 * stride, ... (the layout of the module docstring:
    a row short of tokens takes the host's next protein, rows in order)."""
    if rows <= 0 or window <= 0 or stride <= 0:
        raise UserError(f"a stream needs positive rows, window and stride, got {rows}, {window} and {stride}")
    tokens = [np.zeros((0,), np.int32) for _ in range(rows)]
    flags = [np.zeros((0,), np.int32) for _ in range(rows)]
    proteins = iter(proteins)
    while True:
        for row in range(rows):
            while tokens[row].size < window:
                protein = next(proteins, None)
                if protein is None:
                    return
                tokens[row] = np.concatenate([tokens[row], np.asarray(protein["targets"], np.int32)])
                flags[row] = np.concatenate([flags[row], np.asarray(protein["targets_masked"], np.int32)])
        yield np.stack([t[:window] for t in tokens]), np.stack([f[:window] for f in flags])
        tokens = [t[stride:] for t in tokens]
        flags = [f[stride:] for f in flags]


def stream_rows(proteins: Iterable[Mapping[str, np.ndarray]], rows: int, length: int
                ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `rows` x `length` next-token features from tokenised proteins ("targets",
    the separator included, and "targets_masked", CHOSEN at residues), until the proteins end.

    `decoder_masked_weights` marks the targets that are residues (not the separator): the
    next-residue accuracy the demo compares with the frequency baseline.
    """
    if length <= 0:
        raise UserError(f"a stream needs a positive length, got {length}")
    for window, flags in stream_windows(proteins, rows, length + 1, length):
        yield {"decoder_input_tokens": window[:, :-1], "decoder_target_tokens": window[:, 1:],
               "decoder_loss_weights": np.ones((rows, length), np.int32),
               "decoder_masked_weights": (flags[:, 1:] == CHOSEN).astype(np.int32)}


class StreamFeatureConverter(seqio.FeatureConverter):
    """{"targets", "targets_masked"} per protein -> the rows of a causal LM stream.

    A seqio converter maps examples one by one and leaves batching to the caller; a stream's
    rows depend on the batch size, so `batches` lays them out itself (`data/dataset.py` calls
    it for any subclass). `pack` has no meaning here: rows are always full.
    """

    TASK_FEATURES = {"targets": _INT, "targets_masked": _INT}
    MODEL_FEATURES = {name: _INT for name in MODEL_FEATURES}
    PACKING_FEATURE_DTYPES = {}

    def batches(self, proteins: tf.data.Dataset, task_feature_lengths: Mapping[str, int],
                batch_size: int, seed: Sequence[int] = (0,)) -> tf.data.Dataset:
        """The rows as batches; `seed` (the run's seed and the host's shard) seeds what a
        subclass draws at random (next-token rows draw nothing)."""
        del seed
        length = int(task_feature_lengths["targets"])
        spec = {name: tf.TensorSpec((batch_size, length), tf.int32) for name in MODEL_FEATURES}
        dataset = tf.data.Dataset.from_generator(
            lambda: stream_rows(proteins.as_numpy_iterator(), batch_size, length), output_signature=spec)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _convert_features(self, ds, task_feature_lengths):
        raise NotImplementedError("a stream is laid out by batches(), which knows the batch size")

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        return {name: task_feature_lengths["targets"] for name in MODEL_FEATURES}


def mark_residues(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """"targets_masked": CHOSEN at every residue (the separator, appended after, gets the
    flag's EOS, NOT_CHOSEN): which next tokens are residues."""
    return dataset.map(lambda ex: {**ex, "targets_masked": tf.fill(tf.shape(ex["targets"]), CHOSEN)},
                       num_parallel_calls=tf.data.AUTOTUNE)
