"""The gin entry point end to end: exact resume, overfitting real proteins, one-line errors,
dry runs, and SIGTERM on the real command line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tasks
from prottrans_jax import checkpoints, training
from prottrans_jax import train as train_lib
from prottrans_jax.data.dataset import get_task, task_feature_lengths
from tests.conftest import ONE_DEVICE, assert_trees_equal, one_line_error, run_training

REPO = Path(__file__).resolve().parents[1]
GIN = "--gin_file=gin/experiments/prot_t5_tiny_sample.gin"
SMALLER = ["--gin.T5Config.d_model=32", "--gin.T5Config.head_dim=8", "--gin.T5Config.d_ff=64",
           "--gin.T5Config.num_encoder_layers=1", "--gin.T5Config.num_decoder_layers=1"]


def flags(model_dir, steps, *extra):
    return [GIN, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
            "--gin.MIXTURE_OR_TASK_NAME='short_prott5_denoise'", "--gin.BATCH_SIZE=8",
            "--gin.INPUTS_LENGTH=64", "--gin.train.eval_split='train'",
            "--gin.train.eval_interval=None", "--gin.train.log_every=2", *extra]


@pytest.fixture(scope="module")
def straight_run(corpus, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("straight")
    return model_dir, run_training(flags(model_dir, 6, *SMALLER))


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run(straight_run, tmp_path, monkeypatch):
    _, straight = straight_run
    with monkeypatch.context() as patch:  # a preemption after step 3
        patch.setattr(checkpoints.PreemptionWatcher, "should_stop", lambda self, step: step == 3)
        first = run_training(flags(tmp_path, 6, *SMALLER))
    assert first["preempted"] and first["step"] == 3
    assert checkpoints.Checkpointer(tmp_path).all_steps() == [3]
    resumed = run_training(flags(tmp_path, 6, *SMALLER))
    assert resumed["step"] == 6 and int(resumed["state"]["step"]) == 6
    assert_trees_equal(resumed["state"], straight["state"])  # params, optimizer state: bit-identical
    assert (tmp_path / "operative_config.gin").read_text().count("T5Config.d_model = 32") == 1
    assert "TOTAL" in (tmp_path / "shardings.txt").read_text()


def test_resumed_input_stream_continues_where_it_stopped(corpus):
    lengths = task_feature_lengths(get_task("short_prott5_denoise"), 64)
    straight = training.train_batches("short_prott5_denoise", lengths, 4, seed=5)
    expected = [next(straight) for _ in range(7)][4:]  # crosses an epoch boundary
    resumed = training.train_batches("short_prott5_denoise", lengths, 4, seed=5, start=4)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other_seed = next(training.train_batches("short_prott5_denoise", lengths, 4, seed=6, start=4))
    assert not np.array_equal(other_seed["encoder_input_tokens"], expected[0]["encoder_input_tokens"])


@pytest.mark.slow
def test_tiny_model_overfits_32_real_proteins(corpus, tmp_path):
    result = run_training(flags(tmp_path, 300, "--gin.train.eval_interval=300",
                          "--gin.train.log_every=100", "--gin.T5Config.dropout_rate=0.0", *ONE_DEVICE))
    before, after = result["eval"][0], result["eval"][-1]
    assert before["masked_accuracy"] < 0.2
    assert after["masked_accuracy"] > 0.9, after


@pytest.mark.parametrize("binding, named", [("--gin.train.bogus_setting=1", "bogus_setting"),
                                            ("--gin.NoSuchConfigurable.x=1", "NoSuchConfigurable")])
def test_unknown_gin_binding_is_one_line_naming_the_key(binding, named, tmp_path, capsys):
    assert train_lib.run(flags(tmp_path, 2, binding))[0] == 1
    assert named in one_line_error(capsys)


def test_misspelt_macro_override_is_refused_with_a_suggestion(tmp_path, capsys):
    assert train_lib.run(flags(tmp_path, 2, "--gin.TRAIN_STEPZ=1"))[0] == 1
    line = one_line_error(capsys)
    assert "TRAIN_STEPZ" in line and "did you mean TRAIN_STEPS?" in line
    assert not (tmp_path / "config.gin").exists()  # refused before anything was written


def test_missing_task_names_it_and_the_registered_ones(corpus, tmp_path, capsys):
    code, _ = train_lib.run(flags(tmp_path, 2, "--gin.MIXTURE_OR_TASK_NAME='nope_prott5_denoise'"))
    line = one_line_error(capsys)
    assert code == 1 and "'nope_prott5_denoise'" in line and "short_prott5_denoise" in line


def test_missing_corpus_is_one_line(tmp_path, capsys):
    tasks.register_corpus("ghost", tmp_path / "not_built", ("prott5_denoise",))
    code, _ = train_lib.run(flags(tmp_path / "model", 2, *SMALLER,
                                  "--gin.MIXTURE_OR_TASK_NAME='ghost_prott5_denoise'"))
    assert code == 1 and "no built corpus here" in one_line_error(capsys)


@pytest.mark.slow
def test_another_models_checkpoint_in_model_dir_is_refused(straight_run, capsys):
    model_dir, _ = straight_run
    code, _ = train_lib.run(flags(model_dir, 8, *SMALLER, "--gin.T5Config.d_model=48"))
    line = one_line_error(capsys)
    assert code == 1 and "does not match the model being trained" in line and "48" in line


def test_dry_run_reports_memory_and_enforces_the_budget(corpus, tmp_path, capsys):
    code, result = train_lib.run(flags(tmp_path, 2, "--gin.train.dry_run=True"))
    assert code == 0 and result["num_params"] == 246_784
    out = capsys.readouterr().out
    assert "per device: params" in out and "TOTAL" in out
    assert not (tmp_path / "config.gin").exists()  # nothing written, nothing compiled
    code, _ = train_lib.run(flags(tmp_path, 2, "--gin.train.dry_run=True",
                                  "--gin.train.hbm_budget_gib=1e-6"))
    assert code == 1 and "over the 1e-06 GiB budget" in one_line_error(capsys)


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_state(corpus, tmp_path,
                                                                            capsys):
    # An infinite z-loss weight makes the very first loss non-finite.
    code, result = train_lib.run(flags(tmp_path, 4, *SMALLER,
                                       "--gin.EncoderDecoderModel.z_loss=1e999"))
    assert code == 1 and result["halted"] and result["step"] == 0
    assert "non-finite loss or gradient at step 1" in one_line_error(capsys)
    assert checkpoints.Checkpointer(tmp_path).all_steps() == [0]


@pytest.mark.slow
def test_command_line_sigterm_checkpoints_and_exits_cleanly(corpus, tmp_path):
    env = {**os.environ, "PROTTRANS_SAMPLE_CORPUS_DIR": str(corpus), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    argv = [sys.executable, "-m", "prottrans_jax.train", GIN, f"--gin.MODEL_DIR='{tmp_path}'",
            "--gin.TRAIN_STEPS=100000", "--gin.BATCH_SIZE=8", "--gin.INPUTS_LENGTH=64",
            "--gin.train.eval_interval=None", "--gin.train.log_every=50", *SMALLER]
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step 50/") or time.time() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    lines.append(output)
    text = "".join(lines)
    assert process.returncode == 0, text
    assert "stop requested: checkpoint saved at step" in text
    steps = checkpoints.Checkpointer(tmp_path).all_steps()
    assert len(steps) == 1 and 50 <= steps[0] < 100000
    for name in ("config.gin", "operative_config.gin", "shardings.txt"):
        assert (tmp_path / name).exists()
    assert list((tmp_path / "train").glob("events.out.tfevents.*"))
    assert "step 50/100000  loss" in text


def test_command_line_bad_binding_exits_1(tmp_path):
    process = subprocess.run([sys.executable, "-m", "prottrans_jax.train", GIN,
                              "--gin.train.not_a_parameter=3"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 1
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not_a_parameter" in errors[0]


def test_an_incomplete_or_damaged_corpus_is_a_one_line_error(corpus, tmp_path, capsys):
    """A missing shard once trained silently on the rest, a torn stats.json and a truncated
    shard ended in tracebacks: now one line each, naming the file, and nothing trained."""
    import json
    import shutil

    def run_on(name, damage):
        copy = tmp_path / name
        shutil.copytree(corpus, copy)
        damage(copy)
        tasks.register_corpus(name, copy)
        code, _ = train_lib.run([GIN, f"--gin.MODEL_DIR='{tmp_path / (name + '_model')}'", "--gin.TRAIN_STEPS=2",
                                 f"--gin.MIXTURE_OR_TASK_NAME='{name}_prott5_denoise'", "--gin.BATCH_SIZE=8",
                                 "--gin.INPUTS_LENGTH=64", "--gin.train.eval_split='train'",
                                 "--gin.train.eval_interval=None", *SMALLER, *ONE_DEVICE])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    def cut_in_half(path):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    def lose_a_shard(directory):  # a 2-shard corpus whose second train shard is gone
        stats = json.loads((directory / "stats.json").read_text())
        (directory / "stats.json").write_text(json.dumps(stats | {"config": stats["config"] | {"num_shards": 2}}))
        for split in ("train", "validation"):
            (directory / f"{split}.tfrecord-00000-of-00001").rename(directory / f"{split}.tfrecord-00000-of-00002")
        (directory / "validation.tfrecord-00001-of-00002").write_bytes(b"")

    line = run_on("missing_shard", lose_a_shard)
    assert "train.tfrecord-00001-of-00002: missing (1 of the 2 train shards that stats.json lists)" in line
    line = run_on("torn_stats", lambda d: cut_in_half(d / "stats.json"))
    assert "stats.json: not a complete stats.json (JSONDecodeError" in line
    line = run_on("truncated_shard", lambda d: cut_in_half(d / "train.tfrecord-00000-of-00001"))
    assert "a corpus shard is truncated or corrupt" in line


def test_a_machine_without_a_gpu_shows_no_cuda_noise(tmp_path):
    """`E0000 ... failed call to cuInit` once printed on every command of a CPU machine."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = "import prottrans_jax, tensorflow as tf; print([int(x) for x in tf.data.Dataset.range(2)])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "[0, 1]", result.stderr
    assert "cuInit" not in result.stderr, result.stderr


