"""From a seqio task name to fixed-shape, packed batches: what the trainer and demos consume."""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prottrans_jax.data import registry, stream
from prottrans_jax.errors import UserError


def get_task(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture, with the known names in the error when it is missing."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
        raise UserError(f"unknown seqio task or mixture {name!r}; registered: {known} "
                         "(is the module that registers it imported?)") from None


def task_feature_lengths(task: seqio.Task | seqio.Mixture, inputs_length: int,
                         targets_length: int | None = None) -> dict[str, int]:
    """Task feature lengths for one model input length, as the task's objective derives them
    (span corruption: the targets length that never trims a target)."""
    return registry.feature_lengths_for(task, inputs_length, targets_length)


def feature_converter_cls(task: seqio.Task | seqio.Mixture) -> type:
    """The converter of the task's objective (a model brings its own to `get_batches`)."""
    objective = registry.objective_of(task)
    if objective is None:
        raise UserError(f"task {task.name!r} was not registered through tasks.register_corpus: "
                         "pass the model's feature converter")
    return objective.feature_converter_cls


def get_batches(task_name: str, split: str, feature_lengths: Mapping[str, int],
                batch_size: int, *, shuffle: bool = True, seed: int | None = 0,
                pack: bool = True, num_epochs: int | None = 1,
                shard_info: seqio.ShardInfo | None = None,
                converter_cls: type | None = None) -> tf.data.Dataset:
    """Batches of model features (numpy-convertible dicts of [batch_size, length] int32).

    Deterministic for a given seed: crops and masks come from seqio's seeded stateless
    randomness, shuffling from the same seed. `shard_info` gives each host its own part of
    the data (multi-host input). Batches are complete (drop_remainder) so shapes are static.
    `converter_cls` defaults to the task objective's converter. A stream converter (causal
    LM, data/stream.py) lays out its own rows from the whole, untrimmed proteins.
    """
    task = get_task(task_name)
    converter_cls = converter_cls or feature_converter_cls(task)
    if issubclass(converter_cls, stream.StreamFeatureConverter):
        proteins = task.get_dataset(sequence_length=None, split=split, shuffle=shuffle, seed=seed,
                                    num_epochs=num_epochs, shard_info=shard_info, use_cached=False)
        stream_seed = (0 if seed is None else seed, shard_info.index if shard_info else 0)
        return converter_cls(pack=pack).batches(proteins, feature_lengths, batch_size, stream_seed)
    dataset = task.get_dataset(sequence_length=dict(feature_lengths), split=split,
                               shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                               shard_info=shard_info, use_cached=False)
    dataset = converter_cls(pack=pack)(dataset, feature_lengths)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
