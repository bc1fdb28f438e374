"""Pre-training objectives as seqio preprocessors (tf.data, stateless randomness).

Written in this project: span corruption lives in the `t5` package, which replaces seqio and
TFDS with old nightlies when installed. Each objective takes tokenised, cropped "targets"
(no EOS yet) and produces the task features; seqio's `append_eos_after_trim` runs after it.

- `prott5_denoise`: ProtT5's real objective (agemagician/ProtTrans issues #93, #137, #148):
  residues chosen i.i.d. with probability 0.15, each replaced by a sentinel (<extra_id_0>,
  <extra_id_1>, ... in order; optionally one mask token for all, as ProtT5-EvoTuning does);
  target = the whole original sequence. Inputs and targets have equal length, so position i
  of the decoder target is the residue hidden at position i of the encoder input.
- `t5_span_corruption`: T5's objective: noise density 0.15, mean noise span length 3, one
  unique sentinel per span in the inputs; targets = sentinel + span, for each span. Both
  numbers are bound once, in `span_corruption_settings`: the crop, the corruption and the
  task's targets length all read them there.
- `bert_mlm`: BERT's objective: residues chosen with probability 0.15; of those 80% become
  [MASK], 10% a random token, 10% stay; loss only on chosen positions ("mlm_weights", which
  also tells which of them became [MASK]); optionally at most `max_predictions_per_seq` of
  them (ProtAlbert's 20). `albert_mlm` (data/registry.py) is the same over ALBERT's table.
- `electra_mlm`: ELECTRA's generator input: as `bert_mlm` with 85% [MASK], 15% unchanged.
- `permutation_lm`: XLNet's objective (data/permutation_lm.py): a factorisation order per
  protein, partial prediction of `num_predict` targets (the "targets" feature length) in
  XLNet's framing `residues <sep> <cls>`, padded to the "inputs" length.

Every objective says explicitly which target positions it hid (`targets_masked` for the T5
objectives, `mlm_weights` for BERT's, coded NOT_CHOSEN / CHOSEN), so masked-token metrics
never have to be guessed back from token ids.

Sentinel k is <extra_id_{k mod 100}>: sentinels repeat only when one example holds more than
100 spans or masks (about 2,000 residues for span corruption, about 670 for the denoiser at
15%; ProtT5 trained on 512-residue crops).
"""

from __future__ import annotations

import gin
import numpy as np
import seqio
import tensorflow as tf

from prottrans_jax.data import permutation_lm as plm
from prottrans_jax.errors import UserError
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


@gin.configurable
def span_corruption_settings(noise_density: float = 0.15,
                             mean_noise_span_length: float = 3.0) -> tuple[float, float]:
    """(noise density, mean noise span length) of T5 span corruption, bound in gin once."""
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise UserError(f"span_corruption_settings: need 0 < noise_density < 1 and "
                         f"mean_noise_span_length >= 1, got {noise_density}, "
                         f"{mean_noise_span_length}")
    return float(noise_density), float(mean_noise_span_length)


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


def span_corruption_feature_lengths(inputs_length: int) -> tuple[int, int]:
    """(raw crop length, targets length) for an inputs length, at the bound settings: the
    crop fits the inputs exactly and no target is ever trimmed."""
    settings = span_corruption_settings()
    raw = span_corruption_raw_length(inputs_length, *settings)
    return raw, span_corruption_lengths(raw, *settings)[1]


# Masked-position codes ("targets_masked", "mlm_weights"): seqio's packing finds a feature's
# length by counting non-zero values, so the per-position flag must never be 0 inside a
# sequence (0 is padding). NOT_CHOSEN doubles as the flag's EOS value. CHOSEN: scored, and
# its input replaced by a mask token (a sentinel, [MASK]); BERT's other chosen positions are
# scored too but show a residue: CHOSEN_RANDOM (10%, a random token) and CHOSEN_KEPT (10%,
# left unchanged), which the model cannot tell apart.
NOT_CHOSEN, CHOSEN, CHOSEN_KEPT, CHOSEN_RANDOM = 1, 2, 3, 4


def _codes(chosen: tf.Tensor) -> tf.Tensor:
    return tf.where(chosen, CHOSEN, NOT_CHOSEN)


