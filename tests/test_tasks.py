"""SeqIO tasks over a built corpus: registration, packing, determinism, clear errors."""

import numpy as np
import pytest

from prottrans_jax.data import registry
from prottrans_jax.data.dataset import get_batches, get_task, task_feature_lengths
from prottrans_jax.data.feature_converters import EncoderMLMFeatureConverter
from tasks.corpus import OBJECTIVES, register_corpus
from tasks.show_batches import describe_batch
from tests.conftest import run_build
from tests.test_tfrecords_builder import random_fasta

# The packed objectives: not the stream objective, causal_lm (tests/test_stream.py), nor XLNet's
# permutation LM (one protein per row): their converters have no packing features.
PACKED = tuple(o for o in OBJECTIVES if registry.get_objective(o).feature_converter_cls.PACKING_FEATURE_DTYPES)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    random_fasta(root / "in.fa", 400, seed=11, min_length=8, max_length=90)
    run_build([root / "in.fa"], root / "out", num_shards=2, validation_fraction=0.25)
    register_corpus("unit", root / "out")
    return root / "out"


def segments(tokens, segment_ids):
    return [tokens[segment_ids == s] for s in range(1, segment_ids.max() + 1)]


def batches(name, length=128, batch_size=4, seed=3, pack=True, count=5, split="train"):
    lengths = task_feature_lengths(get_task(name), length)
    iterator = get_batches(name, split, lengths, batch_size, seed=seed, pack=pack).as_numpy_iterator()
    return [next(iterator) for _ in range(count)]


def test_tasks_are_registered_per_objective(corpus):
    for objective in OBJECTIVES:
        assert get_task(f"unit_{objective}").name == f"unit_{objective}"
    import gin
    gin.parse_config("import tasks")  # T5X's MIXTURE_OR_TASK_MODULE: a gin import registers `sample`
    assert get_task("sample_prott5_denoise").name == "sample_prott5_denoise"


def test_unknown_task_and_missing_corpus_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown seqio task or mixture 'nope_bert_mlm'"):
        get_task("nope_bert_mlm")
    register_corpus("absent", tmp_path / "nowhere", ("prott5_denoise",))
    with pytest.raises(FileNotFoundError, match="no built corpus here; build it with"):
        batches("absent_prott5_denoise", count=1)


@pytest.mark.parametrize("objective", PACKED)
def test_packed_segments_and_positions(corpus, objective):
    name = f"unit_{objective}"
    encoder_only = registry.get_objective(objective).feature_converter_cls is EncoderMLMFeatureConverter
    prefix = "encoder" if encoder_only else "decoder"
    target_key = f"{prefix}_target_tokens"
    packed_count = 0
    for batch in batches(name):
        for row in range(batch["encoder_input_tokens"].shape[0]):
            for side, tokens_key in (("encoder", "encoder_input_tokens"), (prefix, target_key)):
                seg = batch[f"{side}_segment_ids"][row]
                pos = batch[f"{side}_positions"][row]
                tokens = batch[tokens_key][row]
                used = seg > 0
                assert np.all(tokens[~used] == 0) and np.all(pos[~used] == 0)
                n = seg.max()
                assert np.array_equal(np.unique(seg[used]), np.arange(1, n + 1))
                for s in range(1, n + 1):  # each segment is contiguous, positions restart at 0
                    where = np.flatnonzero(seg == s)
                    assert np.array_equal(where, np.arange(where[0], where[-1] + 1))
                    assert np.array_equal(pos[where], np.arange(len(where)))
            packed_count += batch["encoder_segment_ids"][row].max()
    assert packed_count > 20  # short proteins: several per row


def test_packing_keeps_examples_whole_and_in_order(corpus):
    packed = batches("unit_prott5_denoise", count=3)
    unpacked = batches("unit_prott5_denoise", pack=False, count=30)
    packed_examples = [seg for b in packed for r in range(4)
                       for seg in segments(b["encoder_input_tokens"][r], b["encoder_segment_ids"][r])]
    unpacked_examples = [b["encoder_input_tokens"][r][b["encoder_input_tokens"][r] > 0]
                         for b in unpacked for r in range(4)]
    for got, want in zip(packed_examples, unpacked_examples):
        np.testing.assert_array_equal(got, want)


