"""ProtAlbert through the one trainer: bit-identical stop and resume, learning 32 real
proteins, and continued pre-training from Hugging Face ALBERT weights."""

import json

import jax
import numpy as np
import pytest

from prottrans_jax import checkpoints, model_dir as model_dir_lib
from prottrans_jax.convert import albert as albert_convert
from prottrans_jax.convert.hf_io import load_hf_state_dict
from tests.conftest import ONE_DEVICE, assert_trees_equal, run_training, train_flags

ALBERT_GIN = "--gin_file=gin/experiments/prot_albert_tiny_sample.gin"
# The tiny HF ALBERT of tests/conftest.py (TINY_ALBERT): E 16, one shared layer 64 wide run
# 3 times, 4 heads, d_ff 128, 128 positions.
SMALL_ALBERT = ["--gin.AlbertConfig.embedding_size=16", "--gin.AlbertConfig.num_layers=3",
                "--gin.AlbertConfig.intermediate_size=128", "--gin.AlbertConfig.max_position_embeddings=128"]


def albert_flags(model_dir, steps, *extra, **kwargs):
    return train_flags(ALBERT_GIN, model_dir, steps, "short_albert_mlm", *SMALL_ALBERT, *extra, **kwargs)


def test_albert_stop_and_resume_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    dropout = ["--gin.AlbertConfig.hidden_dropout_prob=0.1", *ONE_DEVICE]  # resuming, not sharding, is tested
    straight = run_training(albert_flags(tmp_path / "straight", 6, *dropout))
    with monkeypatch.context() as patch:  # a preemption after step 3
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        assert run_training(albert_flags(tmp_path / "resumed", 6, *dropout))["preempted"]
    resumed = run_training(albert_flags(tmp_path / "resumed", 6, *dropout))
    assert resumed["step"] == 6
    assert_trees_equal(resumed["state"], straight["state"])  # bit-identical, dropout included
    stored = json.loads((tmp_path / "resumed" / "model.json").read_text())
    assert stored["family"] == "prot_albert" and stored["config"]["embedding_size"] == 16
    assert stored["vocabulary"][:5] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.slow
def test_tiny_albert_overfits_32_real_proteins(corpus, tmp_path):
    """gin/models/albert/tiny.gin, E 64 and its shared layer run twice, memorises 32 proteins:
    the residues behind the [MASK] tokens of the evaluation masks, which differ from every
    training mask, come back. ALBERT learns them more slowly than BERT's unshared layers and
    its 32-wide E: measured 0.33 at tiny.gin's own sizes after 500 steps, 0.60 after 1,000;
    here 0.60 after 600 (threshold 0.5: 98 hidden residues); at learning rate 0.03 it diverges."""
    result = run_training(train_flags(ALBERT_GIN, tmp_path, 600, "short_albert_mlm", "--gin.train.eval_interval=600",
                          "--gin.train.log_every=300", "--gin.AlbertConfig.embedding_size=64",
                          "--gin.AlbertConfig.num_layers=2",
                          "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.02",
                          "--gin.optimizers.warmup_decay_schedule.warmup_steps=50",
                          "--gin.optimizers.warmup_decay_schedule.total_steps=600", *ONE_DEVICE,
                          batch=16))
    before, after = result["eval"][0], result["eval"][-1]
    assert before["masked_accuracy"] < 0.1
    assert after["masked_accuracy"] > 0.5, after


def test_continued_pre_training_starts_from_released_albert_weights(corpus, tiny_albert_hf_dir, tmp_path):
    hf_dir = tiny_albert_hf_dir("pretraining", 0)
    run_training(albert_flags(tmp_path, 1, f"--gin.train.init_from_hf='{hf_dir}'", *ONE_DEVICE,
                        "--gin.optimizers.warmup_decay_schedule.peak_learning_rate=0.0"))
    config = model_dir_lib.read_model(str(tmp_path), param_dtype="float32").config
    assert config.pretraining_heads and config.scan_layers is False
    expected = albert_convert.hf_to_flax(load_hf_state_dict(hf_dir), config)
    stored = model_dir_lib.read_model(str(tmp_path))
    restored = model_dir_lib.restore_params(str(tmp_path), stored, step=1)[0]
    # A zero learning rate: after one step the parameters are still the released ones.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(restored), expected)


@pytest.mark.parametrize("phase, steps, batch, length, cap", [(1, 150000, 10240, 512, 20), (2, 300000, 2560, 2048, 80)])
def test_the_paper_recipe_parses_with_the_released_model(phase, steps, batch, length, cap):
    import gin

    from prottrans_jax.models.albert import AlbertConfig
    from prottrans_jax.models.gin_utils import REPO_ROOT, add_search_paths

    add_search_paths([REPO_ROOT])
    gin.parse_config_files_and_bindings([f"gin/experiments/prot_albert_phase{phase}.gin"], ["MODEL_DIR = 'unused'"])
    assert [gin.query_parameter(f"%{name}") for name in ("TRAIN_STEPS", "BATCH_SIZE", "INPUTS_LENGTH")] == \
        [steps, batch, length]
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "uniref100_albert_mlm"
    assert gin.query_parameter("bert_mlm.max_predictions_per_seq") == cap
    assert gin.query_parameter("optimizers.warmup_decay_schedule.warmup_steps") == 42000
    assert gin.query_parameter("optimizers.lamb.tf_albert") is True
    config = AlbertConfig()
    assert (config.hidden_size, config.num_layers, config.scan_layers) == (4096, 12, True)