def t5_span_corruption(dataset: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """T5 span corruption of "targets" into "inputs" and "targets" (no EOS yet); the residues
    of the target spans are the hidden ones ("targets_masked")."""
    vocabulary = _vocabulary(output_features)
    noise_density, mean_noise_span_length = span_corruption_settings()

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(features, seed):
        tokens = features["targets"]
        noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density,
                                             mean_noise_span_length, seed)
        targets = _noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary)
        sentinels = tf.reduce_any(tf.equal(targets[:, None], vocabulary.sentinel_ids[None, :]),
                                  axis=1)
        return {**features,
                "inputs": _noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
                "targets": targets,
                "targets_masked": _codes(tf.logical_not(sentinels))}

    return corrupt(dataset)


@gin.configurable
def prott5_denoise(dataset: tf.data.Dataset, output_features, noise_density: float = 0.15,
                   single_mask_token: bool = False) -> tf.data.Dataset:
    """ProtT5's objective: i.i.d. residues -> sentinels in "inputs"; "targets" unchanged;
    "targets_masked" marks the positions whose input was replaced."""
    vocabulary = _vocabulary(output_features)

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(features, seed):
        tokens = features["targets"]
        chosen = tf.random.stateless_uniform(tf.shape(tokens), seed=seed) < noise_density
        if single_mask_token:
            replacement = tf.fill(tf.shape(tokens), vocabulary.mask_id)
        else:
            replacement = _sentinels(vocabulary, tf.cumsum(tf.cast(chosen, tf.int32)) - 1)
        return {**features, "inputs": tf.where(chosen, replacement, tokens), "targets": tokens,
                "targets_masked": _codes(chosen)}

    return corrupt(dataset)


def cap_chosen(chosen: tf.Tensor, max_chosen: int, seed) -> tf.Tensor:
    """At most `max_chosen` of the True positions of a 1-D mask, kept uniformly at random."""
    keys = tf.where(chosen, tf.random.stateless_uniform(tf.shape(chosen), seed=seed), 2.0)
    rank = tf.argsort(tf.argsort(keys))  # 0 for the smallest key; unchosen positions rank last
    return tf.logical_and(chosen, rank < max_chosen)


@gin.configurable
def bert_mlm(dataset: tf.data.Dataset, output_features, mask_rate: float = 0.15,
             mask_token_fraction: float = 0.8, random_token_fraction: float = 0.1,
             random_tokens: str = "residues", max_predictions_per_seq: int | None = None) -> tf.data.Dataset:
    """BERT masking with [CLS] ... [SEP] around the residues; loss weights in "mlm_weights".

    random_tokens: where the 10% random replacements come from. "residues" (default): the 20
    standard amino acids, as the ProtBert model card describes it; "vocabulary": any id of the
    vocabulary, special tokens included, as TF BERT's `create_pretraining_data.py` drew them.
    max_predictions_per_seq: None (default), every position chosen at `mask_rate`; a number,
    at most that many per sequence, kept uniformly among those (the TF BERT/ALBERT data's
    cap: ProtAlbert's 20 at 512 residues predicts ~3.9%, not 15%).
    """
    if max_predictions_per_seq is not None and max_predictions_per_seq < 1:
        raise UserError(f"bert_mlm.max_predictions_per_seq={max_predictions_per_seq!r}; expected None or >= 1")
    vocabulary = _vocabulary(output_features)
    if random_tokens == "residues":
        replacement_ids = tf.constant(vocabulary.residue_ids)
    elif random_tokens == "vocabulary":
        replacement_ids = tf.range(vocabulary.vocab_size, dtype=tf.int32)
    else:
        raise UserError(f"bert_mlm.random_tokens={random_tokens!r}; expected 'residues' or "
                         "'vocabulary'")

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(features, seed):
        tokens = features["targets"]
        seeds = tf.random.experimental.stateless_split(seed, 3)
        chosen = tf.random.stateless_uniform(tf.shape(tokens), seed=seeds[0]) < mask_rate
        if max_predictions_per_seq is not None:  # its own seed: the uncapped masks stay as they were
            cap_seed = tf.random.experimental.stateless_fold_in(seeds[0], 1)
            chosen = cap_chosen(chosen, max_predictions_per_seq, cap_seed)
        action = tf.random.stateless_uniform(tf.shape(tokens), seed=seeds[1])
        replacements = tf.gather(replacement_ids, tf.random.stateless_uniform(
            tf.shape(tokens), seed=seeds[2], maxval=tf.size(replacement_ids), dtype=tf.int32))
        corrupted = tf.where(action < mask_token_fraction, vocabulary.mask_id,
                             tf.where(action < mask_token_fraction + random_token_fraction,
                                      replacements, tokens))
        inputs = tf.where(chosen, corrupted, tokens)
        how = tf.where(action < mask_token_fraction, CHOSEN,
                       tf.where(action < mask_token_fraction + random_token_fraction, CHOSEN_RANDOM,
                                CHOSEN_KEPT))
        codes = tf.where(chosen, how, NOT_CHOSEN)
        cls, sep = [vocabulary.bos_id], [vocabulary.eos_id]
        return {**features,
                "inputs": tf.concat([cls, inputs, sep], 0),
                "targets": tf.concat([cls, tokens, sep], 0),
                "mlm_weights": tf.concat([[NOT_CHOSEN], codes, [NOT_CHOSEN]], 0)}

    return corrupt(dataset)


