"""One trainer for every family: ProtBert trained end to end, phases, continued pre-training
from Hugging Face weights, and the one-line errors of a task or directory that does not fit."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from prottrans_jax import checkpoints, model_dir as model_dir_lib
from prottrans_jax import train as train_lib
from prottrans_jax.convert import bert as bert_convert
from prottrans_jax.convert.hf_io import load_hf_state_dict
from tests.conftest import (ONE_DEVICE, assert_trees_equal, one_line_error, random_hf_bert, run_training,
                            train_flags)

BERT_GIN = "--gin_file=gin/experiments/prot_bert_tiny_sample.gin"
T5_GIN = "--gin_file=gin/experiments/prot_t5_tiny_sample.gin"
# The tiny HF BERT of tests/conftest.py (TINY_BERT): 2 layers, 32 wide, 4 heads, d_ff 64.
SMALL_BERT = ["--gin.BertConfig.hidden_size=32", "--gin.BertConfig.num_layers=2",
              "--gin.BertConfig.intermediate_size=64", "--gin.BertConfig.max_position_embeddings=128"]
SMALL_T5 = ["--gin.T5Config.d_model=32", "--gin.T5Config.head_dim=8", "--gin.T5Config.d_ff=48",
            "--gin.T5Config.num_encoder_layers=2", "--gin.T5Config.num_decoder_layers=2",
            "--gin.T5Config.dropout_rate=0.0"]


def bert_flags(model_dir, steps, *extra, **kwargs):
    return train_flags(BERT_GIN, model_dir, steps, "short_bert_mlm", *SMALL_BERT, *extra, **kwargs)


# ------------------------------------------------------------------ a task that does not fit


def test_a_task_of_another_objective_is_refused_before_anything_is_written(corpus, tmp_path, capsys):
    code, _ = train_lib.run(train_flags(T5_GIN, tmp_path, 2, "short_bert_mlm"))
    line = one_line_error(capsys)
    assert code == 1 and "task 'short_bert_mlm' has features" in line
    assert "EncoderDecoderModel (prot_t5)" in line and "EncDecMaskedFeatureConverter" in line
    code, _ = train_lib.run(train_flags(BERT_GIN, tmp_path, 2, "short_prott5_denoise"))
    assert code == 1 and "BertMLMModel (prot_bert)" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_vocabulary_larger_than_the_model_is_refused(corpus, tmp_path, capsys):
    code, _ = train_lib.run(bert_flags(tmp_path, 2, "--gin.BertConfig.vocab_size=25"))
    assert code == 1 and "30-id vocabulary 'prot_bert'" in one_line_error(capsys)


# ------------------------------------------------------------------ ProtBert end to end


@pytest.fixture(scope="module")
def straight_bert(corpus, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("bert_straight")
    return model_dir, run_training(bert_flags(model_dir, 6))


def test_bert_stop_and_resume_equals_an_uninterrupted_run(straight_bert, tmp_path, monkeypatch):
    model_dir, straight = straight_bert
    with monkeypatch.context() as patch:  # a preemption after step 3
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        assert run_training(bert_flags(tmp_path, 6))["preempted"]
    resumed = run_training(bert_flags(tmp_path, 6))
    assert resumed["step"] == 6
    assert_trees_equal(resumed["state"], straight["state"])  # bit-identical
    stored = json.loads((model_dir / "model.json").read_text())
    assert stored["family"] == "prot_bert" and stored["config"]["hidden_size"] == 32
    assert stored["vocabulary"][:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_a_second_phase_continues_with_new_lengths_and_batch_size(straight_bert, tmp_path, capsys):
    """ProtBert's recipe: phase 2 continues phase 1's parameters, optimizer state, step and
    learning-rate schedule at 2,048 tokens (here 6 steps of 8 x 64 tokens, then 4 of 16 x 128)."""
    phase_one, _ = straight_bert
    import shutil

    shutil.copytree(phase_one, tmp_path / "m")
    model_dir = tmp_path / "m"
    # Within a phase, another batch size or length is refused (it would silently change the
    # data stream and overwrite the record of how the steps so far were trained).
    code, _ = train_lib.run(bert_flags(model_dir, 10, batch=16, length=128))
    line = one_line_error(capsys)
    assert code == 1 and "was trained with batch_size 8; this run has 16" in line
    assert "train.phase = 2" in line
    phase_two = run_training(bert_flags(model_dir, 10, "--gin.train.phase=2", batch=16, length=128))
    assert phase_two["step"] == 10 and int(phase_two["state"]["step"]) == 10
    assert phase_two["feature_lengths"]["inputs"] == 128 and phase_two["host_batch"] == 16
    counts = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(phase_two["state"]["opt_state"])[0]
              if "count" in jax.tree_util.keystr(path)]
    assert counts and all(int(c) == 10 for c in counts)  # the optimizer state went on, not restarted
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            phase_two["state"])
    with checkpoints.Checkpointer(model_dir) as checkpointer:
        position = checkpointer.restore(abstract, 10)[1]
    assert position["phase"] == 2 and position["phase_start_step"] == 6 and position["batches_consumed"] == 4
    for name in ("config.gin", "operative_config.gin", "config.phase2.gin", "operative_config.phase2.gin"):
        assert (model_dir / name).is_file(), name
    assert "train.phase = 2" in (model_dir / "operative_config.phase2.gin").read_text()
    assert "train.phase = 2" not in (model_dir / "operative_config.gin").read_text()
    code, _ = train_lib.run(bert_flags(model_dir, 12))  # back to phase 1: refused
    assert code == 1 and "is in phase 2 (step 10)" in one_line_error(capsys)


def test_a_later_phase_needs_a_trained_model_dir(corpus, tmp_path, capsys):
    code, _ = train_lib.run(bert_flags(tmp_path, 4, "--gin.train.phase=2"))
    assert code == 1 and "has no checkpoint: run phase 1 first" in one_line_error(capsys)


@pytest.mark.slow
def test_tiny_bert_overfits_32_real_proteins(corpus, tmp_path):
    """gin/models/bert/tiny.gin memorises 32 proteins: the residues behind the [MASK] tokens
    of the evaluation masks, which differ from every training mask, come back (0.75 measured;
    BERT needs more steps than ProtT5's denoiser, whose decoder sees the residues before)."""
    result = run_training(train_flags(BERT_GIN, tmp_path, 500, "short_bert_mlm", "--gin.train.eval_interval=500",
                          "--gin.train.log_every=250",
                          "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.02",
                          "--gin.optimizers.warmup_decay_schedule.warmup_steps=50",
                          "--gin.optimizers.warmup_decay_schedule.total_steps=500", *ONE_DEVICE,
                          batch=16))
    before, after = result["eval"][0], result["eval"][-1]
    assert before["masked_accuracy"] < 0.1
    assert after["masked_accuracy"] > 0.6, after


# ------------------------------------------------------------------ continued pre-training


def restored_params(model_dir, step):
    stored = model_dir_lib.read_model(str(model_dir))
    return model_dir_lib.restore_params(str(model_dir), stored, step=step)[0]


def test_continued_pre_training_starts_from_released_bert_weights(corpus, tiny_bert_hf_dir, tmp_path):
    hf_dir = tiny_bert_hf_dir("pretraining", 0)
    run_training(bert_flags(tmp_path, 1, f"--gin.train.init_from_hf='{hf_dir}'",
                      "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.0",
                      "--gin.BertConfig.hidden_dropout_prob=0.0", "--gin.BertConfig.attention_dropout_prob=0.0"))
    state_dict = load_hf_state_dict(hf_dir)
    config = model_dir_lib.read_model(str(tmp_path), param_dtype="float32").config
    expected = bert_convert.hf_to_flax(state_dict, config)
    # A zero learning rate: after one step the parameters are still the released ones.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(restored_params(tmp_path, 1)), expected)


def test_released_t5_weights_become_the_sharded_initial_state(tiny_t5_hf_dir):
    import optax

    from prottrans_jax import partitioning, training
    from prottrans_jax.convert import t5 as t5_convert
    from prottrans_jax.models.encoder_decoder import EncoderDecoderModel
    from prottrans_jax.trainer import Trainer
    from prottrans_jax.vocab import prot_t5_vocabulary

    hf_dir = tiny_t5_hf_dir(0)
    config = t5_convert.config_from_hf(json.loads(Path(hf_dir, "config.json").read_text()),
                                       load_hf_state_dict(hf_dir), dtype="float32")
    model = EncoderDecoderModel(config)
    params = training.released_params(hf_dir, model, prot_t5_vocabulary())
    partitioner = partitioning.Partitioner(mesh_shape=(4, 2), rule_set="fsdp_tensor_parallel")
    trainer = Trainer(model, optax.adafactor(1e-3), partitioner)
    state = trainer.init_state_from_params(params)
    assert int(state["step"]) == 0
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]),
                 t5_convert.hf_to_flax(load_hf_state_dict(hf_dir), config))
    query = state["params"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert tuple(query.sharding.spec) == ("data", "model")  # each device got only its own shards


def test_a_bert_masked_lm_checkpoint_continues_without_pretraining_heads(tmp_path):
    """A BertForMaskedLM (no pooler, no NSP head) continues as such: pretraining_heads=False."""
    import dataclasses

    from prottrans_jax import training
    from prottrans_jax.models.bert import BertMLMModel
    from prottrans_jax.vocab import prot_bert_vocabulary

    random_hf_bert("mlm", 3).save_pretrained(tmp_path)
    bert_convert.write_tokenizer(str(tmp_path))
    config = bert_convert.config_from_hf(json.loads((tmp_path / "config.json").read_text()),
                                         load_hf_state_dict(str(tmp_path)))
    assert not config.pretraining_heads
    params = training.released_params(str(tmp_path), BertMLMModel(config), prot_bert_vocabulary())
    assert "pooler" not in params and "nsp" not in params
    with pytest.raises(Exception, match="pretraining_heads=False but the model being trained has True"):
        training.released_params(str(tmp_path), BertMLMModel(dataclasses.replace(config, pretraining_heads=True)),
                                 prot_bert_vocabulary())


def test_released_weights_that_do_not_fit_are_one_line_errors(corpus, tiny_bert_hf_dir, tiny_t5_hf_dir,
                                                             tmp_path, capsys):
    hf_dir, t5_dir = tiny_bert_hf_dir("pretraining", 0), tiny_t5_hf_dir(0)
    capsys.readouterr()  # writing the directories (when this test is the first to) prints progress bars
    code, _ = train_lib.run(bert_flags(tmp_path / "a", 1, f"--gin.train.init_from_hf='{t5_dir}'"))
    assert code == 1 and "holds a prot_t5 model; the model being trained is prot_bert" in one_line_error(capsys)
    code, _ = train_lib.run(bert_flags(tmp_path / "b", 1, f"--gin.train.init_from_hf='{hf_dir}'",
                                       "--gin.BertConfig.intermediate_size=128"))
    line = one_line_error(capsys)
    assert code == 1 and "BertConfig.intermediate_size=64 but the model being trained has 128" in line
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for name in Path(hf_dir).iterdir():
        (swapped / name.name).write_bytes(name.read_bytes())
    tokens = (swapped / "vocab.txt").read_text().splitlines()
    tokens[5], tokens[6] = tokens[6], tokens[5]  # L and A swapped: same shapes, other ids
    (swapped / "vocab.txt").write_text("\n".join(tokens) + "\n")
    code, _ = train_lib.run(bert_flags(tmp_path / "c", 1, f"--gin.train.init_from_hf='{swapped}'"))
    line = one_line_error(capsys)
    assert code == 1 and "tokenizer differs from the task's vocabulary at id 5 ('A' there, 'L' in the task)" in line
    for name in "abc":
        assert not (tmp_path / name / "model.json").exists()  # refused before anything was written


# ------------------------------------------------------------------ ProtElectra end to end

ELECTRA_GIN = "--gin_file=gin/experiments/prot_electra_tiny_sample.gin"
# The tiny HF ELECTRA pair of tests/conftest.py: embeddings 32, discriminator 2 x 32 (4 heads,
# d_ff 64), generator 2 x 16 (2 heads, d_ff 32).
SMALL_ELECTRA = ["--gin.ElectraConfig.embedding_size=32", "--gin.ElectraConfig.hidden_size=32",
                 "--gin.ElectraConfig.intermediate_size=64", "--gin.ElectraConfig.generator_hidden_size=16",
                 "--gin.ElectraConfig.generator_num_heads=2", "--gin.ElectraConfig.generator_intermediate_size=32",
                 "--gin.ElectraConfig.max_position_embeddings=128"]


def electra_flags(model_dir, steps, *extra, **kwargs):
    # One device: what these runs test is the family, not sharding (the BERT and T5 runs do).
    return train_flags(ELECTRA_GIN, model_dir, steps, "short_electra_mlm", *SMALL_ELECTRA, *ONE_DEVICE, *extra,
                 **kwargs)


def test_electra_stop_and_resume_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    """The generator's samples come from each step's rng: a resumed run draws the same ones."""
    straight = run_training(electra_flags(tmp_path / "straight", 6))
    with monkeypatch.context() as patch:  # a preemption after step 3
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        assert run_training(electra_flags(tmp_path / "m", 6))["preempted"]
    resumed = run_training(electra_flags(tmp_path / "m", 6))
    assert resumed["step"] == 6
    assert_trees_equal(resumed["state"], straight["state"])  # bit-identical
    stored = json.loads((tmp_path / "m" / "model.json").read_text())
    assert stored["family"] == "prot_electra" and stored["config"]["generator_hidden_size"] == 16


@pytest.mark.slow
def test_tiny_electra_overfits_32_real_proteins(corpus, tmp_path):
    """gin/models/electra/tiny.gin, with a generator as wide as the discriminator, memorises 32
    proteins: the generator recovers the residues behind the evaluation's [MASK]s, which
    differ from every training mask. The discriminator learns slowest (its replacements become
    the generator's plausible mistakes): in a test's time it learns the replaced fraction, its
    loss from ln 2 to that prior's entropy; finding the replaced tokens takes thousands of
    steps (measured: 1,500 steps, recall 6% at precision 1.0)."""
    result = run_training(train_flags(ELECTRA_GIN, tmp_path, 600, "short_electra_mlm", "--gin.train.eval_interval=600",
                          "--gin.train.log_every=300", "--gin.ElectraConfig.generator_hidden_size=64",
                          "--gin.ElectraConfig.generator_num_heads=4",
                          "--gin.ElectraConfig.generator_intermediate_size=256",
                          "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.02",
                          "--gin.optimizers.warmup_decay_schedule.warmup_steps=50",
                          "--gin.optimizers.warmup_decay_schedule.total_steps=600", *ONE_DEVICE, batch=16))
    before, after = result["eval"][0], result["eval"][-1]
    assert before["masked_accuracy"] < 0.1 and before["discriminator_loss"] > 0.6
    assert after["masked_accuracy"] > 0.6, after
    p = after["replaced_fraction"]
    prior_entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert after["discriminator_loss"] < 1.02 * prior_entropy, (after, prior_entropy)
    assert after["discriminator_accuracy"] >= 1 - p - 0.01, after


def test_continued_pre_training_starts_from_released_electra_weights(corpus, tiny_electra_hf_dir, tmp_path):
    """A directory holding discriminator/ and generator/ (as export_hf writes it) becomes one
    parameter tree with one embedding table."""
    from prottrans_jax.convert.hf_dir import load_hf_dir

    hf_dir = tiny_electra_hf_dir(0)
    run_training(electra_flags(tmp_path, 1, f"--gin.train.init_from_hf='{hf_dir}'",
                         "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.0",
                         "--gin.ElectraConfig.hidden_dropout_prob=0.0",
                         "--gin.ElectraConfig.attention_dropout_prob=0.0"))
    expected = load_hf_dir(hf_dir, param_dtype="float32").params
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(restored_params(tmp_path, 1)), expected)


