"""Group commit: concurrent appends share one signing call and one transaction, not one fate."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from audit_tools.verify import verify
from openred.crypto.identity import EntryHash, Signature, SignKey
from openred.errors import ConcurrencyConflict, SchemaError, StoreError
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import NewEvent, StoredEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.store.history import fake_id, peer_event, peer_payload


class CountingSigner:
    """An in-process signer that records the size of every entry-signing call."""

    def __init__(self) -> None:
        self._inner = InProcessSigner.from_seed(b"\x31" * 32)
        self.calls: list[int] = []

    @property
    def sign_key(self) -> SignKey:
        return self._inner.sign_key

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        self.calls.append(len(hashes))
        return await self._inner.sign_entry_hashes(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return await self._inner.sign_checkpoint(note_body)


async def open_store(path: Path, signer: object) -> SQLiteEventStore:
    return await SQLiteEventStore.open(
        path, signer, registry=node_registry(), projections=node_projections(),  # type: ignore[arg-type]
        checkpoint_every=1000, checkpoint_interval=0,
    )


def thread_signer() -> InProcessSigner:
    """A signer the write thread signs with itself: its callers are settled from that thread."""
    return InProcessSigner.from_seed(b"\x32" * 32)


SIGNERS = pytest.mark.parametrize("make_signer", [CountingSigner, thread_signer],
                                  ids=["async-signer", "thread-signer"])


async def test_concurrent_appends_are_one_signing_call_and_one_commit(tmp_path: Path) -> None:
    signer = CountingSigner()
    store = await open_store(tmp_path, signer)
    try:
        signer.calls.clear()
        results = await asyncio.gather(*(store.append_one(peer_event(i)) for i in range(200)))
        assert signer.calls == [200]
        assert [r.seq for r in results] == list(range(2, 202))  # in call order, no gap
        assert len({r.recorded_at for r in results}) == 1  # one group, one timestamp
        for prev, entry in itertools.pairwise(results):
            assert entry.prev_hash == prev.entry_hash
        rows = await store.query("SELECT count(*) FROM peers")
        assert rows == [(200,)]
    finally:
        await store.close()
    assert verify(tmp_path).ok


@SIGNERS
async def test_a_conflict_fails_only_its_own_append(
    tmp_path: Path, make_signer: Callable[[], object]
) -> None:
    store = await open_store(tmp_path, make_signer())
    try:
        first = await store.append_one(peer_event(0))
        stale = NewEvent(first.stream, ev.PEER_DISCOVERED, peer_payload(0), expected_version=0)
        calls = [store.append_one(peer_event(i)) for i in range(1, 6)]
        calls.insert(2, store.append_one(stale))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[2], ConcurrencyConflict)
        good = [r for r in results if isinstance(r, StoredEvent)]
        assert [r.seq for r in good] == [3, 4, 5, 6, 7]  # the refused one took no seq
    finally:
        await store.close()
    assert verify(tmp_path).ok


@SIGNERS
async def test_bad_events_fail_alone_in_a_group(
    tmp_path: Path, make_signer: Callable[[], object]
) -> None:
    store = await open_store(tmp_path, make_signer())
    try:
        unknown = NewEvent("x:1", "NobodyRegisteredThis", {"a": 1})
        unencodable = NewEvent(ev.node_stream(fake_id(9)), ev.PEER_DISCOVERED,
                               {**peer_payload(9), "size": float("nan")})
        batch = [peer_event(i) for i in range(20, 25)]
        results = await asyncio.gather(
            store.append_one(peer_event(1)), store.append_one(unknown),
            store.append(batch), store.append_one(unencodable), store.append_one(peer_event(2)),
            return_exceptions=True,
        )
        assert isinstance(results[1], SchemaError)
        assert isinstance(results[3], StoreError)
        one, batch_rows, two = results[0], results[2], results[4]
        assert isinstance(one, StoredEvent) and isinstance(two, StoredEvent)
        assert isinstance(batch_rows, list)
        assert [one.seq, *(r.seq for r in batch_rows), two.seq] == list(range(2, 9))
    finally:
        await store.close()
    assert verify(tmp_path).ok


@SIGNERS
async def test_a_batch_in_a_group_is_still_all_or_nothing(
    tmp_path: Path, make_signer: Callable[[], object]
) -> None:
    store = await open_store(tmp_path, make_signer())
    try:
        first = await store.append_one(peer_event(0))
        stale = NewEvent(first.stream, ev.PEER_DISCOVERED, peer_payload(0), expected_version=0)
        results = await asyncio.gather(
            store.append([peer_event(1), stale, peer_event(2)]),
            store.append_one(peer_event(3)),
            return_exceptions=True,
        )
        assert isinstance(results[0], ConcurrencyConflict)
        assert isinstance(results[1], StoredEvent) and results[1].seq == 3
        assert store.head.size == 3
        assert await store.query("SELECT count(*) FROM peers") == [(2,)]
    finally:
        await store.close()


async def test_a_cancelled_caller_that_was_not_yet_written_writes_nothing(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, CountingSigner())
    try:
        task = asyncio.ensure_future(store.append_one(peer_event(1)))
        await asyncio.sleep(0)  # queued, the writer has not taken it yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.append_one(peer_event(2))
        assert store.head.size == 2
    finally:
        await store.close()


async def test_callers_get_exactly_the_committed_rows_from_the_write_thread(
    tmp_path: Path,
) -> None:
    """Callers of a thread-signed group get the rows the database holds, and the log verifies."""
    store = await open_store(tmp_path, thread_signer())
    try:
        for _ in range(3):
            first = store.head.size
            results = await asyncio.gather(
                *(store.append_one(peer_event(i)) for i in range(first, first + 50)))
            stored = {e.seq: e for e in await store.read(first + 1)}
            assert [stored[r.seq] for r in results] == results
            assert store.head.size == results[-1].seq == first + 50
    finally:
        await store.close()
    assert verify(tmp_path).ok


async def test_callers_resume_without_waiting_for_the_writer_task(tmp_path: Path) -> None:
    """A committed group's callers are settled by the write thread, not by the writer task.

    Every result of the write thread reaches the writer task only once ``release`` is set:
    the callers still get their rows before that, because the thread settled them once the
    commit was done.
    """
    store = await open_store(tmp_path, thread_signer())
    release = asyncio.Event()
    run = store._executor.run

    def held_run(fn: Callable[[], object]) -> asyncio.Future[object]:
        done = run(fn)

        async def later() -> object:
            result = await done
            await release.wait()
            return result

        return asyncio.ensure_future(later())

    store._executor.run = held_run  # type: ignore[method-assign]
    try:
        rows = await asyncio.wait_for(
            asyncio.gather(*(store.append_one(peer_event(i)) for i in range(10))), 10)
        assert not release.is_set()
        assert [r.seq for r in rows] == list(range(2, 12))
    finally:
        release.set()
        await store.close()
    assert verify(tmp_path).ok