def test_denoise_targets_align_with_inputs_after_packing(corpus):
    for batch in batches("unit_prott5_denoise"):
        inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
        sentinel = inputs >= 28
        assert np.array_equal(inputs[~sentinel], targets[~sentinel])
        assert np.all(targets[sentinel] < 28) and sentinel.any()
        assert np.array_equal(batch["decoder_loss_weights"], (targets > 0).astype(np.int32))
        # The objective says which positions it hid; packing keeps the flag aligned.
        assert np.array_equal(batch["decoder_masked_weights"].astype(bool), sentinel)


def test_span_corruption_marks_the_residues_of_the_target_spans(corpus):
    batch = batches("unit_t5_span_corruption", count=1)[0]
    targets, masked = batch["decoder_target_tokens"], batch["decoder_masked_weights"].astype(bool)
    residues = (targets >= 3) & (targets < 28)  # not padding, EOS or a sentinel
    assert np.array_equal(masked, residues) and masked.any()


def test_bert_loss_weights_mark_chosen_positions(corpus):
    batch = batches("unit_bert_mlm", count=1)[0]
    weights = batch["encoder_loss_weights"].astype(bool)
    masked = batch["encoder_masked_weights"].astype(bool)
    changed = batch["encoder_input_tokens"] != batch["encoder_target_tokens"]
    assert np.all(weights[changed])  # every corrupted position carries loss
    assert np.array_equal(masked, batch["encoder_input_tokens"] == 4)  # masked: became [MASK]
    assert np.all(weights[masked]) and 0.6 < masked.sum() / weights.sum() < 0.97  # 80% (one batch)
    assert 0.1 < weights.sum() / (batch["encoder_segment_ids"] > 0).sum() < 0.2


@pytest.mark.parametrize("objective", PACKED)
def test_batches_are_deterministic_under_a_seed(corpus, objective):
    first, again, other = (batches(f"unit_{objective}", seed=s, count=2) for s in (5, 5, 6))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])
               for a, b in zip(first, other))


def test_span_corruption_targets_length_follows_the_bound_noise_density(corpus):
    import gin

    lengths = task_feature_lengths(get_task("unit_t5_span_corruption"), 512)
    assert lengths == {"inputs": 512, "targets": 114, "targets_masked": 114}
    gin.parse_config("import prottrans_jax.data.objectives\n"
                     "span_corruption_settings.noise_density = 0.3")
    lengths = task_feature_lengths(get_task("unit_t5_span_corruption"), 512)
    assert lengths["targets"] > 200  # no target trimmed at the new density
    for batch in batches("unit_t5_span_corruption", length=512, batch_size=2, count=2):
        masked = batch["decoder_masked_weights"].sum()
        fill = (batch["encoder_segment_ids"] > 0).sum()
        assert 0.25 < masked / (masked + fill) < 0.45  # about 30% of residues hidden


def test_describe_batch_decodes_each_packed_protein(corpus):
    batch = batches("unit_prott5_denoise", count=1)[0]
    text = describe_batch("unit_prott5_denoise", batch)
    assert text.startswith("== unit_prott5_denoise: decoder_input_tokens (4, 128)")
    assert text.count("inputs  (") == batch["encoder_segment_ids"].max(axis=1).sum()
    assert "<0>" in text  # sentinels are shown by name


def test_describe_batch_shows_each_permutation_lm_row(corpus):
    batch = batches("unit_permutation_lm", count=1)[0]
    text = describe_batch("unit_permutation_lm", batch)
    assert text.startswith("== unit_permutation_lm: attention_mask (4, 128)") and "one protein per row" in text
    assert text.count("targets at [") == 4 and "<sep> <cls>" in text
