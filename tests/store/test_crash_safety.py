"""A writer killed with SIGKILL at random moments never leaves a broken or lossy log (DESIGN §8).

A child process (``tests/store/crash_writer.py``) appends random batches in a loop and prints
every acknowledged append; the parent kills it at a random moment, then checks the database:
``PRAGMA integrity_check`` is ok, ``audit_tools verify`` passes every step (projections
included), and every acknowledged batch is present with the same entry hashes (which verify has
just tied to the entries' contents and signatures). The next child reopens the same database
and continues the chain, so the cycles accumulate. 50 cycles in ``make test``, 200 in
``make test-long``. The seed is printed; set ``OPENRED_CRASH_SEED`` to replay a failure.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_tools.verify import verify
from tests.conftest import LONG, REPO_ROOT

CYCLES = 200 if LONG else 50
MAX_KILL_DELAY = 0.15
# Start a fresh database once a log grows past this, so verifying after every kill stays cheap.
ROTATE_AT = 4000


@dataclass(frozen=True)
class Ack:
    first: int
    last: int
    stream: str
    version: int
    digest: str


def parse_acks(out: bytes) -> list[Ack]:
    """The acknowledged batches in the child's output (a cut-off last line is not an ack)."""
    acks = []
    for line in out.split(b"\n")[:-1]:
        parts = line.decode().split()
        if parts and parts[0] == "ack":
            acks.append(Ack(int(parts[1]), int(parts[2]), parts[3], int(parts[4]), parts[5]))
    return acks


def run_child(db: Path, seed: int, first_id: int, delay: float) -> tuple[int, list[Ack]]:
    """Start a writer on ``db``, kill it ``delay`` seconds after it is ready; (head, acks)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(db), str(seed), str(first_id)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if not ready.startswith(b"ready "):
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"writer did not start: {ready!r} {err.decode()[-2000:]}")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Killed by us, not dead of its own error.
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return int(ready.split()[1]), parse_acks(out)


def integrity(db: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def stored_batches(db: Path, acks: list[Ack]) -> list[tuple[str, str, int]]:
    """(digest of entry hashes, last stream, last version) in the database for each ack."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        hashes = [bytes(r[0]) for r in conn.execute("SELECT entry_hash FROM events ORDER BY seq")]
        out = []
        for ack in acks:
            row = conn.execute("SELECT stream, stream_version FROM events WHERE seq = ?",
                               (ack.last,)).fetchone()
            digest = hashlib.sha256(b"".join(hashes[ack.first - 1:ack.last])).hexdigest()
            out.append((digest, *row) if row else (digest, "", 0))
        return out
    finally:
        conn.close()


def test_sigkilled_writer_never_breaks_the_log_or_loses_an_ack(tmp_path: Path) -> None:
    seed = int(os.environ.get("OPENRED_CRASH_SEED", str(random.randrange(2**32))))
    print(f"crash-safety seed: OPENRED_CRASH_SEED={seed}")
    rng = random.Random(seed)
    generation = 0
    db = tmp_path / f"log{generation}.db"
    acked: list[Ack] = []
    total_acks = 0
    for cycle in range(CYCLES):
        delay = rng.uniform(0, MAX_KILL_DELAY)
        where = f"seed {seed}, cycle {cycle}, kill after {delay * 1000:.0f} ms"
        head, acks = run_child(db, rng.randrange(2**32), cycle * 1_000_000, delay)
        # The reopened log starts where the last acknowledged append left it, or later.
        assert head >= (acked[-1].last if acked else 0), where
        acked += acks
        total_acks += len(acks)

        assert integrity(db) == [("ok",)], where
        report = verify(db, jobs=1)
        assert report.ok, f"{where}: {report.reason}"
        assert [s.status for s in report.steps][:5] == ["ok"] * 5 and \
            report.steps[-1].status == "ok", where
        if acked:
            assert acked[-1].last <= report.entries, where
        expected = [(a.digest, a.stream, a.version) for a in acked]
        assert stored_batches(db, acked) == expected, where

        if report.entries > ROTATE_AT:
            generation += 1
            db = tmp_path / f"log{generation}.db"
            acked = []
    # The kills landed while appends were acknowledged, not all before the first one.
    assert total_acks >= CYCLES
