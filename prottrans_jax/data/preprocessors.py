"""Corpus-level seqio preprocessors: read the builder's records and crop them on the fly."""

from __future__ import annotations

import seqio
import tensorflow as tf

from prottrans_jax.data.objectives import span_corruption_feature_lengths


def sequence_to_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Builder record -> {"targets": "M K T ..."}: every objective starts from the targets."""
    return dataset.map(lambda ex: {"targets": ex["sequence"]},
                       num_parallel_calls=tf.data.AUTOTUNE)


def tokenize(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """seqio's tokenizer without the "*_pretokenized" copies (packing would drop them)."""
    return seqio.preprocessors.tokenize(dataset, output_features, copy_pretokenized=False)


def _crop(tokens: tf.Tensor, max_length, seed) -> tf.Tensor:
    """A random window of at most max_length tokens (the whole sequence if it fits)."""
    excess = tf.maximum(tf.size(tokens) - max_length, 0)
    start = tf.random.stateless_uniform([], seed=seed, maxval=excess + 1, dtype=tf.int32)
    return tokens[start:start + max_length]


def random_crop(dataset: tf.data.Dataset, sequence_length, reserved: int = 1,
                feature_key: str = "inputs") -> tf.data.Dataset:
    """Crops "targets" to a random window of sequence_length[feature_key] - reserved tokens.

    ProtT5 and ProtBert cropped long proteins on the fly, so each epoch sees another window;
    `reserved` leaves room for EOS (1) or [CLS] + [SEP] (2).
    """
    max_length = sequence_length[feature_key] - reserved

    @seqio.map_over_dataset(num_seeds=1)
    def crop(features, seed):
        return {**features, "targets": _crop(features["targets"], max_length, seed)}

    return crop(dataset)


def random_crop_for_span_corruption(dataset: tf.data.Dataset, sequence_length) -> tf.data.Dataset:
    """Crops to the raw length whose span-corrupted inputs exactly fit the inputs length
    (at the noise settings bound in `span_corruption_settings`)."""
    raw, _ = span_corruption_feature_lengths(sequence_length["inputs"])

    @seqio.map_over_dataset(num_seeds=1)
    def crop(features, seed):
        return {**features, "targets": _crop(features["targets"], raw, seed)}

    return crop(dataset)
