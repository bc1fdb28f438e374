"""tpu_launch/: the gcloud commands each script prints with --dry-run for the documented
configurations, shellcheck on every script, and train.sh's restart loop run against a fake
gcloud that executes the workers' command locally (no GCP account needed)."""

import json
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "tpu_launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
XL_GIN = "gin/experiments/prot_t5_xl_uniref50.gin"

# The documented deployments: (config, TPU name, zone, accelerator, runtime, provisioning).
CONFIGS = {
    "v4-32": ("prott5-xl-v4-32", "us-central2-b", "v4-32", "tpu-ubuntu2204-base", "on-demand",
              "gs://my-prottrans-bucket/models/prot_t5_xl_uniref50_v4_32"),
    "v5e-64": ("prott5-xl-v5e-64", "us-west4-a", "v5litepod-64", "v2-alpha-tpuv5-lite", "spot",
               "gs://my-prottrans-bucket-us-west4/models/prot_t5_xl_uniref50_v5e_64"),
    "v5p-128": ("prott5-xl-v5p-128", "us-east5-a", "v5p-128", "v2-alpha-tpuv5", "reserved",
                "gs://my-prottrans-bucket-us-east5/models/prot_t5_xl_uniref50_v5p_128"),
}
PROJECT = "--project=my-gcp-project"


def launch(script, config, *args, env=None, check=True):
    result = subprocess.run(["bash", str(LAUNCH / script), "--config", str(config), *args],
                            capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def dry_run(script, name, *args) -> list[list[str]]:
    """The commands a script prints with --dry-run, each split as the shell would."""
    out = launch(script, LAUNCH / "configs" / f"{name}.env", "--dry-run", *args).stdout
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def command_flag(argv: list[str]) -> str:
    (flag,) = [a for a in argv if a.startswith("--command=")]
    return flag[len("--command="):]


def test_every_script_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install -y shellcheck)")
    assert len(SCRIPTS) == 8, [s.name for s in SCRIPTS]
    result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], cwd=LAUNCH,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for script in SCRIPTS:
        text = script.read_text()
        assert "set -euo pipefail" in text or script.name == "lib.sh", script.name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_create_and_delete_commands(name):
    tpu, zone, accelerator, runtime, provisioning, _ = CONFIGS[name]
    where = [PROJECT, f"--zone={zone}"]
    create = dry_run("create.sh", name)
    delete = dry_run("delete.sh", name)
    if provisioning == "spot":
        queued = f"{tpu}-qr"
        assert create == [
            ["gcloud", "compute", "tpus", "queued-resources", "create", queued, *where,
             f"--node-id={tpu}", f"--accelerator-type={accelerator}",
             f"--runtime-version={runtime}", "--spot"],
            ["gcloud", "compute", "tpus", "queued-resources", "describe", queued, *where,
             "--format=value(state.state)"]]
        assert delete == [["gcloud", "compute", "tpus", "queued-resources", "delete", queued,
                           *where, "--force", "--quiet"]]
    else:
        reserved = ["--reserved"] if provisioning == "reserved" else []
        assert create == [
            ["gcloud", "compute", "tpus", "tpu-vm", "create", tpu, *where,
             f"--accelerator-type={accelerator}", f"--version={runtime}", *reserved],
            ["gcloud", "compute", "tpus", "tpu-vm", "describe", tpu, *where,
             "--format=value(state)"]]
        assert delete == [["gcloud", "compute", "tpus", "tpu-vm", "delete", tpu, *where,
                           "--quiet"]]
    assert dry_run("create.sh", name, "--no-wait") == create[:1]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ssh_logs_and_tensorboard_commands(name):
    tpu, zone, *_, model_dir = CONFIGS[name]
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, PROJECT, f"--zone={zone}"]
    assert dry_run("ssh.sh", name) == [ssh + ["--worker=0"]]
    assert dry_run("ssh.sh", name, "--worker=all", "--", "df", "-h") == [
        ssh + ["--worker=all", "--command=df -h"]]
    assert dry_run("logs.sh", name, "--worker=all", "--lines=20", "--follow") == [
        ssh + ["--worker=all", "--command=tail -n 20 -F ~/prottrans-logs/train.log"]]
    # TensorBoard listens on the worker's loopback only; the tunnel binds local loopback only.
    assert dry_run("tensorboard.sh", name, "--port=7007") == [
        ssh + ["--worker=0",
               f"--command=~/prottrans-venv/bin/tensorboard --logdir={model_dir} "
               "--host=127.0.0.1 --port=6006",
               "--", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:7007:127.0.0.1:6006"]]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_setup_installs_the_commit_on_every_worker(name):
    tpu, zone, *_ = CONFIGS[name]
    (argv,) = dry_run("setup.sh", name)
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, PROJECT,
                        f"--zone={zone}", "--worker=all"]
    script = command_flag(argv)
    steps = script.split("; ")
    assert steps[0] == "set -euo pipefail"
    assert "git clone --quiet https://github.com/my-org/prottrans-jax.git ~/prottrans-jax" in script
    assert "git checkout --quiet --detach main" in steps
    assert "python3.11 -m venv ~/prottrans-venv" in script
    assert "~/prottrans-venv/bin/pip install --quiet -e '.[tpu]'" in steps
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0  # valid bash


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_train_passes_gin_flags_through_on_every_worker(name):
    tpu, zone, *_, model_dir = CONFIGS[name]
    (argv,) = dry_run("train.sh", name, "--gin.TRAIN_STEPS=100",
                      "--gin_file=gin/partitioning/fsdp.gin", "--gin.train.dry_run=True")
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, PROJECT,
                        f"--zone={zone}", "--worker=all"]
    script = command_flag(argv)
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    (train_step,) = [s for s in script.split("; ") if "prottrans_jax.train" in s]
    train_argv = shlex.split(train_step.split(" 2>&1 |")[0])
    assert train_argv == ["~/prottrans-venv/bin/python", "-m", "prottrans_jax.train",
                          f"--gin_file={XL_GIN}", f"--gin.MODEL_DIR='{model_dir}'",
                          "--gin.TRAIN_STEPS=100", "--gin_file=gin/partitioning/fsdp.gin",
                          "--gin.train.dry_run=True"]
    assert f"{model_dir}/logs/$(hostname)-" in script  # per-worker log copies in MODEL_DIR


