"""The session ledger forgets sessions once they ended and their rows were cleaned.

``session-ledger.json`` records every session's send epochs so a restarted node never reuses a
nonce; it used to keep every session ever established. The projection sweep now forgets the
sessions it cleans (expired or renewed, ended before the retention's cut-off), and these tests
hold that such a session can never be used again: after a restart (a fresh keeper over the
re-read ledger) it is refused, by the P2P path and by the keeper itself, and the ledger file no
longer names it while it still names the live one.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openred.crypto.session import FileSessionLedger, MemorySessionLedger
from openred.errors import NodeRefused
from openred.node.envelope import Route
from openred.node.p2p import Outcome, RequestContext, dispatch
from openred.node.services import SESSION_LEDGER
from openred.node.sessions import SessionView, decide_use
from tests.node.test_lifecycle_cleaning import (
    DAY,
    RETENTION,
    Clock,
    connect,
    housekeeper,
    open_node,
)
from tests.node.world import NOW, Directory, JailPair, Node

ECHO = Route("test", "echo")


def ledger_sessions(data_dir: Path) -> set[str]:
    doc = json.loads((data_dir / SESSION_LEDGER).read_text())
    return set(doc["send"]) | set(doc["recv"])


# -- the ledger's method, on real files --


def test_forget_drops_only_the_named_sessions_durably(tmp_path: Path) -> None:
    path = tmp_path / SESSION_LEDGER
    ledger = FileSessionLedger(path)
    assert ledger.reserve_send_epoch("gone", 0) == 0
    assert ledger.reserve_send_epoch("gone", 0) == 1
    assert ledger.reserve_send_epoch("kept", 3) == 3
    ledger.raise_recv_mark("gone", 10)
    stale = FileSessionLedger(path)  # another instance, read before the forget
    assert ledger.forget(["gone", "never-known", "gone"]) == 1
    assert ledger_sessions(tmp_path) == {"kept"}
    assert FileSessionLedger(path).send == {"kept": 3}
    # The stale instance re-reads the file under its lock before each change: it never writes
    # the forgotten session back, and still never hands out an epoch twice for a live one.
    assert stale.reserve_send_epoch("kept", 0) == 4
    assert ledger_sessions(tmp_path) == {"kept"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob("*.tmp"))


def test_forget_of_nothing_known_writes_nothing(tmp_path: Path) -> None:
    missing = FileSessionLedger(tmp_path / "none.json")
    assert missing.forget(["a"]) == 0
    assert list(tmp_path.iterdir()) == []  # no ledger, no lock file made for nothing
    path = tmp_path / SESSION_LEDGER
    ledger = FileSessionLedger(path)
    ledger.reserve_send_epoch("kept", 0)
    before = os.stat(path)
    assert ledger.forget(["other"]) == 0
    assert ledger.forget([]) == 0
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_memory_ledger_forgets_too() -> None:
    ledger = MemorySessionLedger()
    ledger.reserve_send_epoch("s", 0)
    ledger.raise_recv_mark("r", 5)
    assert ledger.forget(["s", "r", "x"]) == 2
    assert (ledger.send, ledger.recv) == ({}, {})


# -- through the sweep, with real jails and logs on a virtual clock --


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path,
               ) -> AsyncIterator[tuple[Node, Node, Clock]]:
    clock = Clock()
    a = await open_node("a", jails.procs[0].socket_path, tmp_path / "a", directory, clock)
    b = await open_node("b", jails.procs[1].socket_path, tmp_path / "b", directory, clock)
    for node in (a, b):
        async def echo(ctx: RequestContext, plaintext: bytes) -> Outcome:
            return Outcome(plaintext)

        node.actions.add(ECHO.module, ECHO.action, echo)
    try:
        yield a, b, clock
    finally:
        for node in (a, b):
            await node.close()


async def test_a_cleaned_session_is_forgotten_and_refused_after_a_restart(
    pair: tuple[Node, Node, Clock], directory: Directory,
) -> None:
    a, b, clock = pair
    data_a = a.store.path.parent
    old = await connect(directory, a, b, NOW)
    # Both ends move to a new send epoch: the ledgers now name the session.
    channels = {}
    for node in (a, b):
        channels[node.name] = await node.keeper.channel(old, NOW)
        await node.keeper.rotate(channels[node.name])
    assert old in ledger_sessions(data_a)
    # B keeps its end of the old session, as a peer that never cleans would.
    b_end = channels["b"]
    clock.now = NOW + DAY + 1
    assert await a.keeper.expire(clock.now) == [old]
    assert await b.keeper.expire(clock.now) == [old]

    # Within the retention nothing is forgotten: the sweep has nothing due.
    clock.now = NOW + 20 * DAY
    assert await housekeeper(a, clock).clean() == 0
    assert ledger_sessions(data_a) == {old}

    # Past it, the sweep cleans the old session's row and the ledger forgets it, not the
    # session that is live then.
    clock.now = NOW + 32 * DAY
    live = await connect(directory, a, b, clock.now)
    live_channel = await a.keeper.channel(live, clock.now)
    await a.keeper.rotate(live_channel)
    assert ledger_sessions(data_a) == {old, live}
    assert await housekeeper(a, clock).clean() >= 1
    assert ledger_sessions(data_a) == {live}

    # A restarted node (fresh keeper, ledger read again) refuses the old session everywhere:
    # the peer's request on it, and any local use (which is what a restore would need).
    a.restart_sessions()
    envelope = b_end.seal_request(ECHO, b"after the cleaning")
    with pytest.raises(NodeRefused) as caught:
        await dispatch(ECHO, envelope.to_json(), actions=a.actions, keeper=a.keeper,
                       store=a.store, now=clock.now)
    assert (caught.value.status, caught.value.reason) == (404, "unknown-session")
    with pytest.raises(NodeRefused):
        await a.keeper.channel(old, clock.now)
    # Where the row is still there (B never cleaned) the session is ended, so refused too; and
    # even a database brought back from a backup taken while it was active could not restore
    # it: its life ended before the cut-off, and any use past expires_at is refused.
    with pytest.raises(NodeRefused) as caught:
        await b.keeper.channel(old, clock.now)
    assert caught.value.status == 410
    row = await b.book.session(old)
    assert row is not None and row.expires_at < clock.now - RETENTION
    as_backup = SessionView(old, "active", row.expires_at, row.renew_at, None)
    refusal = decide_use(as_backup, clock.now)
    assert refusal is not None and refusal.status == 410
    assert ledger_sessions(data_a) == {live}
    # The live session resumes after the restart, in a fresh epoch above the one it used.
    resumed = await a.keeper.channel(live, clock.now)
    assert resumed.cipher.send_epoch > live_channel.cipher.send_epoch


async def test_the_first_sweep_of_a_process_releases_what_earlier_sweeps_cleaned(
    pair: tuple[Node, Node, Clock], directory: Directory,
) -> None:
    """A node stopped between the logged cleaning and the ledger write catches up."""
    a, b, clock = pair
    data_a = a.store.path.parent
    old = await connect(directory, a, b, NOW)
    await a.keeper.rotate(await a.keeper.channel(old, NOW))
    clock.now = NOW + DAY + 1
    await a.keeper.expire(clock.now)
    clock.now = NOW + 32 * DAY
    keeper = housekeeper(a, clock)

    async def crash(sessions: object, offers: object) -> None:
        raise SystemExit("stopped before the release")

    keeper.release = crash  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        await keeper.clean()
    assert old in ledger_sessions(data_a)  # the row is cleaned in the log, the ledger not yet
    # The next process's first sweep has nothing due, but reads what the log cleaned.
    assert await housekeeper(a, clock).clean() == 0
    assert old not in ledger_sessions(data_a)
