"""What every benchmark here reports beside a figure: the machine's load, and repeated,
interleaved timings summarised as min and median.

A ratio measured on a busy machine says little (PyTorch's threads suffer more from contention
than XLA's: a train-step ratio of 7.6x at load ~10 was 0.75x at load ~1), so each script
records the load average before and after, runs the two sides alternately (a change in load
hits both), and reports min and median over the runs rather than one figure.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes; compare with os.cpu_count())."""
    return [round(x, 2) for x in os.getloadavg()]


def load_report(before: list[float]) -> dict:
    """{"before": [1, 5, 15 min], "after": [...], "cpu_count": n}: the load around a measurement."""
    return {"before": before, "after": load_average(), "cpu_count": os.cpu_count()}


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call of fn, after two warm-up calls (a donated jax state comes back committed
    to its device, which the second call compiles for); what fn returns is blocked on, so jax's
    asynchronous dispatch is timed to the end of the work."""
    import jax  # here: the other helpers serve benchmarks that do not load jax

    for _ in range(2):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """(fn(), wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def interleave(sides: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each side's figure (a callable returning seconds) once per round, the order alternating
    (A B, B A, A B, ...) so that neither side always runs first or last; {side: [seconds]}."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            times[name].append(sides[name]())
    return times


def summary(seconds: list[float], digits: int = 5) -> dict:
    """{"min", "median", "max", "runs"} of a list of timings (seconds)."""
    return {"min": round(min(seconds), digits), "median": round(statistics.median(seconds), digits),
            "max": round(max(seconds), digits), "runs": len(seconds)}


def ratio(reference: list[float], ours: list[float]) -> dict:
    """How many times faster ours is than the reference: of the medians, and of the minimums
    (the least disturbed runs); > 1 means ours is faster."""
    return {"median": round(statistics.median(reference) / statistics.median(ours), 3),
            "min": round(min(reference) / min(ours), 3)}
