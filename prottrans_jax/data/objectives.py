"""Pre-training objectives as seqio preprocessors (tf.data, stateless randomness).

Written in this project: span corruption lives in the `t5` package, which replaces seqio and
TFDS with old nightlies when installed. Each objective takes tokenised, cropped "targets"
(no EOS yet) and produces the task features; seqio's `append_eos_after_trim` runs after it.

- `prott5_denoise`: ProtT5's real objective (agemagician/ProtTrans issues #93, #137, #148):
  residues chosen i.i.d. with probability 0.15, each replaced by a sentinel (<extra_id_0>,
  <extra_id_1>, ... in order; optionally one mask token for all); target = the whole original
  sequence. Inputs and targets have equal length, so position i of the decoder target is the
  residue hidden at position i of the encoder input.
- `t5_span_corruption`: T5's objective: noise density 0.15, mean noise span length 3, one
  unique sentinel per span in the inputs; targets = sentinel + span, for each span.
- `bert_mlm`: BERT's objective: residues chosen with probability 0.15; of those 80% become
  [MASK], 10% a random residue, 10% stay; loss only on chosen positions ("mlm_weights").

Sentinel k is <extra_id_{k mod 100}>: sentinels repeat only when one example holds more than
100 spans or masks (about 2,000 residues for span corruption, about 670 for the denoiser at
15%; ProtT5 trained on 512-residue crops).
"""

from __future__ import annotations

import gin
import seqio
import tensorflow as tf

from prottrans_jax.vocab import ProteinVocabulary


def _vocabulary(output_features, key: str = "targets") -> ProteinVocabulary:
    vocabulary = output_features[key].vocabulary
    if not isinstance(vocabulary, ProteinVocabulary):
        raise TypeError(f"objective needs a ProteinVocabulary for {key!r}, got {vocabulary!r}")
    return vocabulary


def _sentinels(vocabulary: ProteinVocabulary, index: tf.Tensor) -> tf.Tensor:
    """Sentinel ids for 0-based sentinel indices (<extra_id_0> is index 0)."""
    table = tf.constant(vocabulary.sentinel_ids)
    return tf.gather(table, tf.math.floormod(index, vocabulary.num_sentinels))


def random_spans_noise_mask(length: tf.Tensor, noise_density: float,
                            mean_noise_span_length: float, seed) -> tf.Tensor:
    """Boolean mask of `length` with about noise_density * length noise tokens in spans.

    T5 semantics: the number of noise tokens is round(length * noise_density) (at least 1, at
    most length - 1), split into round(noise / mean span) spans; noise and non-noise span
    lengths are random positive partitions, and the mask starts with a non-noise span.
    """
    length = tf.cast(length, tf.int32)
    orig_length = length
    length = tf.maximum(length, 2)  # a one-token input still gets one noise token
    num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    num_noise = tf.clip_by_value(num_noise, 1, length - 1)
    num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length),
                        tf.int32)
    num_spans = tf.maximum(num_spans, 1)
    num_nonnoise = length - num_noise
    seeds = tf.random.experimental.stateless_split(seed, 2)

    def random_partition(num_items, seed_):
        """num_items split into num_spans random positive parts."""
        first_in_segment = tf.pad(
            _stateless_shuffle(tf.cast(tf.range(num_items - 1) < num_spans - 1, tf.int32),
                               seed_), [[1, 0]])
        segment_id = tf.cumsum(first_in_segment)
        return tf.math.unsorted_segment_sum(tf.ones_like(segment_id), segment_id, num_spans)

    noise_lengths = random_partition(num_noise, seeds[0])
    nonnoise_lengths = random_partition(num_nonnoise, seeds[1])
    interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
    span_starts = tf.cumsum(interleaved)[:-1]
    span_start_indicator = tf.math.unsorted_segment_sum(
        tf.ones_like(span_starts), span_starts, length)
    span_num = tf.cumsum(span_start_indicator)
    is_noise = tf.equal(span_num % 2, 1)
    return is_noise[:orig_length]


def _stateless_shuffle(values: tf.Tensor, seed) -> tf.Tensor:
    keys = tf.random.stateless_uniform(tf.shape(values), seed=seed)
    return tf.gather(values, tf.argsort(keys))


