"""Pre-training objectives, tested on statistics over many examples, not anecdotes."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from prottrans_jax.data import objectives
from prottrans_jax.vocab import prot_albert_vocabulary, prot_bert_vocabulary, prot_t5_vocabulary

T5 = prot_t5_vocabulary()
BERT = prot_bert_vocabulary()
T5_FEATURES = {"inputs": seqio.Feature(T5), "targets": seqio.Feature(T5)}
BERT_FEATURES = {"inputs": seqio.Feature(BERT), "targets": seqio.Feature(BERT)}


def residue_dataset(vocab, count=400, min_length=50, max_length=400, seed=0):
    rng = np.random.default_rng(seed)
    ids = vocab.residue_ids
    rows = [rng.choice(ids, size=rng.integers(min_length, max_length)).astype(np.int32)
            for _ in range(count)]
    return rows, tf.data.Dataset.from_generator(
        lambda: ({"targets": r} for r in rows),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)})


def run(fn, dataset, features, seed=42, **kwargs):
    with seqio.utils.map_seed_manager(seed):
        return list(fn(dataset, output_features=features, **kwargs).as_numpy_iterator())


def test_prott5_denoise_noise_rate_unique_sentinels_and_full_target():
    rows, dataset = residue_dataset(T5)
    out = run(objectives.prott5_denoise, dataset, T5_FEATURES)
    sentinels = set(T5.sentinel_ids.tolist())
    masked = total = 0
    for original, ex in zip(rows, out):
        np.testing.assert_array_equal(ex["targets"], original)  # target == whole original
        assert len(ex["inputs"]) == len(original)
        is_mask = np.isin(ex["inputs"], list(sentinels))
        np.testing.assert_array_equal(ex["inputs"][~is_mask], original[~is_mask])
        k = int(is_mask.sum())
        expected = [T5.sentinel_id(i % 100) for i in range(k)]  # <extra_id_0>, <extra_id_1>, ...
        assert ex["inputs"][is_mask].tolist() == expected
        masked += k
        total += len(original)
    rate = masked / total
    assert abs(rate - 0.15) < 4 * np.sqrt(0.15 * 0.85 / total), rate


def test_prott5_denoise_single_mask_token_option():
    rows, dataset = residue_dataset(T5, count=50)
    out = run(objectives.prott5_denoise, dataset, T5_FEATURES, single_mask_token=True)
    used = {int(t) for ex in out for t in ex["inputs"] if t >= 28}
    assert used == {T5.mask_id}


def reassemble(inputs, targets):
    """Replaces each sentinel in the inputs by the tokens that follow it in the targets."""
    spans, current = {}, None
    for token in targets:
        if token >= 28:
            current = int(token)
            spans[current] = []
        else:
            spans[current].append(int(token))
    out = []
    for token in inputs:
        out.extend(spans[int(token)] if token >= 28 else [int(token)])
    return out


def test_span_corruption_statistics_and_exact_reassembly():
    rows, dataset = residue_dataset(T5, min_length=100, max_length=500)
    out = run(objectives.t5_span_corruption, dataset, T5_FEATURES)
    noise = spans = total = 0
    for original, ex in zip(rows, out):
        assert reassemble(ex["inputs"], ex["targets"]) == original.tolist()
        input_sentinels = [t for t in ex["inputs"] if t >= 28]
        target_sentinels = [t for t in ex["targets"] if t >= 28]
        assert input_sentinels == target_sentinels == [127 - i for i in range(len(input_sentinels))]
        noise += len(ex["targets"]) - len(target_sentinels)
        spans += len(target_sentinels)
        total += len(original)
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.15


def test_span_corruption_noise_mask_counts_are_exact():
    for length in (2, 10, 57, 512):
        mask = objectives.random_spans_noise_mask(length, 0.15, 3.0, seed=[1, 2]).numpy()
        assert len(mask) == length
        assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)
        assert not mask[0]  # T5 starts with a non-noise span


def test_span_corruption_lengths_fit_exactly():
    raw = objectives.span_corruption_raw_length(512)
    inputs, targets = objectives.span_corruption_lengths(raw)
    assert inputs <= 512 < objectives.span_corruption_lengths(raw + 1)[0]
    assert (raw, targets) == (568, 114)  # T5's well-known 568 -> 512/114 for density 0.15


def test_bert_mlm_rates_and_weights():
    rows, dataset = residue_dataset(BERT)
    out = run(objectives.bert_mlm, dataset, BERT_FEATURES)
    chosen = as_mask = as_random = unchanged = total = kept_total = 0
    for original, ex in zip(rows, out):
        assert ex["inputs"][0] == BERT.bos_id and ex["inputs"][-1] == BERT.eos_id
        np.testing.assert_array_equal(ex["targets"][1:-1], original)
        codes = ex["mlm_weights"]
        assert codes[0] == codes[-1] == objectives.NOT_CHOSEN
        is_chosen = codes[1:-1] != objectives.NOT_CHOSEN
        inputs = ex["inputs"][1:-1]
        np.testing.assert_array_equal(inputs[~is_chosen], original[~is_chosen])
        kept = codes[1:-1] == objectives.CHOSEN_KEPT  # scored, but left visible
        np.testing.assert_array_equal(inputs[kept], original[kept])
        assert np.all(inputs[codes[1:-1] == objectives.CHOSEN] == BERT.mask_id)
        chosen += is_chosen.sum()
        kept_total += kept.sum()
        as_mask += (inputs[is_chosen] == BERT.mask_id).sum()
        same = inputs[is_chosen] == original[is_chosen]
        unchanged += same.sum()
        as_random += ((inputs[is_chosen] != BERT.mask_id) & ~same).sum()
        assert np.isin(inputs[is_chosen], np.append(BERT.residue_ids, BERT.mask_id)).all()
        total += len(original)
    assert abs(chosen / total - 0.15) < 0.006
    assert abs(as_mask / chosen - 0.8) < 0.02
    # A random replacement equals the original 1 time in 20: count it as "unchanged".
    assert abs(as_random / chosen - 0.1 * 19 / 20) < 0.015
    assert abs(unchanged / chosen - (0.1 + 0.1 / 20)) < 0.015
    assert abs(kept_total / chosen - 0.1) < 0.015


def test_electra_mlm_masks_85_percent_and_never_replaces_at_random():
    """ELECTRA's generator input: the generator supplies the replacements, the data none."""
    rows, dataset = residue_dataset(BERT)
    out = run(objectives.electra_mlm, dataset, BERT_FEATURES)
    chosen = as_mask = total = 0
    for original, ex in zip(rows, out):
        codes = ex["mlm_weights"][1:-1]
        is_chosen = codes != objectives.NOT_CHOSEN
        inputs = ex["inputs"][1:-1]
        np.testing.assert_array_equal(ex["targets"][1:-1], original)
        assert not np.any(codes == objectives.CHOSEN_RANDOM)
        np.testing.assert_array_equal(inputs[codes != objectives.CHOSEN], original[codes != objectives.CHOSEN])
        chosen += is_chosen.sum()
        as_mask += (inputs[is_chosen] == BERT.mask_id).sum()
        total += len(original)
    assert abs(chosen / total - 0.15) < 0.006
    assert abs(as_mask / chosen - 0.85) < 0.02


