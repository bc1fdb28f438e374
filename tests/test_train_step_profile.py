"""benchmarks/train_step_profile.py at a tiny shape, for ProtT5 and ProtBert: every phase is
timed on the sides it claims, and the op profile finds XLA's operations in the trace, so the
README's CPU profiles can be re-run as written."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BOTH_SIDES = ("forward", "forward_backward", "optimizer", "step_plain",
              "gemm_forward", "gemm_input_grad", "gemm_weight_grad")
OURS_ONLY = ("step_trainer", "dispatch")


@pytest.mark.slow
@pytest.mark.parametrize("family, module", [("t5", "T5."), ("bert", "Bert.")])
def test_every_phase_is_timed_and_compared(tmp_path, family, module):
    command = [sys.executable, str(REPO / "benchmarks" / "train_step_profile.py"), "--family", family,
               "--d_model", "32", "--heads", "2", "--d_ff", "64", "--layers", "1", "--batch", "1", "--length", "16",
               "--calls", "1", "--rounds", "1", "--torch_threads", "1", "--op_profile"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert result["family"] == family
    assert result["config"] == {"d_model": 32, "heads": 2, "d_ff": 64, "layers": 1, "batch": 1, "length": 16}
    assert result["torch_threads"] == 1 and result["model_flops_per_step"] > 0
    assert set(result["phases"]) == set(BOTH_SIDES + OURS_ONLY)
    for name, phase in result["phases"].items():
        sides = ("ours", "hf") if name in BOTH_SIDES else ("ours",)
        assert set(phase) == set(sides) | ({"ratio_ours_over_hf"} if name in BOTH_SIDES else set()), name
        for side in sides:  # seconds, rounded to 10 us: the tiny products may read 0
            assert phase[side]["runs"] == 1 and 0 <= phase[side]["median"] < 60, (name, side)
        if name in BOTH_SIDES:  # from the unrounded timings
            ratio = phase["ratio_ours_over_hf"]["median"]
            assert math.isfinite(ratio) and ratio > 0, (name, ratio)

    profile = result["op_profile_forward_backward"]
    assert profile["ops"] > 10 and profile["ops_seconds"] > 0
    kinds = profile["by_kind"]
    assert 0.5 < sum(k["share"] for k in kinds.values()) <= 1.0 + 1e-3, kinds
    assert any("dot" in kind or "ynn" in kind for kind in kinds), kinds  # the matrix products are in it
    assert any(module in (op["from"] or "") for op in profile["slowest"]), profile["slowest"]  # named by model code
