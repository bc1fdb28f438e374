"""The demo's statistics: the interval that decides "above the frequency baseline"."""

import pytest

from prottrans_jax.demo import wilson_interval


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(0.5, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    low, high = wilson_interval(0.103, 1202)  # the demo's validation split
    assert low == pytest.approx(0.0870, abs=1e-3) and high == pytest.approx(0.1216, abs=1e-3)
    assert wilson_interval(0.0, 50)[0] == pytest.approx(0.0, abs=1e-12)
