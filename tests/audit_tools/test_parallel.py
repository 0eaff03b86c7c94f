"""The multi-process chain pass of verify (and replay) finds what the single pass finds.

The thresholds are lowered so a small log is split into many ranges checked by two workers;
tampering inside a range, on a range boundary and across ranges must be reported at its seq.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest

import audit_tools.verify as verify_module
from audit_tools.replay import replay
from audit_tools.source import open_source
from audit_tools.verify import verify
from openred.errors import TamperedLog
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.audit_tools.test_verify_tamper import attacker_copy, execute
from tests.store.history import peer_event, session_events

RANGE = 16
BAD_SIGNATURE = "UPDATE events SET signature = zeroblob(64) WHERE seq = ?"
SIZE = 120


@pytest.fixture(autouse=True)
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "RANGE_SIZE", RANGE)
    monkeypatch.setattr(verify_module, "PARALLEL_THRESHOLD", 50)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "openred.db"

    async def build() -> None:
        store = await SQLiteEventStore.open(
            path, InProcessSigner.from_seed(b"\x21" * 32), registry=node_registry(),
            projections=node_projections(), checkpoint_every=7, checkpoint_interval=0,
        )
        try:
            await store.append([peer_event(i) for i in range(20)])
            i = 0
            while store.head.size < SIZE - 5:
                await store.append(session_events(i, expire=i % 3 == 0))
                i += 1
            await store.append([peer_event(100 + j) for j in range(SIZE - store.head.size)])
        finally:
            await store.close()

    asyncio.run(build())
    return path


def tampered(log: Path, tmp_path: Path, sql: str, *seqs: int) -> Path:
    """A copy of ``log`` with ``sql`` run once for each seq (triggers lifted and restored)."""
    bad = attacker_copy(log, tmp_path / "bad.db")
    execute(bad, *((sql, (seq,)) for seq in seqs))
    return bad


def test_a_big_log_is_checked_by_every_worker_and_verifies(log: Path) -> None:
    report = verify(log, jobs=2)
    assert report.ok, report.reason
    assert report.workers == 2 and report.entries == SIZE
    # Same answer as the single-process pass, root and head included.
    single = verify(log, jobs=1)
    assert (single.root, single.head, single.workers) == (report.root, report.head, 1)


@pytest.mark.parametrize("seq", [2, RANGE, RANGE + 1, 3 * RANGE + 5, SIZE])
def test_a_bad_signature_in_any_range_is_found_at_its_seq(log: Path, tmp_path: Path,
                                                          seq: int) -> None:
    report = verify(tampered(log, tmp_path, BAD_SIGNATURE, seq), jobs=2)
    assert not report.ok and report.failed_seq == seq, report.to_json()
    assert "signature" in report.reason


def test_a_range_whose_first_entry_does_not_link_is_found(log: Path, tmp_path: Path) -> None:
    # The first entry of the third range claims another predecessor (its own hash then fails
    # too, but the link is what a range boundary must catch first).
    bad = tampered(log, tmp_path, "UPDATE events SET prev_hash = zeroblob(32) WHERE seq = ?",
                   2 * RANGE + 1)
    report = verify(bad, jobs=2)
    assert not report.ok and report.failed_seq == 2 * RANGE + 1, report.to_json()


def test_a_missing_entry_is_found_by_the_worker_of_its_range(log: Path, tmp_path: Path) -> None:
    bad = tampered(log, tmp_path, "DELETE FROM events WHERE seq = ?", 4 * RANGE + 3)
    report = verify(bad, jobs=2)
    assert not report.ok and report.failed_seq == 4 * RANGE + 3, report.to_json()


def test_the_earliest_failure_wins_across_ranges(log: Path, tmp_path: Path) -> None:
    bad = tampered(log, tmp_path, BAD_SIGNATURE, 5 * RANGE + 2, RANGE + 9)
    assert verify(bad, jobs=2).failed_seq == RANGE + 9


def test_replay_of_a_big_log_checks_signatures_on_every_core(
    log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = verify_module.check_chain_parallel
    monkeypatch.setattr(verify_module, "check_chain_parallel",
                        lambda source, n: calls.append(n) or real(source, n))
    source = open_source(log)
    try:
        state = replay(source, SIZE)
    finally:
        source.close()
    conn = sqlite3.connect(log)
    live = [tuple(r) for r in conn.execute("SELECT * FROM peers ORDER BY 1")]
    conn.close()
    assert state.position == SIZE and state.tables["peers"][1] == live
    assert calls == [SIZE]  # the signatures were checked by the parallel pass
    source = open_source(tampered(log, tmp_path, BAD_SIGNATURE, 3 * RANGE))
    try:
        with pytest.raises(TamperedLog) as caught:
            replay(source, SIZE)
        assert caught.value.seq == 3 * RANGE
        # Replaying only up to before the damage still works: debugging a damaged log.
        assert replay(source, 3 * RANGE - 1).position == 3 * RANGE - 1
    finally:
        source.close()
    shutil.rmtree(tmp_path, ignore_errors=True)
