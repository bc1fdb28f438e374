"""The benchmarks' shared protocol: sides alternate which runs first, summaries and ratios."""

from benchmarks import timing


def test_sides_alternate_and_the_ratio_is_reference_over_ours():
    order = []
    times = timing.interleave({"ours": lambda: order.append("ours") or 1.0,
                               "hf": lambda: order.append("hf") or 3.0}, rounds=3)
    assert order == ["ours", "hf", "hf", "ours", "ours", "hf"]
    assert timing.summary([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "runs": 3}
    assert timing.ratio(times["hf"], times["ours"]) == {"median": 3.0, "min": 3.0}
    load = timing.load_report(timing.load_average())
    assert len(load["before"]) == len(load["after"]) == 3 and load["cpu_count"] >= 1
