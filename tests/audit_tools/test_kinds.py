"""Logs are checked as the kind their genesis names; checkpoint gaps are reported, not hidden."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import audit_tools.verify as verify_module
from audit_tools.cli import main as cli_main
from audit_tools.replay import replay
from audit_tools.schema import expected_schema, fresh_database
from audit_tools.source import open_source
from audit_tools.verify import verify
from openred import kinds
from openred.crypto.identity import EntryHash
from openred.errors import TamperedLog
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.chain import chain_entries
from openred.store.codec import GENESIS_PREV_HASH
from openred.store.events import KEY_ROTATED, LOG_OPENED, LOG_STREAM, NewEvent
from openred.store.projection_sql import apply_projections
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.audit_tools.test_verify_tamper import execute
from tests.store.history import peer_event, session_events
from tests.vectors import make_fixtures as mf

SIGNER = InProcessSigner.from_seed(b"\x51" * 32)
N = mf.HISTORY_SIZE


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def handmade_log(path: Path, genesis: dict[str, Any], events: list[NewEvent]) -> Path:
    """A log written entry by entry (as a store of any kind would), with its projections."""
    fresh_database(path, "node")
    key = SIGNER.sign_key
    first = NewEvent(LOG_STREAM, LOG_OPENED, {"sign_key": key.b64url(), "node_id": key.node_id,
                                              "origin": f"openred/{key.node_id}", **genesis},
                     expected_version=0)
    versions: dict[str, int] = {}
    for event in [first, *events]:
        versions.setdefault(event.stream, 0)
    unsigned = chain_entries([first, *events], next_seq=1, prev_hash=GENESIS_PREV_HASH,
                             stream_versions=versions, recorded_at="2026-12-01T00:00:00.000000Z")
    signatures = SIGNER.sign_entry_hashes_sync([EntryHash(u.entry_hash) for u in unsigned])
    stored = [u.signed(s) for u, s in zip(unsigned, signatures, strict=True)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                     [e.as_row() for e in stored])
    apply_projections(conn, node_projections(), node_registry(), stored)
    conn.execute("COMMIT")
    conn.close()
    return path


EVENTS = [peer_event(1), *session_events(2)]


def test_every_known_kind_has_its_registry_projections_and_schema() -> None:
    assert "node" in kinds.KINDS and kinds.DEFAULT_KIND == "node"
    for kind in kinds.KINDS:
        registry = kinds.registry_for(kind)
        assert registry.known(LOG_OPENED) and registry.known(KEY_ROTATED)
        tables = {o.name for o in expected_schema(kind) if o.type == "table"}
        assert {"events", "checkpoints", "projection_positions"} <= tables, kind
        # Every projection's tables come from that kind's migrations.
        assert set(kinds.projections_for(kind).tables()) <= tables, kind
    with pytest.raises(KeyError, match="unknown log kind 'martian'"):
        kinds.projections_for("martian")
    with pytest.raises(KeyError):
        kinds.registry_for("martian")


def test_the_node_kind_is_the_nodes_projections() -> None:
    assert kinds.projections_for("node").tables() == node_projections().tables()
    assert kinds.registry_for("node").known("PeerDiscovered")


@pytest.mark.parametrize("genesis", [{}, {"kind": "node"}])
def test_verify_and_replay_check_the_kind_the_genesis_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, genesis: dict[str, Any],
) -> None:
    db = handmade_log(tmp_path / "openred.db", genesis, EVENTS)
    asked: list[str] = []
    real = kinds.projections_for

    def spy(kind: str) -> Any:
        asked.append(kind)
        return real(kind)

    monkeypatch.setattr(kinds, "projections_for", spy)
    report = verify(db, jobs=1)
    assert report.ok, report.reason
    assert report.kind == "node" and report.to_json()["kind"] == "node"
    assert report.steps[0].detail.endswith("the schema is a node log's own")
    source = open_source(db)
    try:
        state = replay(source, len(EVENTS) + 1)
    finally:
        source.close()
    assert state.kind == "node" and state.tables["peers"][1]
    assert asked == ["node", "node"]


@pytest.mark.parametrize("kind", ["martian", 5, None])
def test_a_log_of_a_kind_this_verifier_does_not_know_is_not_valid(
    tmp_path: Path, kind: object,
) -> None:
    db = handmade_log(tmp_path / "openred.db", {"kind": kind}, EVENTS)
    report = verify(db, jobs=1)
    assert not report.ok and report.failed_seq == 1
    assert f"the genesis names log kind {kind!r}, which this verifier does not know" in \
        report.reason
    assert [s.number for s in report.steps if s.status == "failed"] == [2]
    result = cli("verify", db)
    assert result.exit_code == 1 and "Traceback" not in result.output
    source = open_source(db)
    try:
        with pytest.raises(TamperedLog, match="which this verifier does not know"):
            replay(source, 2)
    finally:
        source.close()
    assert cli("replay", db).exit_code == 1


def test_projections_are_checked_against_the_kinds_whole_set(tmp_path: Path) -> None:
    db = handmade_log(tmp_path / "openred.db", {}, EVENTS)
    execute(db, "DELETE FROM projection_positions WHERE name = 'inbox'")
    report = verify(db, jobs=1)
    assert report.reason == "projection inbox has no recorded position"
    execute(db, "INSERT INTO projection_positions VALUES ('inbox', 6), ('ghost', 6)")
    report = verify(db, jobs=1)
    assert report.reason == "projection_positions names 'ghost', which no node projection is"


async def test_a_plain_log_keeps_no_projections_and_wiping_a_nodes_is_not_that(
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain.db"
    store = await SQLiteEventStore.open(plain, SIGNER, registry=node_registry(),
                                        checkpoint_interval=0)
    await store.append([peer_event(1)])
    await store.close()
    report = verify(plain, jobs=1)
    assert report.ok and report.steps[-1].status == "skipped", report.reason
    assert "keeps none of the node projections" in report.steps[-1].detail
    # A node's log whose positions were wiped still holds rows: that is damage, not a choice.
    db = handmade_log(tmp_path / "openred.db", {}, EVENTS)
    execute(db, "DELETE FROM projection_positions")
    assert verify(db, jobs=1).reason == "projection registration has no recorded position"


# -- checkpoints removed ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(mf.build_closed_log(tmp_path_factory.mktemp("kinds") / "openred.db"))


@pytest.mark.parametrize(("removed", "uncovered", "status", "label"), [
    ("size >= 1", N, "warning", "WARNING"), ("size > 14", N - 14, "ok", "note"),
])
def test_a_log_whose_checkpoints_were_removed_says_how_many_entries_none_covers(
    log: Path, tmp_path: Path, removed: str, uncovered: int, status: str, label: str,
) -> None:
    db = tmp_path / "openred.db"
    shutil.copyfile(log, db)
    execute(db, f"DELETE FROM checkpoints WHERE {removed}")
    report = verify(db, jobs=1)
    assert report.ok, report.reason  # every entry still proves itself...
    assert report.uncovered == uncovered  # ...but this many are covered by no checkpoint
    assert report.steps[4].status == status
    assert f"{uncovered}" in report.steps[4].detail and "no" in report.steps[4].detail
    text = cli("verify", db)
    assert text.exit_code == 0
    assert f"{label}: {uncovered} of {N} entries are covered by no stored checkpoint" in \
        text.output
    assert ("5. stored checkpoints" in text.output) and (status != "warning"
                                                        or "WARNING" in text.output)
    as_json = json.loads(cli("verify", db, "--json").output)
    assert as_json["entries_without_checkpoint"] == uncovered
    assert as_json["steps"][4]["status"] == status


def test_a_fully_checkpointed_log_reports_no_uncovered_entry(log: Path) -> None:
    report = verify(log, jobs=1)
    assert report.ok and report.uncovered == 0
    assert report.to_json()["entries_without_checkpoint"] == 0
    assert "WARNING" not in cli("verify", log).output


def test_verify_reads_the_kind_only_from_the_genesis_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The genesis row is forged to name another kind after signing: the chain pass refuses it
    # before any kind is used.
    db = handmade_log(tmp_path / "openred.db", {}, EVENTS)
    payload = json.dumps({"kind": "martian"}).encode()
    execute(db, ("UPDATE events SET payload = ? WHERE seq = 1", (payload,)))
    monkeypatch.setattr(verify_module, "log_kind", lambda genesis: pytest.fail("kind used"))
    report = verify(db, jobs=1)
    assert (report.failed_seq, report.reason.split(";")[0]) == (
        1, "entry_hash does not match the entry's contents")
