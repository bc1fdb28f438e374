"""`make demo`'s training part end to end (a few steps), and the interval behind its verdict."""

import pytest

import tasks
from prottrans_jax import demo
from prottrans_jax.demo import wilson_interval
from tests.conftest import SAMPLE, run_build


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = wilson_interval(0.112, 4248)  # the demo's validation split at 256 tokens
    assert low == pytest.approx(0.1028, abs=1e-3) and high == pytest.approx(0.1220, abs=1e-3)
    assert wilson_interval(0.0, 50)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.fixture
def sample_corpus(tmp_path):
    """The bundled sample built as `make demo` builds it, registered as `sample` meanwhile."""
    run_build([SAMPLE], tmp_path / "corpus", num_shards=4, validation_fraction=0.05)
    tasks.register_corpus("sample", tmp_path / "corpus")
    yield tmp_path / "corpus"
    tasks.register_corpus("sample", tasks.SAMPLE_CORPUS_DIR)


def test_demo_trains_and_reports_against_the_baseline(sample_corpus, tmp_path, capsys):
    code = demo.main([f"--model_dir={tmp_path / 'model'}", "--gin.TRAIN_STEPS=4",
                      "--gin.INPUTS_LENGTH=32", "--gin.train.eval_interval=2",
                      "--gin.train.log_every=2", "--gin.T5Config.num_encoder_layers=1",
                      "--gin.T5Config.num_decoder_layers=1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "=== tiny prot_t5 on sample_prott5_denoise" in out
    assert "masked-token accuracy  step 0:" in out and "step 4:" in out and "95% CI" in out
    assert "frequency baseline: always 'L'" in out
    assert "not distinguishable from the frequency baseline" in out  # 4 steps learn nothing
    assert "masked_residue_baselines.py --inputs_length 32" in out
    assert (tmp_path / "model" / "4").is_dir()  # the final checkpoint


def test_a_models_own_baseline_is_reported_with_its_interval():
    """ELECTRA's discriminator beside always saying "original" (`metric_baselines`)."""
    from prottrans_jax.models.electra import ElectraPretrainModel

    first = {"step": 0, "discriminator_accuracy": 0.60}
    last = {"step": 2000, "discriminator_accuracy": 0.95, "discriminator_accuracy_count": 4000.0,
            "replaced_fraction": 0.10}
    lines = demo._model_baselines(ElectraPretrainModel(), first, last)
    assert "step 2000: 95.0% (95% CI 94.3%-95.6%); baseline always 'original' 90.0%" in lines[0]
    assert lines[1] == "discriminator_accuracy is above its baseline at 95% confidence."
    assert demo._model_baselines(object(), first, last) == []  # a model without one

