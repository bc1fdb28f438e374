"""benchmarks/attention_speed.py at a tiny shape: both sides compute the same attention, and
every implementation asked for is timed in both phases against PyTorch."""

import math

from benchmarks import attention_speed


def test_each_implementation_is_timed_against_pytorch_on_the_same_product():
    # 40 tokens in tiles of 16: chunked pads its last tile.
    result = attention_speed.main(["--length", "40", "--heads", "2", "--head_dim", "8", "--block_size", "16",
                                   "--rounds", "1", "--calls", "1", "--torch_threads", "1"])
    assert result["shape"] == {"batch": 1, "length": 40, "heads": 2, "head_dim": 8}
    assert set(result["phases"]) == {f"{implementation}/{phase}" for implementation in ("xla", "chunked")
                                     for phase in ("forward", "forward_backward")}
    for name, phase in result["phases"].items():
        for side in ("ours", "pytorch"):
            assert phase[side]["runs"] == 1 and 0 <= phase[side]["median"] < 60, (name, side)
        ratio = phase["ratio_ours_over_pytorch"]["median"]
        assert math.isfinite(ratio) and ratio > 0, (name, ratio)
    # float32, values of order 1: the two sides agree to rounding.
    for implementation, difference in result["max_abs_difference_from_pytorch"].items():
        assert difference < 1e-4, (implementation, difference)
