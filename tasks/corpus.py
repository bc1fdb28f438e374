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
from prottrans_jax.errors import UserError

OBJECTIVES = tuple(registry.OBJECTIVES)
STATS_FILE = "stats.json"
FEATURE_DESCRIPTION = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "sequence": tf.io.FixedLenFeature([], tf.string),
    "length": tf.io.FixedLenFeature([], tf.int64),
}


class CorpusSource(seqio.TFExampleDataSource):
    """The builder's TFRecords, refused with one line when the corpus is not built, its
    stats.json is unreadable, or a split lacks shards that stats.json says it has (training
    on the rest would lose their proteins silently). TFRecord CRCs are checked as records are
    read (tf.data); a corrupt shard stops training with one line (prottrans_jax/train.py)."""

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
        try:
            with tf.io.gfile.GFile(path) as handle:
                stats = json.load(handle)
            num_shards, written = int(stats["config"]["num_shards"]), stats["written"]
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise UserError(f"{path}: not a complete stats.json ({type(err).__name__}: {err}); rebuild "
                             "the corpus") from None
        for split in ("train", "validation"):
            if not written.get(split):
                continue
            found = set(tf.io.gfile.glob(f"{self.corpus_dir}/{split}.tfrecord-*"))  # one listing
            expected = [f"{self.corpus_dir}/{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"
                        for shard in range(num_shards)]
            missing = [name for name in expected if name not in found]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: missing ({len(missing)} of the {num_shards} {split} "
                                        f"shards that {STATS_FILE} lists): the corpus is incomplete; "
                                        "rebuild or restore it")
        return stats

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