def test_bad_arguments_and_configs_are_refused(tmp_path):
    config = LAUNCH / "configs" / "v4-32.env"
    result = launch("train.sh", config, "--dry-run", "--epochs=3", check=False)
    assert result.returncode == 1 and "unknown argument --epochs=3" in result.stderr
    broken = tmp_path / "broken.env"
    broken.write_text(config.read_text().replace("PROVISIONING=on-demand", "PROVISIONING=cheap"))
    result = launch("create.sh", broken, "--dry-run", check=False)
    assert result.returncode == 1 and "PROVISIONING must be spot, reserved or on-demand" in result.stderr
    broken.write_text(config.read_text().replace("MODEL_DIR=gs://", "MODEL_DIR=/tmp/"))
    result = launch("create.sh", broken, "--dry-run", check=False)
    assert result.returncode == 1 and "MODEL_DIR must be a gs:// URL" in result.stderr


@pytest.mark.parametrize("script", ["train.sh", "tensorboard.sh"])
def test_values_that_reach_the_workers_shell_cannot_run_commands(script, tmp_path):
    """MODEL_DIR, RUN_ID and ports go into the command line every worker runs."""
    config = LAUNCH / "configs" / "v4-32.env"
    injected = tmp_path / "injected.env"
    injected.write_text(config.read_text() + '\nMODEL_DIR="gs://bucket/m;touch ~/PWNED;"\n')
    result = launch(script, injected, "--dry-run", check=False)
    assert result.returncode == 1 and "MODEL_DIR 'gs://bucket/m;touch ~/PWNED;'" in result.stderr
    assert "may hold only letters, digits and . _ / - after gs://" in result.stderr
    assert "PWNED" not in result.stdout
    if script == "train.sh":
        env = {**os.environ, "RUN_ID": "x;touch ~/PWNED"}
        result = launch(script, config, "--dry-run", env=env, check=False)
        assert result.returncode == 1 and "RUN_ID 'x;touch ~/PWNED' may hold only" in result.stderr
    else:
        result = launch(script, config, "--dry-run", "--port=6006;id", check=False)
        assert result.returncode == 1 and "a port must be a number, not '6006;id'" in result.stderr


# ------------------------------------------------------------------ restart loop, fake gcloud