@pytest.mark.parametrize("fn,features", [(objectives.prott5_denoise, T5_FEATURES),
                                         (objectives.t5_span_corruption, T5_FEATURES),
                                         (objectives.bert_mlm, BERT_FEATURES),
                                         (objectives.electra_mlm, BERT_FEATURES)])
def test_objectives_are_deterministic_under_a_seed(fn, features):
    vocab = features["targets"].vocabulary
    _, dataset = residue_dataset(vocab, count=20)
    first, again, other = (run(fn, dataset, features, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, again))
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other))


def test_bert_mlm_max_predictions_per_seq_caps_each_sequence_uniformly():
    """ProtAlbert's data: at most 20 predictions per 512-residue sequence (~3.9%, not 15%),
    kept uniformly among the positions the 15% draw chose; without the cap nothing changes."""
    albert = prot_albert_vocabulary()
    features = {"inputs": seqio.Feature(albert), "targets": seqio.Feature(albert)}
    rows, dataset = residue_dataset(albert, count=200, min_length=512, max_length=513)
    capped = run(objectives.bert_mlm, dataset, features, max_predictions_per_seq=20)
    uncapped = run(objectives.bert_mlm, dataset, features)
    counts, where = [], np.zeros(512)
    for ex, free in zip(capped, uncapped):
        is_chosen = ex["mlm_weights"][1:-1] != objectives.NOT_CHOSEN
        counts.append(is_chosen.sum())
        where += is_chosen
        # the capped positions are among the uncapped draw's (same seed, same 15% draw)
        assert np.all(free["mlm_weights"][1:-1][is_chosen] != objectives.NOT_CHOSEN)
    assert max(counts) <= 20 and np.mean(counts) > 19.5
    halves = where[:256].sum(), where[256:].sum()  # uniform: no end of the sequence favoured
    assert abs(halves[0] - halves[1]) < 0.1 * sum(halves)
    with pytest.raises(ValueError, match="max_predictions_per_seq=0"):
        objectives.bert_mlm(dataset, features, max_predictions_per_seq=0)
