"""A writer killed with SIGKILL at random moments never leaves a broken or lossy log (DESIGN §8).

A child process (``tests/store/crash_writer.py``) appends random batches in a loop and prints
every acknowledged append; the parent kills it at a random moment, then checks the database:
``PRAGMA integrity_check`` is ok, ``audit_tools verify`` passes every step (projections
included), and every acknowledged batch is present with the same entry hashes (which verify has
just tied to the entries' contents and signatures). The next child reopens the same database
and continues the chain, so the cycles accumulate (a fresh database once a log has grown past
``ROTATE_AT`` entries). 50 cycles in ``make test`` (logs of up to 1,500 entries), 200 in
``make test-long`` (up to 4,000). The writers are forked by one server process that has
imported everything already (``crash_writer --fork-server``), so a cycle costs the kill and
the checks, not a Python start. The seed is printed; set ``OPENRED_CRASH_SEED`` to replay a
failure.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import socket
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
# Start a fresh database once a log grows past this, so verifying after every kill stays cheap
# (verify reads the whole log: most of a cycle's time is verifying it).
ROTATE_AT = 4000 if LONG else 1500


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


class Writers:
    """The fork server of ``tests/store/crash_writer.py``: one killed writer per cycle."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(60)
        self.server = subprocess.Popen(
            [sys.executable, "-m", "tests.store.crash_writer", "--fork-server",
             str(theirs.fileno())],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()],
        )
        theirs.close()

    def answer(self, word: str) -> tuple[int, ...]:
        line = self.sock.recv(100).decode().split()
        assert line and line[0] == word, f"fork server answered {line!r}"
        return tuple(int(x) for x in line[1:])

    def run(self, db: Path, seed: int, first_id: int, delay: float) -> tuple[int, list[Ack]]:
        """Fork a writer on ``db``, kill it ``delay`` seconds after it is ready; (head, acks)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            socket.send_fds(self.sock, [f"{db} {seed} {first_id}".encode()], [out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        with open(out_r, "rb") as out, open(err_r, "rb") as err:
            self.answer("started")
            try:
                ready, _, _ = select.select([out], [], [], 60)
                line = out.readline() if ready else b""
                if line.startswith(b"ready "):
                    time.sleep(delay)
            finally:
                self.sock.sendall(b"kill")  # the server kills its child: we never signal a pid
            rest = out.read()
            _, status = self.answer("exited")
            errors = err.read().decode()[-2000:]
        if not line.startswith(b"ready "):
            pytest.fail(f"writer did not start: {line!r} {errors}")
        # Killed by us, not dead of its own error.
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, errors
        return int(line.split()[1]), parse_acks(rest)

    def close(self) -> None:
        self.sock.close()  # the server leaves when its socket closes
        try:
            self.server.wait(30)
        finally:
            if self.server.poll() is None:
                self.server.kill()
                self.server.wait()


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
    writers = Writers()
    try:
        check_cycles(writers, rng, seed, tmp_path)
    finally:
        writers.close()


def check_cycles(writers: Writers, rng: random.Random, seed: int, tmp_path: Path) -> None:
    generation = 0
    db = tmp_path / f"log{generation}.db"
    acked: list[Ack] = []
    total_acks = 0
    for cycle in range(CYCLES):
        delay = rng.uniform(0, MAX_KILL_DELAY)
        where = f"seed {seed}, cycle {cycle}, kill after {delay * 1000:.0f} ms"
        head, acks = writers.run(db, rng.randrange(2**32), cycle * 1_000_000, delay)
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