FAKE_GCLOUD = r'''#!/usr/bin/env python3
"""Stands in for gcloud: logs its arguments; `describe` answers the next queued state;
`ssh --command=...` for a training run executes the command locally (HOME = fake worker)."""
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
if "describe" in args:
    states = open(os.environ["FAKE_STATES"]).read().split()
    print(states[0] if states else "ACTIVE")
    open(os.environ["FAKE_STATES"], "w").write("\n".join(states[1:]))
command = [a[len("--command="):] for a in args if a.startswith("--command=")]
if command and "prottrans_jax.train" in command[0]:
    sys.exit(subprocess.run(["bash", "-c", command[0]]).returncode)
'''

FAKE_TRAINER = r'''#!/usr/bin/env python3
"""Stands in for the venv's python: records its arguments; the first run is 'preempted'."""
import json, os, sys
runs = os.path.join(os.environ["HOME"], "runs.jsonl")
previous = open(runs).read().count("\n") if os.path.exists(runs) else 0
open(runs, "a").write(json.dumps(sys.argv[1:]) + "\n")
if previous == 0:
    print("stop requested: checkpoint saved at step 5; restart to resume")
else:
    print("step 10/10  loss 1.0")
'''


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _fake_worker(tmp_path: Path, trainer_script: str) -> tuple[Path, Path]:
    """A fake `gcloud` on PATH and a worker home whose venv python runs `trainer_script`."""
    bin_dir, home = tmp_path / "bin", tmp_path / "worker_home"
    bin_dir.mkdir()
    (home / "prottrans-jax").mkdir(parents=True)
    (home / "prottrans-venv" / "bin").mkdir(parents=True)
    _executable(bin_dir / "gcloud", FAKE_GCLOUD)
    _executable(home / "prottrans-venv" / "bin" / "python", trainer_script)
    return bin_dir, home


def test_resume_loop_restarts_after_preemption_until_the_job_finishes(tmp_path):
    bin_dir, home = _fake_worker(tmp_path, FAKE_TRAINER)
    gcloud_log, states = tmp_path / "gcloud.jsonl", tmp_path / "states"
    # After the first (preempted) run the spot slice is found SUSPENDED: it must be deleted,
    # created again, waited for (ACTIVE) and set up before the second run.
    states.write_text("SUSPENDED\nACTIVE\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
           "FAKE_GCLOUD_LOG": str(gcloud_log), "FAKE_STATES": str(states),
           "RESTART_DELAY_S": "0", "RUN_ID": "test"}
    result = launch("train.sh", LAUNCH / "configs" / "v5e-64.env", "--resume-loop",
                    "--max-restarts=3", "--gin.TRAIN_STEPS=10", env=env)
    assert "training finished" in result.stderr

    runs = [json.loads(line) for line in (home / "runs.jsonl").read_text().splitlines()]
    model_dir = CONFIGS["v5e-64"][-1]
    assert runs == 2 * [["-m", "prottrans_jax.train", f"--gin_file={XL_GIN}",
                         f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=10"]]
    assert "step 10/10" in (home / "prottrans-logs" / "train.log").read_text()

    calls = [json.loads(line) for line in gcloud_log.read_text().splitlines()]
    verbs = ["storage cp" if c[0] == "storage" else " ".join(c[2:4]) for c in calls]
    assert verbs == ["tpu-vm ssh",                      # run 1: preempted (exit 75)
                     "storage cp",                      # its log copied to MODEL_DIR/logs
                     "queued-resources describe",       # SUSPENDED
                     "queued-resources delete",
                     "queued-resources create",
                     "queued-resources describe",       # ACTIVE
                     "tpu-vm ssh",                      # setup on the new slice
                     "tpu-vm ssh",                      # run 2: finishes
                     "storage cp"]
    assert "pip install --quiet -e '.[tpu]'" in command_flag(calls[6])
    assert calls[1][-1] == f"{model_dir}/logs/{os.uname().nodename}-test.log"


def test_resume_loop_gives_up_after_max_restarts(tmp_path):
    bin_dir, home = _fake_worker(tmp_path, "#!/bin/sh\nexit 3\n")
    (tmp_path / "states").write_text("")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
           "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.jsonl"),
           "FAKE_STATES": str(tmp_path / "states"), "RESTART_DELAY_S": "0"}
    result = launch("train.sh", LAUNCH / "configs" / "v5e-64.env", "--resume-loop",
                    "--max-restarts=2", env=env, check=False)
    assert result.returncode == 1
    assert "giving up after 2 restarts (last exit status 3)" in result.stderr
