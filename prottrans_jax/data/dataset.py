"""From a seqio task name to fixed-shape, packed batches: what the trainer and demos consume."""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prottrans_jax.data.feature_converters import EncDecFeatureConverter, EncoderMLMFeatureConverter
from prottrans_jax.data.objectives import span_corruption_lengths, span_corruption_raw_length


def get_task(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture, with the known names in the error when it is missing."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
        raise ValueError(f"unknown seqio task or mixture {name!r}; registered: {known} "
                         "(is the module that registers it imported?)") from None


def is_encoder_only(task: seqio.Task | seqio.Mixture) -> bool:
    return "mlm_weights" in task.output_features


def feature_converter(task: seqio.Task | seqio.Mixture, pack: bool = True
                      ) -> seqio.FeatureConverter:
    if is_encoder_only(task):
        return EncoderMLMFeatureConverter(pack=pack)
    return EncDecFeatureConverter(pack=pack)


def task_feature_lengths(task: seqio.Task | seqio.Mixture, inputs_length: int,
                         targets_length: int | None = None) -> dict[str, int]:
    """Task feature lengths for one model input length.

    Encoder-only tasks use one length for all features; ProtT5's denoiser has targets as long
    as inputs; span corruption's targets default to the length that never trims a target.
    """
    if is_encoder_only(task):
        return {"inputs": inputs_length, "targets": inputs_length, "mlm_weights": inputs_length}
    if targets_length is None:
        if task.name.endswith("t5_span_corruption"):
            targets_length = span_corruption_lengths(span_corruption_raw_length(inputs_length))[1]
        else:
            targets_length = inputs_length
    return {"inputs": inputs_length, "targets": targets_length}


def get_batches(task_name: str, split: str, feature_lengths: Mapping[str, int],
                batch_size: int, *, shuffle: bool = True, seed: int | None = 0,
                pack: bool = True, num_epochs: int | None = 1,
                shard_info: seqio.ShardInfo | None = None) -> tf.data.Dataset:
    """Batches of model features (numpy-convertible dicts of [batch_size, length] int32).

    Deterministic for a given seed: crops and masks come from seqio's seeded stateless
    randomness, shuffling from the same seed. `shard_info` gives each host its own part of
    the data (multi-host input). Batches are complete (drop_remainder) so shapes are static.
    """
    task = get_task(task_name)
    dataset = task.get_dataset(sequence_length=dict(feature_lengths), split=split,
                               shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                               shard_info=shard_info, use_cached=False)
    dataset = feature_converter(task, pack)(dataset, feature_lengths)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
