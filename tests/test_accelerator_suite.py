"""benchmarks/accelerator_suite.py: its --smoke run on CPU writes every section with real
numbers (so the one prepared GPU run cannot rot before a GPU is lent), and its budget and
failure guards record instead of stopping."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import accelerator_measurements  # noqa: E402  (neither imports anything heavy: stand-ins are installed by main)
import accelerator_suite  # noqa: E402

# Train-step implementations the smoke run covers on CPU (cudnn and pallas are recorded as skipped there).
ATTENTION = "xla,cudnn,chunked,pallas"
GPU_ONLY = ("cudnn", "pallas")
LONG_ATTENTION = "chunked"


def positive(entry: dict, *path: str) -> float:
    value = entry
    for key in path:
        value = value[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (path, value)
    return value


@pytest.mark.slow
def test_smoke_run_writes_every_section_with_positive_numbers(tmp_path):
    out = tmp_path / "accelerator.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, str(REPO / "benchmarks" / "accelerator_suite.py"), "--smoke", "--out", str(out),
               "--attention", ATTENTION, "--long_attention", LONG_ATTENTION, "--peak_flops", "1e11"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["mode"] == "smoke" and result["backend"] == "cpu"
    assert result["device_kind"] and result["versions"]["jax"] and result["date_utc"]
    assert result["import_stand_ins"] == ["seqio", "tensorflow"]
    assert result["peak_flops_per_device"] == 1e11 and result["peak_flops_source"] == "--peak_flops"
    assert "load_average_1min_end" in result["host"]
    sections = result["sections"]
    assert set(sections) == {"long_protein", "device", "t5_train", "embed", "bert_train", "summary"}
    errors = {f"{s}/{n}": e["error"] for s, v in sections.items() for n, e in v.items() if "error" in e}
    assert not errors, errors

    long = sections["long_protein"][LONG_ATTENTION]
    assert long["residues"] == 2048 and long["processed_alone"]
    assert long["attention"]["attention_long"] == "chunked"
    for key in ("cold_seconds", "warm_seconds", "residues_per_second_warm", "peak_bytes_in_use"):
        positive(long, key)
    assert long["peak_source"].startswith("XLA compiled memory analysis")  # CPU keeps no memory_stats
    assert "pallas attention runs only on a GPU" in sections["long_protein"]["pallas"]["skipped"]

    positive(sections["device"]["matmul"], "tflops_per_second")
    positive(sections["device"]["matmul"], "fraction_of_peak_flops")

    train = sections["t5_train"]
    assert train["setup"]["batch"] == {"batch": 2, "inputs_length": 32, "targets_length": 32}
    positive(train, "setup", "model_flops_per_step")
    for implementation in ATTENTION.split(","):
        entry = train[implementation]
        if implementation in GPU_ONLY:
            assert f"{implementation} attention runs only on a GPU" in entry["skipped"]
            continue
        assert entry["attention"]["attention_implementation"] == implementation
        for path in (("tokens_per_second",), ("mfu",), ("compile_and_first_step_seconds",),
                     ("step_seconds", "median"), ("speedup_vs_hf",)):
            positive(entry, *path)
    positive(train["hf"], "tokens_per_second")
    assert train["hf"]["device"] == "cpu"

    embed = sections["embed"]
    assert embed["ours"]["attention"] == {"attention": "auto", "attention_short": "xla", "attention_long": "chunked"}
    assert embed["ours"]["proteins"] == 6 and embed["ours"]["model"]["weights"] == "random (speed only)"
    for key in ("residues_per_second", "fraction_of_peak_flops", "speedup_vs_hf", "cold_seconds"):
        positive(embed["ours"], key)
    positive(embed["ours"], "warm_seconds", "median")
    positive(embed["hf"], "residues_per_second")
    assert "only on a GPU" in embed["ours_cudnn"]["skipped"]

    bert = sections["bert_train"]["xla"]
    assert bert["gin"] == "gin/models/bert/tiny.gin"
    positive(bert, "tokens_per_second")
    positive(bert, "mfu")
    targets = sections["summary"]["targets"]
    measured = [i for i in ATTENTION.split(",") if i not in GPU_ONLY]
    assert targets["t5_train_mfu_best (target >= 0.40)"] == max(train[i]["mfu"] for i in measured)


def test_sections_run_only_the_selected_ones_and_say_why_the_others_did_not(tmp_path):
    """`--sections device`: a second call that measures only what the first one's budget
    skipped; everything else is recorded as not selected, including what depends on it."""
    out = tmp_path / "run.json"
    command = [sys.executable, str(REPO / "benchmarks" / "accelerator_suite.py"), "--smoke", "--out", str(out),
               "--sections", "device", "--peak_flops", "1e11"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sections = json.loads(out.read_text())["sections"]
    positive(sections["device"]["matmul"], "tflops_per_second")
    for name in ("setup", "xla", "chunked", "hf"):
        assert sections["t5_train"][name]["skipped"] == "not selected (--sections)", name
    for name in ("ours", "hf"):
        assert sections["embed"][name]["skipped"] == "not selected (--sections)", name
    assert sections["long_protein"]["chunked"]["skipped"] == "not selected (--sections)"
    assert sections["bert_train"]["xla"]["skipped"] == "not selected (--sections)"

    bad = subprocess.run(command[:-4] + ["--sections", "device,embedding"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--sections: unknown ['embedding']" in bad.stderr


def test_measure_skips_past_the_budget_and_records_failures(tmp_path):
    out = tmp_path / "run.json"
    run = accelerator_suite.Run(out, budget_s=100.0, header={"suite": "test"})

    def fails():
        raise ValueError("boom\nsecond line")

    assert run.measure("a", "ok", 1.0, lambda: {"value": 1})["value"] == 1
    assert run.measure("a", "bad", 1.0, fails)["error"] == "ValueError: boom"
    assert "time budget" in run.measure("b", "late", 1000.0, lambda: {"value": 2})["skipped"]
    written = json.loads(out.read_text())  # rewritten after every measurement
    assert set(written["sections"]) == {"a", "b"} and written["sections"]["a"]["ok"]["value"] == 1
    assert written["sections"]["a"]["ok"]["wall_seconds"] >= 0


def test_with_attention_runs_xla_on_configs_without_the_field():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Old:
        d_model: int = 8

    @dataclasses.dataclass(frozen=True)
    class New:
        attention_implementation: str = "xla"

    assert accelerator_measurements.with_attention(Old(), "xla") == Old()
    with pytest.raises(RuntimeError, match="no attention_implementation field"):
        accelerator_measurements.with_attention(Old(), "chunked")
    assert accelerator_measurements.with_attention(New(), "chunked").attention_implementation == "chunked"


def test_without_gin_the_json_says_what_to_carry(tmp_path):
    """The GPU image has no gin-config: a run without its wheel records that, exit 0."""
    out = tmp_path / "run.json"
    code = ("import runpy, sys; sys.modules['gin'] = None; "
            f"sys.argv = ['accelerator_suite.py', '--out', {str(out)!r}]; "
            f"runpy.run_path({str(REPO / 'benchmarks' / 'accelerator_suite.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sections = json.loads(out.read_text())["sections"]
    assert set(sections) == {"long_protein", "t5_train", "embed", "bert_train"}
    assert all("gin-config is not installed" in s["all"]["skipped"] for s in sections.values())


def test_the_gpu_only_tests_collect_under_the_stand_ins_and_skip_without_a_gpu(tmp_path):
    """benchmarks/gpu_tests.py, which accelerator_run.sh runs on the GPU image (no seqio, no
    TensorFlow), imports every model module its tests need through the stand-ins; on a CPU each
    selected test is skipped for want of a GPU, none errors, so on the GPU they all run."""
    import xml.etree.ElementTree as ElementTree

    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("on a GPU these tests run (benchmarks/gpu_tests.py) rather than skip")
    report = tmp_path / "gpu_tests.xml"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_tests.py"), "--junitxml", str(report)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "skipped", "errors", "failures")}
    assert counts["tests"] >= 4 and counts == {**counts, "skipped": counts["tests"], "errors": 0, "failures": 0}
    assert all("CUDA GPU" in case.find("skipped").get("message") for case in suite.iter("testcase")), done.stdout
