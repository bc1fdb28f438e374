"""XLNet's permutation LM over a stream, with memory (data/permutation_stream.py, models/xlnet.py):
examples that advance by the reused part, the reused part hidden from the new part, seeded
draws that a resumed stream repeats, the memory carried through the model, and the train
command resuming bit for bit with it."""

import dataclasses

import gin
import jax
import numpy as np
import pytest
import tensorflow as tf

from prottrans_jax import checkpoints, training
from prottrans_jax import train as train_lib
from prottrans_jax.data import permutation_lm as plm
from prottrans_jax.data.objectives import CHOSEN, NOT_CHOSEN
from prottrans_jax.data.permutation_stream import PermutationStreamFeatureConverter
from prottrans_jax.models.relative_attention import memory_of
from prottrans_jax.models.xlnet import XLNet, XLNetConfig, XLNetPermutationLMModel
from prottrans_jax.partitioning import unbox_shapes
from prottrans_jax.vocab import prot_xlnet_vocabulary
from tests.conftest import ONE_DEVICE, assert_trees_equal, one_line_error, run_training, train_flags

VOCABULARY = prot_xlnet_vocabulary()
EOD = VOCABULARY.pieces.index("<eod>")
LENGTH, REUSE, ROWS = 16, 6, 3


def bind_reuse_len(reuse_len=REUSE):
    gin.bind_parameter("permutation_lm_settings.reuse_len", reuse_len)
    gin.bind_parameter("permutation_lm_settings.perm_size", 2)


def proteins(lengths):
    """Protein i: `lengths[i]` copies of residue id 9 + i % 20, then <eod> (the stream's layout)."""
    def generate():
        for index, n in enumerate(lengths):
            yield {"targets": np.append(np.full(n, 9 + index % 20, np.int32), EOD).astype(np.int32),
                   "targets_masked": np.append(np.full(n, CHOSEN), NOT_CHOSEN).astype(np.int32)}
    spec = {name: tf.TensorSpec((None,), tf.int32) for name in ("targets", "targets_masked")}
    return tf.data.Dataset.from_generator(generate, output_signature=spec)


def stream_batches(lengths, seed=(0, 0)):
    bind_reuse_len()
    dataset = PermutationStreamFeatureConverter().batches(proteins(lengths), {"targets": LENGTH}, ROWS, seed)
    return list(dataset.as_numpy_iterator())


LENGTHS = [5, 11, 3, 8, 14, 2, 9, 6, 12, 4, 7, 10, 3, 13, 5, 8, 6, 9]


def test_examples_advance_by_the_reused_part_and_end_with_sep_cls():
    batches = stream_batches(LENGTHS)
    assert len(batches) >= 4
    new = LENGTH - 2
    for a, b in zip(batches, batches[1:]):  # row r's next example starts REUSE tokens later
        np.testing.assert_array_equal(a["encoder_input_tokens"][:, REUSE:new], b["encoder_input_tokens"][:, :new - REUSE])
    for batch in batches:
        tokens = batch["encoder_input_tokens"]
        assert tokens.shape == (ROWS, LENGTH) and batch["attention_mask"].all()
        np.testing.assert_array_equal(tokens[:, -2:], np.broadcast_to([plm.SEP_ID, plm.CLS_ID], (ROWS, 2)))
        np.testing.assert_array_equal(batch["token_types"][:, -1], 2)
        assert not batch["token_types"][:, :-1].any()
        # the reused part never sees the new part; the new part sees all of the reused part
        assert batch["perm_mask"][:, :REUSE, REUSE:].all() and not batch["perm_mask"][:, REUSE:, :REUSE].any()
        positions = np.argmax(batch["target_mapping"], axis=2)
        weights = batch["target_weights"] > 0
        np.testing.assert_array_equal(np.take_along_axis(tokens, positions, 1)[weights],
                                      batch["target_tokens"][weights])
        assert not np.isin(tokens[np.arange(ROWS)[:, None], positions][weights], [plm.SEP_ID, plm.CLS_ID]).any()
        residue_targets = weights & (batch["target_tokens"] != EOD)
        np.testing.assert_array_equal(batch["target_masked_weights"] > 0, residue_targets)
    assert any((b["target_tokens"][b["target_weights"] > 0] == EOD).any() for b in batches)  # <eod> is predicted
    assert all(b["target_weights"].sum() > 0 for b in batches)


def test_draws_are_seeded_by_seed_host_batch_and_row():
    first, again, other = stream_batches(LENGTHS), stream_batches(LENGTHS), stream_batches(LENGTHS, (0, 1))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(first[0]["perm_mask"], other[0]["perm_mask"])
    assert not np.array_equal(first[0]["perm_mask"][0], first[0]["perm_mask"][1])  # rows draw apart