@gin.configurable
def electra_mlm(dataset: tf.data.Dataset, output_features, mask_rate: float = 0.15,
                mask_token_fraction: float = 0.85) -> tf.data.Dataset:
    """ELECTRA's masking (google-research/electra `pretrain_helpers.mask`): residues chosen
    with probability 0.15, 85% shown as [MASK] and 15% unchanged, none replaced at random (the
    generator supplies the replacements); [CLS] ... [SEP] around the residues, as `bert_mlm`."""
    return bert_mlm(dataset, output_features, mask_rate=mask_rate, mask_token_fraction=mask_token_fraction,
                    random_token_fraction=0.0)



# ------------------------------------------------------------------------------ XLNet


@gin.configurable
def permutation_lm_settings(num_predict: int | None = None, reuse_len: int = 0, perm_size: int | None = None,
                            mask_alpha: float = 6.0, mask_beta: float = 1.0, max_gram: int = 5) -> dict:
    """XLNet's permutation-LM settings, bound in gin once (`permutation_lm_settings.reuse_len`).

    num_predict: targets per protein; None: length * mask_beta / mask_alpha, rounded down
    (XLNet-Large's recipe: 85 of 512, about 1 in 6). reuse_len / perm_size: the reused part and
    the permutation block (XLNet-Large: 256 / 256; ProtXLNet's values are UNVERIFIED; the
    reused part only pays off with memory carried from the previous segment, which this
    one-protein-per-row pipeline does not carry: 0 by default).
    """
    if mask_alpha <= 0 or mask_beta <= 0 or max_gram < 1:
        raise UserError(f"permutation_lm_settings: need mask_alpha > 0, mask_beta > 0 and max_gram >= 1, "
                         f"got {mask_alpha}, {mask_beta}, {max_gram}")
    if num_predict is not None and num_predict < 1:
        raise UserError(f"permutation_lm_settings.num_predict must be None or >= 1, got {num_predict}")
    return dict(num_predict=num_predict, reuse_len=reuse_len, perm_size=perm_size, mask_alpha=mask_alpha,
                mask_beta=mask_beta, max_gram=max_gram)


