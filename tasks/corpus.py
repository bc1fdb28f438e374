"""Registers a corpus directory (the builder's output) as one seqio Task per objective.

Task names are `<corpus>_<objective>`, e.g. `sample_prott5_denoise`. Encoder-decoder
objectives use ProtT5's vocabulary, `bert_mlm` uses ProtBert's.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import seqio
import tensorflow as tf

from prottrans_jax.data import objectives, preprocessors
from prottrans_jax.vocab import prot_bert_vocabulary, prot_t5_vocabulary

OBJECTIVES = ("prott5_denoise", "t5_span_corruption", "bert_mlm")
ENCODER_DECODER_OBJECTIVES = ("prott5_denoise", "t5_span_corruption")
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


def output_features(objective: str) -> dict[str, seqio.Feature]:
    if objective in ENCODER_DECODER_OBJECTIVES:
        vocabulary = prot_t5_vocabulary()
        return {"inputs": seqio.Feature(vocabulary, add_eos=True),
                "targets": seqio.Feature(vocabulary, add_eos=True)}
    if objective == "bert_mlm":
        vocabulary = prot_bert_vocabulary()  # [CLS]/[SEP] are added by the objective
        return {"inputs": seqio.Feature(vocabulary, add_eos=False),
                "targets": seqio.Feature(vocabulary, add_eos=False),
                "mlm_weights": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False)}
    raise ValueError(f"unknown objective {objective!r}; known: {OBJECTIVES}")


def _preprocessors(objective: str) -> list:
    common = [preprocessors.sequence_to_targets, preprocessors.tokenize]
    if objective == "prott5_denoise":
        return common + [preprocessors.random_crop, objectives.prott5_denoise,
                         seqio.preprocessors.append_eos_after_trim]
    if objective == "t5_span_corruption":
        return common + [preprocessors.random_crop_for_span_corruption,
                         objectives.t5_span_corruption, seqio.preprocessors.append_eos_after_trim]
    if objective == "bert_mlm":
        return common + [functools.partial(preprocessors.random_crop, reserved=2),
                         objectives.bert_mlm]
    raise ValueError(f"unknown objective {objective!r}; known: {OBJECTIVES}")


def register_corpus(name: str, corpus_dir: str | Path,
                    objectives_to_register: tuple[str, ...] = OBJECTIVES) -> list[str]:
    """Registers `<name>_<objective>` tasks over corpus_dir; re-registering replaces them."""
    names = []
    for objective in objectives_to_register:
        task_name = f"{name}_{objective}"
        seqio.TaskRegistry.remove(task_name)
        seqio.TaskRegistry.add(task_name, source=CorpusSource(str(corpus_dir)),
                               preprocessors=_preprocessors(objective),
                               output_features=output_features(objective),
                               metric_fns=[])
        names.append(task_name)
    return names