def test_a_stream_needs_a_reused_part():
    from prottrans_jax.errors import UserError

    bind_reuse_len(0)
    with pytest.raises(UserError, match=r"permutation_lm_settings.reuse_len=0: XLNet's memory needs a reused part"):
        PermutationStreamFeatureConverter().batches(proteins(LENGTHS), {"targets": LENGTH}, ROWS)


# ------------------------------------------------------------------ the model's memory

TINY = XLNetConfig(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                   dropout_prob=0.0, attention_dropout_prob=0.0, mem_len=8, reuse_len=REUSE, dtype="float32")


@pytest.fixture(scope="module")
def tiny_params():
    return unbox_shapes(jax.device_get(XLNetPermutationLMModel(TINY).init_params(jax.random.key(0))))


def test_an_empty_memory_is_no_memory_and_a_full_one_is_all_seen(tiny_params):
    batch = stream_batches(LENGTHS)[1]
    module = XLNet(TINY)
    args = [batch[k] for k in ("encoder_input_tokens", "attention_mask", "token_types", "perm_mask",
                               "target_mapping")]
    memory = jax.random.normal(jax.random.key(1), (2, ROWS, 8, 32))
    alone, _ = module.apply({"params": tiny_params}, *args)
    hidden, _ = module.apply({"params": tiny_params}, *args, memory, True, np.zeros((ROWS, 8), bool))
    np.testing.assert_allclose(hidden, alone, rtol=1e-5, atol=1e-5)
    seen, _ = module.apply({"params": tiny_params}, *args, memory, True, np.ones((ROWS, 8), bool))
    plain, _ = module.apply({"params": tiny_params}, *args, memory)
    np.testing.assert_allclose(seen, plain, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.asarray(seen) - np.asarray(alone))) > 1e-3


def test_the_carry_holds_the_reused_parts_and_changes_the_next_loss(tiny_params):
    bind_reuse_len()
    model = XLNetPermutationLMModel(TINY)
    batches = stream_batches(LENGTHS)
    carry = unbox_shapes(model.init_carry(ROWS))
    assert carry["memory"].shape == (ROWS, 2, 8, 32) and not carry["valid"].any()
    first_loss, _, carry = model.loss_and_metrics(tiny_params, batches[0], None, False, carry)
    assert carry["valid"].sum(axis=1).tolist() == [REUSE] * ROWS  # the reused part entered the memory
    without, _, _ = model.loss_and_metrics(tiny_params, batches[0], None, False)
    np.testing.assert_allclose(first_loss, without, rtol=1e-5, atol=1e-5)  # an empty memory changes nothing
    memory, _ = memory_of(carry)
    _, expected = XLNet(TINY).apply({"params": tiny_params}, *[batches[0][k] for k in (
        "encoder_input_tokens", "attention_mask", "token_types", "perm_mask", "target_mapping")],
        np.zeros((2, ROWS, 0, 32), np.float32))
    np.testing.assert_allclose(memory[:, :, -REUSE:], expected[:, :, -REUSE:], rtol=1e-5, atol=1e-5)
    with_memory, _, carry = model.loss_and_metrics(tiny_params, batches[1], None, False, carry)
    alone, _, _ = model.loss_and_metrics(tiny_params, batches[1], None, False)
    assert abs(float(with_memory) - float(alone)) > 1e-4
    assert carry["valid"].all()  # 2 * REUSE > mem_len


def test_the_model_caches_what_the_stream_reuses():
    from prottrans_jax.errors import UserError

    bind_reuse_len(4)
    with pytest.raises(UserError, match=r"XLNetConfig.reuse_len=6 but permutation_lm_settings.reuse_len=4"):
        XLNetPermutationLMModel(TINY).init_carry(2)
    bind_reuse_len()
    with pytest.raises(UserError, match="bi_data=True with memory"):
        XLNetPermutationLMModel(dataclasses.replace(TINY, bi_data=True)).init_carry(2)
    assert XLNetPermutationLMModel(dataclasses.replace(TINY, mem_len=0)).feature_converter_cls.__name__ == \
        "PermutationLMFeatureConverter"


def test_the_flops_count_the_memory_as_keys():
    """Memory adds its k and v projections, M more keys and distances per query in both
    streams' scores and weighted values, and M more relative positions."""
    rows, length, predictions, memory = 4, LENGTH, 3, TINY.mem_len
    batch = {"encoder_input_tokens": np.zeros((rows, length)), "target_mapping": np.zeros((rows, predictions, length))}
    with_memory = XLNetPermutationLMModel(TINY).flops_per_batch(batch)
    without = XLNetPermutationLMModel(dataclasses.replace(TINY, mem_len=0)).flops_per_batch(batch)
    d, a, layers = TINY.hidden_size, TINY.num_heads * TINY.head_dim, TINY.num_layers
    extra = 3 * (rows * (2 * memory * layers * 2 * d * a + layers * 4 * a * length * 3 * memory)
                 + layers * 2 * memory * d * a)
    assert with_memory - without == extra and without > 0


