"""benchmarks/attention_speed.py at a tiny shape: both sides compute the same attention, and
every implementation asked for is timed in both phases against each PyTorch side."""

import math

import pytest

from benchmarks import attention_speed


@pytest.mark.parametrize("bias, pytorch_sides", [("t5", {"pytorch"}), ("padding", {"pytorch", "pytorch_eager"})])
def test_each_implementation_is_timed_against_pytorch_on_the_same_product(bias, pytorch_sides):
    # 40 tokens in tiles of 16: chunked pads its last tile.
    result = attention_speed.main(["--bias", bias, "--batch", "2", "--length", "40", "--heads", "2",
                                   "--head_dim", "8", "--block_size", "16", "--rounds", "1", "--calls", "1",
                                   "--torch_threads", "1"])
    assert result["shape"] == {"batch": 2, "length": 40, "heads": 2, "head_dim": 8}
    assert result["bias"] == bias
    assert set(result["phases"]) == {f"{implementation}/{phase}" for implementation in ("xla", "chunked")
                                     for phase in ("forward", "forward_backward")}
    for name, phase in result["phases"].items():
        for side in ("ours", *pytorch_sides):
            assert phase[side]["runs"] == 1 and 0 <= phase[side]["median"] < 60, (name, side)
        assert {key for key in phase if key.startswith("ratio")} == {f"ratio_ours_over_{s}" for s in pytorch_sides}
        for side in pytorch_sides:
            ratio = phase[f"ratio_ours_over_{side}"]["median"]
            assert math.isfinite(ratio) and ratio > 0, (name, side, ratio)
    # float32, values of order 1: the two sides agree to rounding (against every PyTorch side).
    for implementation, difference in result["max_abs_difference_from_pytorch"].items():
        assert difference < 1e-4, (implementation, difference)


def test_padding_masks_the_last_quarter_of_each_row():
    valid = attention_speed.padding_validity(2, 40)
    assert valid.shape == (2, 40) and valid[:, :30].all() and not valid[:, 30:].any()