# ------------------------------------------------------------------ ProtXLNet end to end

XLNET_GIN = "--gin_file=gin/experiments/prot_xlnet_tiny_sample.gin"
# The tiny HF XLNet of tests/conftest.py (TINY_XLNET): 2 layers, 32 wide, 4 heads x 8, d_inner 64.
SMALL_XLNET = ["--gin.XLNetConfig.hidden_size=32", "--gin.XLNetConfig.head_dim=8",
               "--gin.XLNetConfig.intermediate_size=64"]


def xlnet_flags(model_dir, steps, *extra, **kwargs):
    return train_flags(XLNET_GIN, model_dir, steps, "short_permutation_lm", *SMALL_XLNET, *ONE_DEVICE, *extra,
                 **kwargs)


def test_xlnet_stop_and_resume_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    """Each protein's factorisation order comes from seqio's seeds: a resumed run sees the
    same permutations, targets and dropout, so its state is the straight run's, bit for bit."""
    dropout = ["--gin.XLNetConfig.dropout_prob=0.1", "--gin.XLNetConfig.attention_dropout_prob=0.1"]
    straight = run_training(xlnet_flags(tmp_path / "straight", 6, *dropout))
    with monkeypatch.context() as patch:  # a preemption after step 3
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        assert run_training(xlnet_flags(tmp_path / "m", 6, *dropout))["preempted"]
    resumed = run_training(xlnet_flags(tmp_path / "m", 6, *dropout))
    assert resumed["step"] == 6
    assert_trees_equal(resumed["state"], straight["state"])  # bit-identical
    stored = json.loads((tmp_path / "m" / "model.json").read_text())
    assert stored["family"] == "prot_xlnet" and stored["config"]["hidden_size"] == 32
    assert stored["vocabulary"][:9] == ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
    assert straight["feature_lengths"]["perm_mask"] == 64 and straight["feature_lengths"]["targets"] == 10


