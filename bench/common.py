"""Shared helpers for benchmarks: timing and the one-line report format.

Every figure is one line, with stable names so results compare across commits::

    bench <name>: <value> <unit> | baseline <baseline-name>: <value> <unit> | ratio <r>

For rates (ops/s, MiB/s) the ratio is ours / baseline, higher is better. For latencies the
ratio is ours / baseline too, so there lower is better; the unit says which is which.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def report(
    name: str,
    value: float,
    unit: str,
    baseline_name: str,
    baseline_value: float,
    baseline_unit: str | None = None,
) -> str:
    """Print and return one benchmark line."""
    ratio = value / baseline_value if baseline_value else float("nan")
    line = (
        f"bench {name}: {value:.6g} {unit} | baseline {baseline_name}: "
        f"{baseline_value:.6g} {baseline_unit or unit} | ratio {ratio:.3f}"
    )
    print(line, flush=True)
    return line


def best_rate(fn: Callable[[], int], *, repeats: int = 5) -> float:
    """Run ``fn`` (which returns how many operations it did) ``repeats`` times; best ops/s."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        elapsed = time.perf_counter() - start
        best = max(best, n / elapsed)
    return best


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples``."""
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50, p99
