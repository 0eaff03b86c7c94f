"""Several real processes writing one log: rotation by one of them, and hard contention."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from audit_tools.verify import verify
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore, connect
from tests.conftest import REPO_ROOT
from tests.store.multi_writer import OWNER_SEED, ROTATED_SEED

TIMEOUT = 120


def start(db: Path, work: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.multi_writer", str(db), str(work), name, *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != b"ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"{name} did not start: {line!r} {err.decode()[-2000:]}")
    return proc


def finish(proc: subprocess.Popen[bytes]) -> list[str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, (out + err).decode()[-3000:]
    return out.decode().splitlines()


def acks(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("ack ")]


async def new_log(db: Path) -> None:
    store = await SQLiteEventStore.open(
        db, InProcessSigner.from_seed(OWNER_SEED), registry=node_registry(),
        projections=node_projections(), checkpoint_interval=0,
    )
    await store.close()


def stored_seqs(db: Path) -> set[int]:
    conn = connect(db, readonly=True)
    try:
        return {int(r[0]) for r in conn.execute("SELECT seq FROM events")}
    finally:
        conn.close()


def run_rotation(tmp_path: Path, *, follow: bool) -> tuple[list[str], list[str], Path]:
    db = tmp_path / "log.db"
    asyncio.run(new_log(db))
    # The writer pauses between appends: SQLite's lock is not fair, and a writer in a tight
    # loop can keep another process waiting for seconds (the contention test does that).
    writer = start(db, tmp_path, "writer", "append", "1000000", "0.002",
                   *(["follow"] if follow else []))
    rotator = start(db, tmp_path, "rotator", "rotate", "2000000", "40", "40")
    (tmp_path / "go").touch()
    rotator_lines = finish(rotator)
    time.sleep(1.0)  # the writer runs on (or has refused) after the rotation
    (tmp_path / "stop").touch()
    return finish(writer), rotator_lines, db


def test_a_writer_honours_a_key_rotation_by_another_process(tmp_path: Path) -> None:
    writer, rotator, db = run_rotation(tmp_path, follow=False)
    rotated_at = next(int(line.split()[1]) for line in rotator if line.startswith("rotated "))
    # The writer holds only the old key: once it sees the rotation it refuses to append.
    assert writer[-1] == "refused ConfigurationError", writer[-5:]
    assert all(seq < rotated_at for seq in acks(writer)), "signed with a key no longer in force"
    assert set(acks(writer)) | set(acks(rotator)) <= stored_seqs(db)
    report = verify(db, jobs=1)
    assert report.ok, report.reason


def test_a_writer_whose_signer_follows_the_rotation_goes_on_signing(tmp_path: Path) -> None:
    writer, rotator, db = run_rotation(tmp_path, follow=True)
    rotated_at = next(int(line.split()[1]) for line in rotator if line.startswith("rotated "))
    assert any(seq > rotated_at for seq in acks(writer)), writer[-5:]
    assert set(acks(writer)) | set(acks(rotator)) <= stored_seqs(db)
    report = verify(db, jobs=1)
    assert report.ok, report.reason
    assert [key for _seq, key in report.keys] == [
        InProcessSigner.from_seed(OWNER_SEED).sign_key.b64url(),
        InProcessSigner.from_seed(ROTATED_SEED).sign_key.b64url(),
    ]


def test_contended_writers_all_get_their_appends_in(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    asyncio.run(new_log(db))
    writers = [start(db, tmp_path, f"w{i}", "append", str(1_000_000 * (i + 1)), "0")
               for i in range(3)]
    (tmp_path / "go").touch()
    time.sleep(3)
    (tmp_path / "stop").touch()
    outputs = [finish(w) for w in writers]
    for lines in outputs:
        assert not any(line.startswith(("error", "refused")) for line in lines), lines[-3:]
        assert len(acks(lines)) > 10
    seqs = [seq for lines in outputs for seq in acks(lines)]
    assert len(seqs) == len(set(seqs))  # no seq acknowledged twice
    assert set(seqs) <= stored_seqs(db)
    report = verify(db, jobs=1)
    assert report.ok, report.reason