def test_xlnet_continues_from_hf_weights_and_refuses_another_family(corpus, tiny_bert_hf_dir, tmp_path, capsys):
    """An XLNetLMHeadModel directory with the project's spiece.model starts a run (a zero
    learning rate keeps its weights); a ProtBert directory is a one-line error."""
    from prottrans_jax.convert import xlnet as xlnet_convert
    from tests.conftest import random_hf_xlnet

    hf_dir = tmp_path / "hf"
    random_hf_xlnet("lm", 2).save_pretrained(hf_dir)
    xlnet_convert.write_tokenizer(str(hf_dir))
    run_training(xlnet_flags(tmp_path / "m", 1, f"--gin.train.init_from_hf='{hf_dir}'",
                       "--gin.XLNetConfig.vocab_size=30",
                       "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.0",
                       "--gin.optimizers.warmup_decay_schedule.end_learning_rate=0.0"))
    config = model_dir_lib.read_model(str(tmp_path / "m"), param_dtype="float32").config
    expected = xlnet_convert.hf_to_flax(load_hf_state_dict(str(hf_dir)), config)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(restored_params(tmp_path / "m", 1)), expected)
    bert_dir = tiny_bert_hf_dir()
    capsys.readouterr()  # transformers' save progress bars
    code, _ = train_lib.run(xlnet_flags(tmp_path / "b", 1, f"--gin.train.init_from_hf='{bert_dir}'"))
    assert code == 1 and "holds a prot_bert model; the model being trained is prot_xlnet" in one_line_error(capsys)
    assert not (tmp_path / "b" / "model.json").exists()
