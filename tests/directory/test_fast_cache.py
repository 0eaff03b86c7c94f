"""The node cache's cheap "nothing committed" probe never hides another process's write.

:meth:`~openred.directory.service._NodeCache.check` skips reading ``max(seq)`` only when
``PRAGMA data_version`` says no connection committed since a check that had every committed
entry accounted for. These tests write as another process would (a second store connection
the cache is not told about) around this process's own appends in flight, and check that every
foreign write empties the cache (or drops the views it touches, while this process's appends
are in flight and the count alone cannot tell the two apart) at the next check — including a
foreign entry that landed while this process's append was in flight.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import nacl.signing
import pytest

from openred.directory import events as ev
from openred.directory.events import directory_registry
from openred.directory.projections import directory_projections
from openred.directory.service import _NodeCache
from openred.errors import StoreError
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.directory.test_pure import NOW, signed, view


async def open_store(path: Path, signer: InProcessSigner | None = None) -> SQLiteEventStore:
    return await SQLiteEventStore.open(path, signer or InProcessSigner.generate(),
                                       kind="directory",
                                       registry=directory_registry(),
                                       projections=directory_projections())


async def test_a_foreign_write_during_an_own_append_is_seen_after_it_returns(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path)
    cache = _NodeCache(tmp_path / "openred.db")
    try:
        cache.check()
        a = view(signed(nacl.signing.SigningKey.generate()))
        cache.put(a.node_id, a)
        cache.check()  # settled, nothing committed: the probe alone decides
        assert a.node_id in cache.views
        # Two of our entries are in flight; a foreign entry lands first, then one of ours;
        # the other of ours never commits (a failed append), and nothing is committed after.
        cache.inflight += 2
        await store.append([ev.revoked_event("x" * 32, "r", NOW)])  # foreign (not told)
        ours = await store.append([ev.revoked_event("y" * 32, "r", NOW)])
        cache.check()  # size = known + 2 <= known + inflight: the entries' streams are read
        assert a.node_id in cache.views  # neither touches a
        cache.inflight -= 2
        cache.appended(ours)
        cache.check()  # every entry was accounted for: settled
        assert a.node_id in cache.views
        # A foreign entry touching a, committed while one of ours is in flight, drops a's view
        # at once (the count alone cannot tell it from ours).
        cache.inflight += 1
        await store.append([ev.revoked_event(a.node_id, "r", NOW)])  # foreign (not told)
        cache.check()
        assert cache.views == {}
        cache.inflight -= 1  # that append of ours failed
        # Once settled, a check with nothing committed keeps what is cached ...
        cache.put(a.node_id, a)
        cache.check()
        cache.check()
        assert a.node_id in cache.views
        # ... and any foreign commit, however small, empties it at the next check.
        await store.append([ev.revoked_event(a.node_id, "r", NOW)])
        cache.check()
        assert cache.views == {}
    finally:
        cache.close()
        await store.close()


async def test_a_write_by_another_process_is_seen_at_the_next_check(tmp_path: Path) -> None:
    key = InProcessSigner.generate()
    store = await open_store(tmp_path, key)
    cache = _NodeCache(tmp_path / "openred.db")
    a = view(signed(nacl.signing.SigningKey.generate()))
    try:
        cache.check()
        cache.put(a.node_id, a)
        cache.check()
        await store.close()
        # Another process opens the log and appends (as `openred directory revoke` does).
        other = await open_store(tmp_path, key)
        try:
            await other.append([ev.revoked_event(a.node_id, "r", NOW)])
        finally:
            await other.close()
        cache.check()
        assert cache.views == {}
        # A plain sqlite write that is no log entry changes nothing the cache depends on,
        # but is still a commit: the cache reads max(seq) again and keeps what it has.
        cache.put(a.node_id, a)
        cache.check()
        with sqlite3.connect(tmp_path / "openred.db") as conn:
            conn.execute("UPDATE projection_positions SET position = position")
        cache.check()
        assert a.node_id in cache.views
        # A change of the schema is never the directory's own: nothing is answered after it.
        with sqlite3.connect(tmp_path / "openred.db") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
        with pytest.raises(StoreError, match="schema was changed by another program"):
            cache.check()
    finally:
        cache.close()
