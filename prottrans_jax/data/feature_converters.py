"""Feature converters: task features -> the model's packed, fixed-shape batch features.

Encoder-decoder models (ProtT5) use seqio's `EncDecFeatureConverter` unchanged (T5X's);
encoder-only masked language models (ProtBert, ProtAlbert, ProtElectra) use
`EncoderMLMFeatureConverter`, which carries the objective's own loss weights, because BERT
also scores the 10% random and 10% unchanged positions that seqio's `EncoderFeatureConverter`
(loss where input == [MASK]) would miss.

Packing puts several proteins in one row; `*_segment_ids` (1, 2, ...; 0 = padding) keep
attention within a protein and `*_positions` restart at 0 for each protein.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from prottrans_jax.data.objectives import CHOSEN

EncDecFeatureConverter = seqio.EncDecFeatureConverter


class EncoderMLMFeatureConverter(seqio.FeatureConverter):
    """{"inputs", "targets", "mlm_weights"} -> encoder_{input,target}_tokens, loss weights."""

    TASK_FEATURES = {
        "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "mlm_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        "encoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "encoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "encoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
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
                         "encoder_loss_weights": tf.cast(
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
