"""Registers a corpus directory (the builder's output) as one seqio Task per objective.

Task names are `<corpus>_<objective>`, e.g. `sample_prott5_denoise`, for every objective of
`prottrans_jax.data.registry` (each declares its vocabulary, features and preprocessors).
"""

from __future__ import annotations

import json
from pathlib import Path

import seqio
import tensorflow as tf

from prottrans_jax.data import preprocessors, registry

OBJECTIVES = tuple(registry.OBJECTIVES)
STATS_FILE = "stats.json"
FEATURE_DESCRIPTION = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "sequence": tf.io.FixedLenFeature([], tf.string),
    "length": tf.io.FixedLenFeature([], tf.int64),
}


class CorpusSource(seqio.TFExampleDataSource):
    """The builder's TFRecords, with a clear error when the corpus has not been built."""

    def __init__(self, corpus_dir: str):
        self.corpus_dir = str(corpus_dir).rstrip("/")
        super().__init__(
            split_to_filepattern={split: f"{self.corpus_dir}/{split}.tfrecord-*"
                                  for split in ("train", "validation")},
            feature_description=FEATURE_DESCRIPTION)

    def _stats(self) -> dict:
        path = f"{self.corpus_dir}/{STATS_FILE}"
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"{path}: no built corpus here; build it with `python -m tfrecords_builder "
                f"--input FASTA --output_dir {self.corpus_dir}`")
        with tf.io.gfile.GFile(path) as handle:
            return json.load(handle)

    def get_dataset(self, split: str = "train", *args, **kwargs) -> tf.data.Dataset:
        self._stats()
        return super().get_dataset(split, *args, **kwargs)

    def list_shards(self, split: str):
        self._stats()
        return super().list_shards(split)

    def num_input_examples(self, split: str) -> int:
        return int(self._stats()["written"][split])


def register_corpus(name: str, corpus_dir: str | Path,
                    objectives_to_register: tuple[str, ...] | None = None) -> list[str]:
    """Registers `<name>_<objective>` tasks over corpus_dir (every registered objective by
    default); re-registering replaces them."""
    names = []
    for objective_name in objectives_to_register or tuple(registry.OBJECTIVES):
        objective = registry.get_objective(objective_name)
        task_name = f"{name}_{objective.name}"
        seqio.TaskRegistry.remove(task_name)
        seqio.TaskRegistry.add(task_name, source=CorpusSource(str(corpus_dir)),
                               preprocessors=[preprocessors.sequence_to_targets,
                                              preprocessors.tokenize,
                                              *objective.preprocessors()],
                               output_features=objective.output_features(),
                               metric_fns=[])
        registry.remember_task_objective(task_name, objective.name)
        names.append(task_name)
    return names
