"""The directory benchmark's ``_cpu`` figures: a server's CPU time per request, from ``/proc``.

:func:`~bench.bench_directory.cpu_seconds` reads a real process's user + system time (a
child that burns CPU shows it, one that sleeps does not), and
:func:`~bench.bench_directory._run` divides what the server spent in each chunk by every
request the chunk sent, or reports no figure when any chunk could not be measured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.bench_directory import _run, cpu_seconds

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

BURN = ("import sys, time\nend = time.process_time() + {seconds}\n"
        "while time.process_time() < end: pass\nprint('done', flush=True)\n"
        "sys.stdin.read()\n")


def _cpu_after_burning(seconds: float) -> float:
    """The CPU seconds of a child that burned ``seconds`` of CPU and now waits on its stdin."""
    with subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"done\n"
            cpu = cpu_seconds(child.pid)
            assert cpu is not None
            return cpu
        finally:
            child.kill()


def test_a_busy_process_shows_its_cpu_time_and_an_idle_one_does_not() -> None:
    assert _cpu_after_burning(0.5) >= 0.45
    assert _cpu_after_burning(0) < 0.4  # the interpreter's start-up only


def test_a_process_that_does_not_exist_has_no_figure() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert cpu_seconds(pid_max) is None  # pids are below pid_max


def _chunk(count: int, cpu: float | None, sent: int) -> dict[str, object]:
    return {"count": count, "elapsed": 1.0, "latencies": [0.01] * count, "statuses": {"200": count},
            "cpu": cpu, "sent": sent}


def test_cpu_per_request_is_over_every_request_sent() -> None:
    run = _run([_chunk(90, 0.5, 100), _chunk(270, 1.5, 300)])
    assert run.cpu_ms == pytest.approx(2000 / 400)
    assert run.rate == pytest.approx(180)


def test_no_figure_when_a_chunk_was_not_measured() -> None:
    assert _run([_chunk(90, 0.5, 100), _chunk(90, None, 100)]).cpu_ms is None