def permutation_lm_num_predict(length: int) -> int:
    """Targets per protein at the bound settings (the task's "targets" length)."""
    settings = permutation_lm_settings()
    if settings["num_predict"] is not None:
        return settings["num_predict"]
    return max(1, int(length * settings["mask_beta"] // settings["mask_alpha"]))


# XLNet's token types (its tokenizer's): residues and <sep> 0, <cls> 2, padding 3.
TYPE_SEQUENCE, TYPE_CLS, TYPE_PAD = 0, 2, 3


def _special_id(vocabulary: ProteinVocabulary, piece: str) -> int:
    if piece not in vocabulary.pieces:
        raise UserError(f"permutation_lm needs a {piece} token; vocabulary {vocabulary.name!r} has none")
    return vocabulary.pieces.index(piece)


PERMUTATION_LM_FEATURES = ("inputs", "input_mask", "token_types", "perm_mask", "target_mapping", "targets",
                           "target_weights")


def permutation_lm_example(residues: np.ndarray, length: int, num_predict: int, rng: np.random.Generator,
                           sep_id: int, cls_id: int, pad_id: int, **settings) -> dict[str, np.ndarray]:
    """One protein's permutation-LM features (int32 numpy), `permutation_lm`'s layout; settings:
    `permutation_lm_settings`' (the bound ones by default)."""
    settings = {**permutation_lm_settings(), **settings}
    n = len(residues)
    if n + 2 > length:
        raise ValueError(f"{n} residues + <sep> <cls> do not fit in {length} positions")
    tokens = np.full(length, pad_id, np.int32)
    tokens[:n + 2] = [*residues, sep_id, cls_id]
    features = plm.permutation_lm_features(
        tokens, num_predict, rng, reuse_len=settings["reuse_len"], perm_size=settings["perm_size"],
        maskable=np.arange(length) < n, mask_alpha=settings["mask_alpha"], mask_beta=settings["mask_beta"],
        max_gram=settings["max_gram"], functional_ids=(sep_id, cls_id))
    types = np.full(length, TYPE_PAD, np.int32)
    types[:n + 1], types[n + 1] = TYPE_SEQUENCE, TYPE_CLS
    return {"inputs": tokens, "input_mask": (np.arange(length) < n + 2).astype(np.int32), "token_types": types,
            "perm_mask": features["perm_mask"].astype(np.int32),
            "target_mapping": features["target_mapping"].astype(np.int32), "targets": features["target"],
            "target_weights": features["target_weights"].astype(np.int32)}


def permutation_lm(dataset: tf.data.Dataset, output_features, sequence_length) -> tf.data.Dataset:
    """XLNet's permutation LM over cropped residues ("targets", no EOS): the task features.

    inputs (L,): `residues <sep> <cls>` then <pad> up to L = sequence_length["inputs"], padded
    on the RIGHT. XLNet's tokenizer pads on the left; for this model the two are the same
    computation: positions enter only as relative distances between query and key, padding
    is masked out as a key (`input_mask`), and no memory is carried, so every real token's
    output is unchanged when the padding moves (tests/models/test_xlnet.py checks it against
    Hugging Face on left-padded inputs). input_mask (L,) 1 on real tokens; token_types (L,);
    perm_mask (L, L) 1 = may not attend; target_mapping (m, L); targets (m,) and
    target_weights (m,) for m = sequence_length["targets"] predictions (padding rows 0).

    Deterministic under seqio's seeds: one seed per protein drives numpy's generator, through
    `tf.numpy_function` (so an iterator over these batches must be dropped before the Python
    interpreter exits: tf.data's threads cannot call back into a finalising interpreter).
    """
    vocabulary = _vocabulary(output_features)
    length, num_predict = int(sequence_length["inputs"]), int(sequence_length["targets"])
    settings = {k: v for k, v in permutation_lm_settings().items() if k != "num_predict"}  # the targets length
    ids = dict(sep_id=_special_id(vocabulary, "<sep>"), cls_id=_special_id(vocabulary, "<cls>"),
               pad_id=vocabulary.pad_id)

    def features(residues: np.ndarray, seed: np.ndarray):
        rng = np.random.default_rng(np.asarray(seed).astype(np.int64) & 0xFFFFFFFF)
        out = permutation_lm_example(residues, length, num_predict, rng, **ids, **settings)
        return tuple(out[name] for name in PERMUTATION_LM_FEATURES)

    shapes = {"perm_mask": (length, length), "target_mapping": (num_predict, length), "targets": (num_predict,),
              "target_weights": (num_predict,)}

    @seqio.map_over_dataset(num_seeds=1)
    def corrupt(example, seed):
        values = tf.numpy_function(features, [example["targets"], seed], [tf.int32] * len(PERMUTATION_LM_FEATURES),
                                   stateful=False)
        out = dict(zip(PERMUTATION_LM_FEATURES, values))
        for name, value in out.items():
            value.set_shape(shapes.get(name, (length,)))
        return out

    return corrupt(dataset)
