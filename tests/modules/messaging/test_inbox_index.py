"""The receive path's inbox index: a Bloom filter in front of the inbox table, never missing an id.

:class:`~openred.modules.messaging.service.InboxIndex` must answer exactly what the table
answers for every id the table holds: ids present when it was built, ids this process is
about to append (:meth:`holding`), and ids another process appended (read back from the log
at the next catch-up); while it cannot catch up, the table answers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from openred.crypto.identity import b64url
from openred.modules.messaging import events as mev
from openred.modules.messaging.service import IdFilter, InboxIndex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_id() -> str:
    return b64url(os.urandom(16))


class Log:
    """A database with the two tables the index reads, written as the store writes them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT, payload BLOB)")
        self.conn.execute("CREATE TABLE inbox (message_id TEXT PRIMARY KEY, peer TEXT)")

    def receive(self, message_id: str, peer: str = "peer-a", *, payload: bytes | None = None,
                ) -> None:
        """A MessageReceived entry and its inbox row in one transaction."""
        body = payload if payload is not None else json.dumps(
            {"message_id": message_id, "peer": peer}).encode()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("INSERT INTO events (type, payload) VALUES (?, ?)",
                          (mev.MESSAGE_RECEIVED, body))
        self.conn.execute("INSERT INTO inbox VALUES (?, ?)", (message_id, peer))
        self.conn.execute("COMMIT")

    def other(self) -> None:
        self.conn.execute("INSERT INTO events (type, payload) VALUES ('MessageSent', '{}')")


def ready(index: InboxIndex) -> InboxIndex:
    for _ in range(2000):  # the first build runs in a thread
        if index.ready:
            return index
        time.sleep(0.005)
    raise AssertionError("the inbox index was never built")


def lookups(index: InboxIndex) -> list[str]:
    """The inbox lookups the index's connection runs from now on."""
    seen: list[str] = []
    if index._conn is None:
        index._conn = index._connect()
    index._conn.set_trace_callback(lambda sql: seen.append(sql) if "inbox" in sql else None)
    return seen


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30), max_size=3000))
def test_the_filter_holds_every_id_added_as_it_grows(ids: list[str]) -> None:
    ids_filter = IdFilter(capacity=16)  # grows several times
    for message_id in ids:
        ids_filter.add(message_id)
    assert all(ids_filter.may_hold(message_id) for message_id in ids)


def test_the_filter_says_no_for_nearly_every_other_id() -> None:
    ids_filter = IdFilter(capacity=1000)
    for _ in range(3000):
        ids_filter.add(new_id())
    false_positives = sum(ids_filter.may_hold(new_id()) for _ in range(5000))
    assert false_positives < 250  # sized for ~1 %; keyed hashes, so no id is special


def test_ids_in_the_inbox_are_found_and_new_ones_skip_the_table(tmp_path: Path) -> None:
    log = Log(tmp_path / "node.db")
    held = [new_id() for _ in range(50)]
    for message_id in held:
        log.receive(message_id, "peer-b")
    index = ready(InboxIndex(log.path, clock=Clock()))
    seen = lookups(index)
    assert [index.peer_of(message_id) for message_id in held] == ["peer-b"] * 50
    assert len(seen) == 50
    seen.clear()
    assert [index.peer_of(new_id()) for _ in range(200)].count(None) == 200
    assert len(seen) < 20  # only the filter's false positives reach the table
    index.close()


def test_an_id_held_before_its_append_is_found_before_any_catch_up(tmp_path: Path) -> None:
    log = Log(tmp_path / "node.db")
    clock = Clock()
    index = ready(InboxIndex(log.path, clock=clock))
    message_id = new_id()
    assert index.peer_of(message_id) is None
    index.holding(message_id)
    log.receive(message_id, "peer-a")  # this process's append, after holding
    assert index.peer_of(message_id) == "peer-a"  # the clock did not move: no catch-up ran
    index.close()


def test_ids_held_while_the_filter_is_built_are_kept(tmp_path: Path) -> None:
    log = Log(tmp_path / "node.db")
    index = InboxIndex(log.path, clock=Clock())
    message_id = new_id()
    assert index.peer_of(message_id) is None  # starts the build; the table answered
    index.holding(message_id)
    log.receive(message_id, "peer-a")
    ready(index)
    assert index.peer_of(message_id) == "peer-a"
    index.close()


def test_ids_another_process_appended_are_found_after_the_catch_up(tmp_path: Path) -> None:
    log = Log(tmp_path / "node.db")
    clock = Clock()
    index = ready(InboxIndex(log.path, clock=clock))
    foreign = [new_id() for _ in range(20)]
    for message_id in foreign:
        log.other()
        log.receive(message_id, "peer-c")  # never held by this index
    clock.now += InboxIndex.CATCH_UP_EVERY
    assert [index.peer_of(message_id) for message_id in foreign] == ["peer-c"] * 20
    # The position moved past them: later catch-ups read only newer entries.
    later = new_id()
    log.receive(later, "peer-d")
    clock.now += InboxIndex.CATCH_UP_EVERY
    assert index.peer_of(later) == "peer-d"
    index.close()


def test_while_catching_up_fails_the_table_answers(tmp_path: Path) -> None:
    log = Log(tmp_path / "node.db")
    clock = Clock()
    index = ready(InboxIndex(log.path, clock=clock))
    broken = new_id()
    log.receive(broken, "peer-e", payload=b'{"no": "message id"}')
    clock.now += InboxIndex.CATCH_UP_EVERY
    assert not index.ready
    seen = lookups(index)
    assert index.peer_of(broken) == "peer-e"
    foreign = new_id()
    log.receive(foreign, "peer-f")
    assert index.peer_of(foreign) == "peer-f"
    assert len(seen) == 2  # every lookup went to the table
    index.close()


def test_while_the_filter_cannot_be_built_the_table_answers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "node.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE inbox (message_id TEXT PRIMARY KEY, peer TEXT)")  # no log
    conn.execute("INSERT INTO inbox VALUES ('held', 'peer-a')")
    clock = Clock()
    index = InboxIndex(tmp_path / "node.db", clock=clock)
    for _ in range(2000):
        assert index.peer_of("held") == "peer-a"
        assert index.peer_of(new_id()) is None
        if index._loading is None and index._retry_at > clock.now:
            break  # the build failed, and it is retried only later
        time.sleep(0.005)
    assert index._filter is None and not index.ready
    assert index.peer_of("held") == "peer-a"
    index.close()