def test_a_bug_keeps_its_traceback_and_a_user_mistake_is_one_line(tmp_path, monkeypatch, capsys):
    """A bare ValueError once counted as the user's fault: a bug inside training ended in one
    line with no traceback. Only UserError (and file-system errors) are the user's now."""
    from prottrans_jax.errors import UserError

    def buggy_train():
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(train_lib, "train", buggy_train)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        train_lib.run(flags(tmp_path, 2))

    def refused_train():
        raise UserError("MODEL_DIR x is a file, not a directory")

    monkeypatch.setattr(train_lib, "train", refused_train)
    assert train_lib.run(flags(tmp_path, 2))[0] == 1
    assert one_line_error(capsys) == "error: MODEL_DIR x is a file, not a directory"


def test_sigterm_is_saved_within_a_few_steps_of_the_signal(corpus, tmp_path, monkeypatch, capsys):
    """A SIGTERM's save once waited for every step the loop had dispatched ahead of the
    device (about 35 on a CPU; a spot preemption gives 30 s). Now at most
    `max_steps_in_flight` steps are pending when the signal arrives (asserted), so the
    checkpoint follows the signal by a few steps plus the write itself (printed)."""
    from prottrans_jax import trainer as trainer_lib

    times, pending = {"steps": []}, []
    real_step, real_save = trainer_lib.Trainer.train_step, checkpoints.Checkpointer.save_now

    def step_then_signal(self, *args):
        result = real_step(self, *args)
        times["steps"].append(time.perf_counter())
        if len(times["steps"]) == 40:
            pending.append(self.steps_in_flight())
            times["signal"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    def timed_save(self, *args, **kwargs):
        started = time.perf_counter()
        saved = real_save(self, *args, **kwargs)
        times.setdefault("saves", []).append((started, time.perf_counter()))
        return saved

    monkeypatch.setattr(trainer_lib.Trainer, "train_step", step_then_signal)
    monkeypatch.setattr(checkpoints.Checkpointer, "save_now", timed_save)
    result = run_training(flags(tmp_path, 100000, *SMALLER, *ONE_DEVICE, "--gin.train.log_every=100000",
                          "--gin.train.checkpoint_interval=100000"))
    assert result["preempted"] and result["step"] == 40
    assert "stop requested: checkpoint saved at step 40" in capsys.readouterr().out
    assert pending[0] <= 2
    step_seconds = float(np.median(np.diff(times["steps"][10:40])))
    (_, saved), = [s for s in times["saves"] if s[0] > times["signal"]]
    # The exact checks are above: at most 2 steps in flight at the signal, none dispatched
    # after it (the run stopped at step 40). The delay is printed, not bounded: the old wait
    # (~35 steps of ~15 ms) is smaller than what a loaded 2-core machine adds to a save
    # (0.3-2.4 s measured), so a time bound could only flake.
    print(f"SIGTERM -> saved: {saved - times['signal']:.3f} s; one step {step_seconds * 1e3:.1f} ms; "
          f"{pending[0]} steps pending at the signal")
