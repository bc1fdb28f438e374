"""Multi-host training proven on CPU: 2 local processes joined by jax.distributed (gloo).

Each process has 2 CPU devices, so the job's mesh is (4, 1) across 2 hosts, each host
feeding only its own rows of every global batch. Two claims:

1. Training with the data-parallel and FSDP rule sets gives the parameters a single-device
   run gives on the same global batches (to float32 reduction-order noise).
2. Through the real entry point (prottrans_jax.train), SIGTERM to one host at a random step
   makes both hosts checkpoint the same step and exit 0; the restarted job ends with a
   state bit-identical to an uninterrupted job's.

The processes listen on 127.0.0.1 only and are killed (whole process group) on timeout.
"""

import gzip
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from prottrans_jax import partitioning
from prottrans_jax.fasta import read_fasta
from tests import multihost_worker
from tests.conftest import SAMPLE, run_build

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
TIMEOUT_S = 420  # per job; a loaded 2-core machine compiles slowly


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_job(mode: str, log_prefix: Path, worker_args=(), train_flags=(), env_extra=None):
    """Starts the processes of one local multi-host job; returns their Popen objects."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **(env_extra or {})}
    procs = []
    for process_id in range(NUM_PROCESSES):
        command = [sys.executable, "-m", "tests.multihost_worker", mode,
                   "--coordinator_address", f"127.0.0.1:{port}",
                   "--num_processes", str(NUM_PROCESSES), "--process_id", str(process_id),
                   *worker_args]
        if train_flags:
            command += ["--", *train_flags]
        log = open(f"{log_prefix}.{process_id}.log", "w")  # noqa: SIM115 (closed in finish_job)
        procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        procs[-1].log = log
    return procs


def log_text(proc) -> str:
    return Path(proc.log.name).read_text()


def kill_job(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
            proc.wait()
        proc.log.close()


def finish_job(procs, timeout=TIMEOUT_S) -> list[str]:
    """Waits for every process; returns their logs; fails (after killing) on timeout or error."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        kill_job(procs)
        pytest.fail("multi-host job timed out:\n" + "\n".join(log_text(p)[-2000:] for p in procs))
    kill_job(procs)
    logs = [log_text(p) for p in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, f"process exited {proc.returncode}:\n{log[-3000:]}"
    return logs


def wait_for_line(procs, pattern: str, timeout=TIMEOUT_S) -> re.Match:
    """Polls process 0's log for a line matching `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log_text(procs[0]), re.MULTILINE)
        if match:
            return match
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    kill_job(procs)
    pytest.fail(f"never saw {pattern!r}:\n{log_text(procs[0])[-3000:]}")


# ------------------------------------------------------------------ 1. equality


@pytest.mark.slow
def test_two_hosts_train_like_one_device_with_data_parallel_and_fsdp(tmp_path):
    steps = 3
    procs = start_job("steps", tmp_path / "steps",
                      worker_args=["--steps", str(steps), "--out", str(tmp_path)])
    try:
        # The single-device reference on the same global batches, while the job runs.
        single = partitioning.Partitioner(mesh_shape=(1, 1), devices=jax.devices()[:1])
        expected, expected_losses = multihost_worker.train_steps(single, steps)
    except BaseException:
        kill_job(procs)
        raise
    logs = finish_job(procs)

    for process_id, log in enumerate(logs):
        assert f"process {process_id}/2" in log and "4 devices" in log
        # Each host fed its own half of every batch, under both rule sets.
        assert log.count(f"reads input shard {process_id} of 2") == 2, log[-2000:]
    assert expected_losses[-1] < expected_losses[0]  # it trained
    for name in multihost_worker.RULE_SET_NAMES:
        got = np.load(tmp_path / f"{name}.npz")
        np.testing.assert_allclose(got["losses"], expected_losses, rtol=1e-6, err_msg=name)
        assert sorted(set(got.files) - {"losses"}) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5, err_msg=f"{name} {key}")


# ------------------------------------------------------------------ 2. SIGTERM and resume


@pytest.fixture(scope="module")
def two_shard_corpus(tmp_path_factory):
    """256 real sample proteins under 200 residues, 2 train shards (one per host)."""
    root = tmp_path_factory.mktemp("multihost_corpus")
    records = [r for r in read_fasta(SAMPLE) if len(r.sequence) < 200][:256]
    with gzip.open(root / "short.fasta.gz", "wt") as handle:
        for record in records:
            handle.write(f">{record.id}\n{record.sequence}\n")
    run_build([root / "short.fasta.gz"], root / "corpus", num_shards=2, validation_fraction=0.0)
    return root / "corpus"


# Tiny ProtXLNet with memory as XLNet trains: each host reads its own stream rows, seeds their
# factorisation orders by host and batch, and carries their memory. The test costs 6 process
# starts (~2 minutes of a 2-core machine), so this is the one family run here: its path holds
# every other family's (the same trainer loop, checkpoint and input position; ProtTXL's carry
# is the same per-row memory, without the host-seeded orders). Those restart bit-identically
# on one host (test_train_cli.py, test_train_families.py, test_train_txl.py, ...), their
# carry is sharded along the batch like one device's (test_train_txl.py), and two hosts train
# like one device (above).
XLNET_FLAGS = ["--gin_file=gin/experiments/prot_xlnet_tiny_sample.gin", "--gin.INPUTS_LENGTH=32",
               "--gin.MIXTURE_OR_TASK_NAME='sample_permutation_lm_stream'", "--gin.XLNetConfig.mem_len=32",
               "--gin.XLNetConfig.reuse_len=16", "--gin.permutation_lm_settings.reuse_len=16",
               "--gin.permutation_lm_settings.perm_size=16", "--gin.XLNetConfig.num_layers=1",
               "--gin.XLNetConfig.hidden_size=32", "--gin.XLNetConfig.head_dim=8",
               "--gin.XLNetConfig.intermediate_size=64",
               "--gin.XLNetConfig.dropout_prob=0.1", "--gin.XLNetConfig.attention_dropout_prob=0.1"]


def train_flags(model_dir: Path, train_steps: int) -> list[str]:
    """A tiny model on the sample task; a console line every step, saves only at the end or
    on SIGTERM."""
    return [*XLNET_FLAGS, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={train_steps}",
            "--gin.BATCH_SIZE=8", "--gin.train.log_every=1", "--gin.train.eval_interval=None",
            "--gin.train.checkpoint_interval=1000"]


def read_state(model_dir: Path, step: int, item: str = "state") -> dict:
    """The checkpointed {"step", "params", "opt_state"} of `step` (or another item: "carry"),
    as numpy arrays."""
    path = model_dir / str(step) / item
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, restore_args=restore_args)


def saved_steps(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigterm_on_one_host_then_restart_ends_bit_identical(tmp_path, two_shard_corpus):
    # Steps take ~0.2 s: the remaining ones leave seconds for the notice to reach every host
    # (a loaded machine once ran all of a 7-step job before it arrived).
    total = 20
    stop_after = random.randint(1, 3)
    env = {"PROTTRANS_SAMPLE_CORPUS_DIR": str(two_shard_corpus)}
    straight_dir, stopped_dir = tmp_path / "straight", tmp_path / "stopped"
    straight = start_job("train", tmp_path / "straight", env_extra=env,
                         train_flags=train_flags(straight_dir, total))
    stopped = start_job("train", tmp_path / "stopped", env_extra=env,
                        train_flags=train_flags(stopped_dir, total))
    try:
        wait_for_line(stopped, rf"^step {stop_after}/{total} ")
        # A preemption notice reaches one host; JAX's preemption service makes all agree.
        stopped[1].send_signal(signal.SIGTERM)
        stopped_logs = finish_job(stopped)
        straight_logs = finish_job(straight)
    finally:
        kill_job(straight + stopped)

    message = re.search(r"stop requested: checkpoint saved at step (\d+)", stopped_logs[0])
    assert message, stopped_logs[0][-3000:]
    stopped_at = int(message.group(1))
    where = f"SIGTERM after step {stop_after}, checkpoint at step {stopped_at}"
    assert stop_after <= stopped_at < total, where
    assert saved_steps(stopped_dir) == [stopped_at], where
    assert f"step {total}/{total} " not in stopped_logs[0]

    resumed = start_job("train", tmp_path / "resumed", env_extra=env,
                        train_flags=train_flags(stopped_dir, total))
    resumed_logs = finish_job(resumed)
    assert f"resuming from step {stopped_at} ({stopped_at} batches consumed)" in resumed_logs[0]
    assert saved_steps(stopped_dir) == [stopped_at, total]
    assert saved_steps(straight_dir) == [total]

    want, got = read_state(straight_dir, total), read_state(stopped_dir, total)
    assert int(got["step"]) == total
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, value), other in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                                    jax.tree.leaves(got)):
        np.testing.assert_array_equal(other, value, err_msg=f"{where}: {path}")
    # And the memory each host's rows carry, restored at the restart.
    want, got = read_state(straight_dir, total, "carry"), read_state(stopped_dir, total, "carry")
    assert want["valid"].shape == (8, 32) and want["valid"].all()
    for key in ("memory", "valid"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{where}: carry {key}")
    # The console agrees: the final step's loss is printed identically.
    last_line = rf"^step {total}/{total}  loss (\S+)"
    assert (re.search(last_line, resumed_logs[0], re.MULTILINE).group(1)
            == re.search(last_line, straight_logs[0], re.MULTILINE).group(1))
