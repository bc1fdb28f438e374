"""The commands' persistent XLA compilation cache: where it lives, atomic entries, a second
run that reads instead of compiling, and an unwritable folder that is not a crash."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prottrans_jax import compilation_cache
from prottrans_jax.train import parse_flags

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_session_cache():
    """Tests that switch the cache put the session's (conftest) back afterwards."""
    yield
    compilation_cache.enable()


def test_the_folder_is_the_flag_then_the_variable_then_jax_then_the_user_cache(monkeypatch, tmp_path):
    for name in (compilation_cache.ENV, "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.resolve_dir() == str(tmp_path / "xdg" / "prottrans_jax" / "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert compilation_cache.resolve_dir() == os.path.expanduser("~/.cache/prottrans_jax/xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compilation_cache.resolve_dir() == str(tmp_path / "jax")
    monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "ours"))
    assert compilation_cache.resolve_dir() == str(tmp_path / "ours")
    assert compilation_cache.resolve_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    for off in ("off", "OFF", ""):
        monkeypatch.setenv(compilation_cache.ENV, off)
        assert compilation_cache.resolve_dir() is None
        assert compilation_cache.resolve_dir(off) is None
    assert parse_flags(["--gin_file=x.gin", "--compilation_cache_dir=off"]).compilation_cache_dir == "off"


def test_entries_are_written_whole_under_jax_names_and_never_overwritten(tmp_path):
    cache = compilation_cache.AtomicFileCache(str(tmp_path))
    assert cache.get("k") is None
    cache.put("k", b"first")
    cache.put("k", b"second")  # a key is written once, as jax's LRUCache does
    assert cache.get("k") == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k-cache"]  # no temporary file left


def test_a_write_that_fails_leaves_no_entry_and_warns_once(tmp_path, monkeypatch, capsys):
    cache = compilation_cache.AtomicFileCache(str(tmp_path))

    def no_space(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compilation_cache.os, "replace", no_space)
    cache.put("a", b"x")
    cache.put("b", b"y")
    assert list(tmp_path.iterdir()) == [] and cache.get("a") is None
    assert capsys.readouterr().err.count("cannot write (No space left on device)") == 1


def test_an_unwritable_folder_warns_once_and_runs_without_a_cache(tmp_path, capsys, restore_session_cache):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    folder = str(blocker / "xla")  # under a regular file: no one, root included, can create it
    assert compilation_cache.enable(folder) is None
    assert compilation_cache.enable(folder) is None
    err = capsys.readouterr().err
    assert err.count(f"warning: compilation cache {folder} is not writable") == 1, err
    assert not jax.config.jax_enable_compilation_cache
    np.testing.assert_allclose(jax.jit(lambda x: x * 2.0)(jnp.arange(3.0)), [0.0, 2.0, 4.0], rtol=1e-6, atol=1e-6)


def test_a_multi_process_cpu_job_runs_without_a_cache(tmp_path, capsys, monkeypatch, restore_session_cache):
    # jax keys a CPU program per process: only process 0 would hit, and reach the first
    # collective ahead of the others (tests/test_multihost.py restart).
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert compilation_cache.enable(str(tmp_path / "xla")) is None
    assert "compilation cache off: in a multi-process CPU job" in capsys.readouterr().err
    assert not jax.config.jax_enable_compilation_cache
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    assert compilation_cache.enable(str(tmp_path / "xla")) == str(tmp_path / "xla")


def embed_in_a_fresh_process(hf_dir, fasta, output, cache_dir) -> dict:
    """Runs the embed command in a new process; returns its jax cache events and exit code."""
    code = ("import json, sys\n"
            "from jax import monitoring\n"
            "events = {}\n"
            "monitoring.register_event_listener(lambda e, **_: events.__setitem__(e, events.get(e, 0) + 1))\n"
            "from prottrans_jax import embed\n"
            "code = embed.main(sys.argv[1:])\n"
            "print(json.dumps({'code': code, **{e.rsplit('/', 1)[1]: n for e, n in events.items()}}))\n")
    env = {**{k: v for k, v in os.environ.items() if k != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"},
           compilation_cache.ENV: str(cache_dir), "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", code, "--fasta", str(fasta), "--output", str(output),
                             "--hf_model", hf_dir, "--no_progress"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes: ~15 s idle, 100 s at load 7 (importing TensorFlow)
def test_a_second_embed_reads_its_programs_from_the_cache_instead_of_compiling(tiny_t5_hf_dir, tmp_path):
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQK\n")
    cache_dir = tmp_path / "xla"
    first = embed_in_a_fresh_process(tiny_t5_hf_dir(), fasta, tmp_path / "1.h5", cache_dir)
    entries = sorted(p.name for p in cache_dir.iterdir())
    assert first["code"] == 0 and first.get("cache_hits", 0) == 0 and first["cache_misses"] >= 1, first
    assert len(entries) == first["cache_misses"] and all(e.endswith("-cache") for e in entries)
    second = embed_in_a_fresh_process(tiny_t5_hf_dir(), fasta, tmp_path / "2.h5", cache_dir)
    assert second["code"] == 0 and second["cache_hits"] == first["cache_misses"], second
    assert second.get("cache_misses", 0) == 0  # nothing compiled anew, nothing written
    assert sorted(p.name for p in cache_dir.iterdir()) == entries
