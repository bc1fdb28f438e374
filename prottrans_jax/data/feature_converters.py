"""Feature converters: task features -> the model's packed, fixed-shape batch features.

Each model declares the converter its batches come from (`model.feature_converter_cls`), and
a converter's `TASK_FEATURES` say what a task must provide, so a task of another objective is
refused before training starts (`check_task_fits`).

- `EncDecMaskedFeatureConverter` (ProtT5): seqio's `EncDecFeatureConverter` (T5X's), plus the
  objective's hidden positions, "targets_masked" -> `decoder_masked_weights`.
- `EncoderMLMFeatureConverter` (ProtBert, ProtAlbert, ProtElectra) carries the objective's
  own loss weights, because BERT also scores the 10% random and 10% unchanged positions that
  seqio's `EncoderFeatureConverter` (loss where input == [MASK]) would miss, and which of
  them became [MASK] (`encoder_masked_weights`).
- `PermutationLMFeatureConverter` (ProtXLNet): XLNet's permutation-LM features, one protein per
  row, never packed (a factorisation order spans one example).

Packing puts several proteins in one row; `*_segment_ids` (1, 2, ...; 0 = padding) keep
attention within a protein and `*_positions` restart at 0 for each protein.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prottrans_jax.data.objectives import CHOSEN, NOT_CHOSEN
from prottrans_jax.errors import UserError

_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


class EncDecMaskedFeatureConverter(seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder converter that also carries which targets were hidden."""

    TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES, "targets_masked": _INT}
    MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES,
                      "decoder_masked_weights": _INT}

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
        converted = dict(super()._convert_example(features))
        converted["decoder_masked_weights"] = tf.cast(
            tf.equal(features["targets_masked"], CHOSEN), tf.int32)
        return converted

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> Mapping[str, int]:
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["decoder_masked_weights"] = task_feature_lengths["targets"]
        return lengths


class EncoderMLMFeatureConverter(seqio.FeatureConverter):
    """{"inputs", "targets", "mlm_weights"} -> encoder_{input,target}_tokens, loss weights."""

    TASK_FEATURES = {"inputs": _INT, "targets": _INT, "mlm_weights": _INT}
    MODEL_FEATURES = {
        "encoder_input_tokens": _INT,
        "encoder_target_tokens": _INT,
        "encoder_loss_weights": _INT,
        "encoder_masked_weights": _INT,
    }
    PACKING_FEATURE_DTYPES = {
        "encoder_segment_ids": tf.int32,
        "encoder_positions": tf.int32,
    }

    def _convert_features(self, ds: tf.data.Dataset,
                          task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        ds = self._pack_or_pad(ds, task_feature_lengths)

        def convert(features):
            converted = {"encoder_input_tokens": features["inputs"],
                         "encoder_target_tokens": features["targets"],
                         "encoder_loss_weights": tf.cast(features["mlm_weights"] > NOT_CHOSEN,
                                                         tf.int32),
                         "encoder_masked_weights": tf.cast(
                             tf.equal(features["mlm_weights"], CHOSEN), tf.int32)}
            if self.pack:
                converted["encoder_segment_ids"] = features["inputs_segment_ids"]
                converted["encoder_positions"] = features["inputs_positions"]
            return converted

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> Mapping[str, int]:
        length = task_feature_lengths["inputs"]
        names = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES)
                                             if self.pack else [])
        return {name: length for name in names}


_MATRIX = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=2)
# task feature -> (model feature, spec)
_PERMUTATION_LM = {"inputs": ("encoder_input_tokens", _INT), "input_mask": ("attention_mask", _INT),
                   "token_types": ("token_types", _INT), "perm_mask": ("perm_mask", _MATRIX),
                   "target_mapping": ("target_mapping", _MATRIX), "targets": ("target_tokens", _INT),
                   "target_weights": ("target_weights", _INT)}


class PermutationLMFeatureConverter(seqio.FeatureConverter):
    """`objectives.permutation_lm`'s features -> the XLNet model's, fixed shapes (L, m):

    encoder_input_tokens (L), attention_mask (L, 1 = real token), token_types (L), perm_mask
    (L, L, 1 = may not attend), target_mapping (m, L), target_tokens (m), target_weights (m).

    Always unpacked, whatever `pack` says (`train.pack` is every family's one switch): a
    permutation mask is per example, and the objective pads each example itself.
    """

    TASK_FEATURES = {name: spec for name, (_, spec) in _PERMUTATION_LM.items()}
    MODEL_FEATURES = {model_name: spec for model_name, spec in _PERMUTATION_LM.values()}
    PACKING_FEATURE_DTYPES = {}

    def __init__(self, pack: bool = False, **kwargs):
        del pack  # never packed (class docstring)
        super().__init__(pack=False, **kwargs)

    def _convert_features(self, ds: tf.data.Dataset,
                          task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        ds = self._pack_or_pad(ds, task_feature_lengths)
        return ds.map(lambda features: {_PERMUTATION_LM[k][0]: features[k] for k in self.TASK_FEATURES},
                      num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> Mapping[str, int]:
        return {_PERMUTATION_LM[k][0]: task_feature_lengths[k] for k in self.TASK_FEATURES}


def check_task_fits(task_name: str, task_features, converter_cls: type, model_name: str,
                    objective=None) -> None:
    """Raises UserError (one line) unless the task provides exactly the converter's features
    and, for a task of a registered `objective` (data/registry.py), that objective lays its
    batches out with the same converter: the features alone can agree where the layouts do
    not (a causal-LM stream and XLNet's permutation stream read the same proteins)."""
    wanted, have = set(converter_cls.TASK_FEATURES), set(task_features)
    if wanted != have:
        raise UserError(
            f"task {task_name!r} has features {sorted(have)}, but {model_name} reads "
            f"{sorted(wanted)} through {converter_cls.__name__}: choose a task of this model's "
            "objective, or the model of this task's objective")
    if objective is not None and objective.feature_converter_cls is not converter_cls:
        raise UserError(f"task {task_name!r} is of objective {objective.name!r}, laid out by "
                        f"{objective.feature_converter_cls.__name__}, but {model_name} reads batches "
                        f"through {converter_cls.__name__}: choose a task of this model's objective")