# ------------------------------------------------------------------ the train command

GIN = "--gin_file=gin/experiments/prot_xlnet_tiny_sample.gin"
MEMORY = ["--gin.XLNetConfig.hidden_size=32", "--gin.XLNetConfig.num_heads=4", "--gin.XLNetConfig.head_dim=8",
          "--gin.XLNetConfig.intermediate_size=64", "--gin.XLNetConfig.mem_len=16", "--gin.XLNetConfig.reuse_len=8",
          "--gin.permutation_lm_settings.reuse_len=8", "--gin.permutation_lm_settings.perm_size=8",
          "--gin.XLNetConfig.dropout_prob=0.1", "--gin.train.checkpoint_interval=100"]


def memory_flags(model_dir, steps, *extra):
    return train_flags(GIN, model_dir, steps, "short_permutation_lm_stream", *MEMORY, *ONE_DEVICE, *extra,
                       batch=4, length=24)


@pytest.mark.slow
def test_stop_and_resume_with_the_carried_memory_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    """6 steps = 3, a preemption (checkpoint with the memory), a restart and 3 more, bit for bit;
    an evaluation over the stream starts from an empty memory and reports residue targets."""
    straight = run_training(memory_flags(tmp_path / "straight", 6, "--gin.train.eval_interval=6",
                                         "--gin.train.eval_steps=3"))
    assert np.asarray(straight["carry"]["valid"]).all()
    assert straight["feature_lengths"] == {"targets": 24}
    evaluation = straight["eval"][-1]
    assert 0 < evaluation["masked_accuracy_count"] <= evaluation["accuracy_count"] == 3 * 4 * 4
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        first = run_training(memory_flags(tmp_path / "m", 6))
    assert first["preempted"] and (tmp_path / "m" / "3" / checkpoints.CARRY).is_dir()
    resumed = run_training(memory_flags(tmp_path / "m", 6))
    assert resumed["step"] == 6
    assert_trees_equal(resumed["state"], straight["state"])
    assert_trees_equal(resumed["carry"], straight["carry"])


def test_a_one_protein_task_is_refused_with_memory(corpus, tmp_path, capsys):
    code, _ = train_lib.run(train_flags(GIN, tmp_path, 1, "short_permutation_lm", *MEMORY, *ONE_DEVICE))
    assert code == 1 and "reads ['targets', 'targets_masked'] through PermutationStreamFeatureConverter" in \
        one_line_error(capsys)
    code, _ = train_lib.run(train_flags("--gin_file=gin/experiments/prot_txl_tiny_sample.gin", tmp_path / "t", 1,
                                        "short_permutation_lm_stream", *ONE_DEVICE))
    assert code == 1 and "is of objective 'permutation_lm_stream'" in one_line_error(capsys)
    assert not (tmp_path / "t" / "model.json").exists()


def test_the_stream_resumes_where_it_stopped(corpus):
    gin.bind_parameter("permutation_lm_settings.reuse_len", 8)
    lengths = {"targets": 24}
    straight = training.train_batches("short_permutation_lm_stream", lengths, 4, seed=5,
                                      converter_cls=PermutationStreamFeatureConverter)
    expected = [next(straight) for _ in range(8)][5:]
    resumed = training.train_batches("short_permutation_lm_stream", lengths, 4, seed=5, start=5,
                                     converter_cls=PermutationStreamFeatureConverter)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    del straight, resumed  # tf.numpy_function iterators must not outlive the interpreter


def test_the_paper_recipe_dry_runs_with_its_carried_memory(corpus, tmp_path, capsys):
    """gin/experiments/prot_xlnet.gin at its size (no weights allocated): ProtXLNet's 409M
    parameters (XLNetLMHeadModel's count), and the memory of 1,024 rows x 30 layers x 384 x 1024 in bfloat16 as state."""
    code, result = train_lib.run(["--gin_file=gin/experiments/prot_xlnet.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                                  "--gin.MIXTURE_OR_TASK_NAME='short_permutation_lm_stream'",
                                  "--gin.train.dry_run=True", *ONE_DEVICE])
    assert code == 0 and result["num_params"] == 409_374_720 + 1_024 + 1_025 * 32  # as tests/models/test_xlnet.py
    carry = 1024 * 30 * 384 * 1024 * 2 + 1024 * 384  # memory (bfloat16) + validity flags
    out = capsys.readouterr().out
    assert result["bytes_per_device"] >= carry and "+ carried memory" in out, out