def _noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary):
    """Each noise span -> its sentinel; the rest of the span is dropped."""
    previous_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
    first_noise = tf.logical_and(noise_mask, tf.logical_not(previous_is_noise))
    later_noise = tf.logical_and(noise_mask, previous_is_noise)
    span_index = tf.cumsum(tf.cast(first_noise, tf.int32)) - 1
    tokens = tf.where(first_noise, _sentinels(vocabulary, span_index), tokens)
    return tf.boolean_mask(tokens, tf.logical_not(later_noise))


def span_corruption_lengths(raw_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(inputs, targets) lengths, EOS included, after span corruption of raw_length tokens."""
    num_noise = min(max(int(round(raw_length * noise_density)), 1), raw_length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return raw_length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_raw_length(inputs_length: int, noise_density: float = 0.15,
                               mean_noise_span_length: float = 3.0) -> int:
    """Longest raw crop whose corrupted inputs (EOS included) fit in inputs_length.

    Use the matching targets length, `span_corruption_lengths(raw)[1]`, as the task's
    "targets" feature length so that no target is ever trimmed.
    """
    raw = 2
    while span_corruption_lengths(raw + 1, noise_density, mean_noise_span_length)[0] \
            <= inputs_length:
        raw += 1
    return raw


@gin.configurable
def t5_span_corruption(dataset: tf.data.Dataset, output_features,
                       noise_density: float = 0.15, mean_noise_span_length: float = 3.0
                       ) -> tf.data.Dataset:
    """T5 span corruption of "targets" into "inputs" and "targets" (no EOS yet)."""
    vocabulary = _vocabulary(output_features)

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(features, seed):
        tokens = features["targets"]
        noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density,
                                             mean_noise_span_length, seed)
        return {**features,
                "inputs": _noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
                "targets": _noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask),
                                                          vocabulary)}

    return corrupt(dataset)


@gin.configurable
def prott5_denoise(dataset: tf.data.Dataset, output_features, noise_density: float = 0.15,
                   single_mask_token: bool = False) -> tf.data.Dataset:
    """ProtT5's objective: i.i.d. residues -> sentinels in "inputs"; "targets" unchanged."""
    vocabulary = _vocabulary(output_features)

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(features, seed):
        tokens = features["targets"]
        chosen = tf.random.stateless_uniform(tf.shape(tokens), seed=seed) < noise_density
        if single_mask_token:
            replacement = tf.fill(tf.shape(tokens), vocabulary.mask_id)
        else:
            replacement = _sentinels(vocabulary, tf.cumsum(tf.cast(chosen, tf.int32)) - 1)
        return {**features, "inputs": tf.where(chosen, replacement, tokens), "targets": tokens}

    return corrupt(dataset)


# "mlm_weights" codes: seqio's packing finds a feature's length by counting non-zero values, so
# the per-position flag must never be 0 inside a sequence (0 is padding).
NOT_CHOSEN, CHOSEN = 1, 2


@gin.configurable
def bert_mlm(dataset: tf.data.Dataset, output_features, mask_rate: float = 0.15,
             mask_token_fraction: float = 0.8, random_token_fraction: float = 0.1
             ) -> tf.data.Dataset:
    """BERT masking with [CLS] ... [SEP] around the residues; loss weights in "mlm_weights"."""
    vocabulary = _vocabulary(output_features)
    residue_ids = tf.constant(vocabulary.residue_ids)

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(features, seed):
        tokens = features["targets"]
        seeds = tf.random.experimental.stateless_split(seed, 3)
        chosen = tf.random.stateless_uniform(tf.shape(tokens), seed=seeds[0]) < mask_rate
        action = tf.random.stateless_uniform(tf.shape(tokens), seed=seeds[1])
        random_residues = tf.gather(residue_ids, tf.random.stateless_uniform(
            tf.shape(tokens), seed=seeds[2], maxval=tf.size(residue_ids), dtype=tf.int32))
        corrupted = tf.where(action < mask_token_fraction, vocabulary.mask_id,
                             tf.where(action < mask_token_fraction + random_token_fraction,
                                      random_residues, tokens))
        inputs = tf.where(chosen, corrupted, tokens)
        cls, sep = [vocabulary.bos_id], [vocabulary.eos_id]
        return {**features,
                "inputs": tf.concat([cls, inputs, sep], 0),
                "targets": tf.concat([cls, tokens, sep], 0),
                "mlm_weights": tf.concat([[NOT_CHOSEN], tf.where(chosen, CHOSEN, NOT_CHOSEN),
                                          [NOT_CHOSEN]], 0)}

    return corrupt(dataset)
