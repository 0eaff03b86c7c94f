"""The jail client's blocking path: signing entry hashes from the store's write thread.

Same frames, same answers, same refusals as the async path (checked against a real jail and a
misbehaving fake one); a jail that cannot be reached from the thread makes the store sign the
async way instead, and a refusal fails the append with nothing written.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import openred.crypto.client as client_module
from openred.crypto.client import JailClient, JailSigner, JailSupervisor
from openred.crypto.identity import EntryHash, Signature
from openred.errors import JailProtocolError, JailRefused, JailUnavailable
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.chain import check_chain
from openred.store.signer import InProcessSigner, SignInThreadUnavailable
from openred.store.sqlite import SQLiteEventStore, _signs_in_thread, read_events
from tests.crypto.test_client import _fake_jail, _frame
from tests.crypto_jail.test_server import JailProc, dev_keystore, spawn_jail
from tests.store.history import peer_event


def _hashes(n: int, salt: bytes = b"") -> list[EntryHash]:
    return [EntryHash(hashlib.sha256(salt + i.to_bytes(4, "big")).digest()) for i in range(n)]


async def test_blocking_signatures_are_the_async_ones(
    client: JailClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = (await client.public_keys()).sign_key
    for n in (1, 16, 250):
        hashes = _hashes(n, b"b%d" % n)
        blocking = await asyncio.to_thread(client.sign_batch_blocking, hashes)
        assert blocking == await client.sign_batch(hashes)  # Ed25519 is deterministic
        for h, s in zip(hashes, blocking, strict=True):
            key.verify(s, h)
    monkeypatch.setattr(client_module, "MAX_BATCH", 100)  # split into frames the same way
    hashes = _hashes(250, b"split")
    assert await asyncio.to_thread(client.sign_batch_blocking, hashes) == (
        await client.sign_batch(hashes))
    with pytest.raises(ValueError):
        client.sign_batch_blocking([EntryHash(bytes(31))])


async def test_blocking_refusals_are_the_async_ones(client: JailClient) -> None:
    bad: list[tuple[str, dict[str, Any]]] = [
        ("sign_batch", {"kind": "grant", "data": "AAAA"}),
        ("sign_batch", {"kind": "entry_hash", "data": "AAAA"}),
        ("sign_batch", {"kind": "entry_hash", "data": "!!"}),
        ("sign_batch", {"kind": "entry_hash"}),
        ("no_such_op", {}),
    ]
    for op, args in bad:
        with pytest.raises(JailRefused) as blocking:
            await asyncio.to_thread(client.call_blocking, op, args)
        with pytest.raises(JailRefused) as async_:
            await client.call(op, args)
        assert (blocking.value.code, blocking.value.detail) == (
            async_.value.code, async_.value.detail)
    # A refusal leaves the connection usable: the next call reuses it.
    assert len(client._blocking) == 1
    (h,) = _hashes(1, b"after")
    key = (await client.public_keys()).sign_key
    key.verify((await asyncio.to_thread(client.sign_batch_blocking, [h]))[0], h)
    assert len(client._blocking) == 1


@pytest.mark.parametrize(
    "reply",
    [
        _frame(b"not json"),
        _frame(b'{"id": 99, "ok": true, "result": {}}'),
        _frame(b'{"id": 1, "ok": true, "result": {"signatures": "!!"}}'),
        _frame(b'{"id": 1, "ok": true, "result": {"signatures": "AAAA"}}'),
        _frame(b'{"id": 1, "ok": true}'),
        _frame(b'{"id": 1, "ok": true, "result": {}}') + _frame(b"{}"),
        (64 * 1024 * 1024).to_bytes(4, "big"),
    ],
)
async def test_blocking_malformed_answers_are_protocol_errors(
    workdir: Path, reply: bytes
) -> None:
    path = workdir / "fakeb.sock"
    server = await _fake_jail(path, reply)
    try:
        async with JailClient(path, timeout=2) as c:
            with pytest.raises(JailProtocolError):
                await asyncio.to_thread(c.sign_batch_blocking, _hashes(1))
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)


async def test_blocking_calls_end_by_their_deadline(workdir: Path) -> None:
    path = workdir / "silentb.sock"
    server = await _fake_jail(path, None)
    try:
        async with JailClient(path, timeout=0.2) as c:
            with pytest.raises(JailUnavailable, match="in time"):
                await asyncio.to_thread(c.sign_batch_blocking, _hashes(1))
            # Not asked a second time the async way: the store's group fails as it would.
            signer = JailSigner(c, InProcessSigner.generate().sign_key)
            with pytest.raises(JailUnavailable, match="in time") as info:
                await asyncio.to_thread(signer.sign_entry_hashes_sync, _hashes(1))
            assert not isinstance(info.value, SignInThreadUnavailable)
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)
    async with JailClient(workdir / "absent.sock", timeout=1, reconnect_timeout=30) as c:
        # No waiting for a jail to come back on this path: the async path does that.
        with pytest.raises(JailUnavailable, match="cannot reach"):
            await asyncio.to_thread(c.sign_batch_blocking, _hashes(1))
        c2 = JailSigner(c, InProcessSigner.generate().sign_key)
        with pytest.raises(SignInThreadUnavailable):
            await asyncio.to_thread(c2.sign_entry_hashes_sync, _hashes(1))
    closed = JailClient(workdir / "absent.sock")
    await closed.close()
    with pytest.raises(JailUnavailable, match="closed"):
        closed.call_blocking("public_keys", {})


async def test_a_blocking_connection_the_jail_cut_off_is_replaced(workdir: Path) -> None:
    directory = workdir / "idleb"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    proc = spawn_jail(keystore, directory / "s" / "j.sock", "--idle-timeout", "0.4")
    try:
        async with JailClient(proc.socket_path, timeout=5, max_idle=30) as c:
            key = (await c.public_keys()).sign_key
            for salt in (b"one", b"two"):
                (h,) = _hashes(1, salt)
                key.verify((await asyncio.to_thread(c.sign_batch_blocking, [h]))[0], h)
                await asyncio.sleep(0.8)  # the jail hangs up on the pooled connection
    finally:
        proc.stop()


# --- the store signs through the jail in its write thread ------------------------------------


class _Counting(JailClient):
    """Counts blocking and async sign_batch calls, and the threads the blocking ones ran in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocking_threads: list[threading.Thread] = []
        self.async_calls = 0
        self.blocking_error: Exception | None = None

    def sign_batch_blocking(self, hashes: Sequence[bytes]) -> list[Signature]:
        self.blocking_threads.append(threading.current_thread())
        if self.blocking_error is not None:
            raise self.blocking_error
        return super().sign_batch_blocking(hashes)

    async def sign_batch(self, hashes: Sequence[bytes]) -> list[Signature]:
        self.async_calls += 1
        return await super().sign_batch(hashes)


async def _open(path: Path, signer: JailSigner) -> SQLiteEventStore:
    return await SQLiteEventStore.open(path, signer, registry=node_registry(),
                                       projections=node_projections(), checkpoint_interval=0)


def _check_log(path: Path, signer: JailSigner) -> int:
    with sqlite3.connect(path / "openred.db") as conn:
        return check_chain(read_events(conn), expected_key=signer.sign_key).count


async def test_the_store_signs_in_its_write_thread_and_falls_back(
    jail: JailProc, workdir: Path
) -> None:
    data = workdir / "store"
    data.mkdir()
    async with _Counting(jail.socket_path, timeout=5) as c:
        signer = await JailSigner.create(c)
        assert _signs_in_thread(signer) is not None
        store = await _open(data, signer)
        try:
            stored = await asyncio.gather(*(store.append_one(peer_event(i)) for i in range(40)))
            assert [e.seq for e in stored] == list(range(2, 42))
            loop_thread = threading.current_thread()
            assert c.blocking_threads and loop_thread not in c.blocking_threads
            # Entry hashes went only the blocking way (the async calls are checkpoints' peers).
            assert c.async_calls == 0
            # The jail unreachable from the thread: the same group is signed the async way.
            c.blocking_error = JailUnavailable("cannot reach the jail")
            more = await asyncio.gather(*(store.append_one(peer_event(i)) for i in range(40, 60)))
            assert [e.seq for e in more] == list(range(42, 62))
            assert c.async_calls >= 1
            # A refusal is the group's error, as on the async path: nothing is written.
            c.blocking_error = JailRefused("refused", "no")
            calls = c.async_calls
            with pytest.raises(JailRefused):
                await store.append_one(peer_event(99))
            assert c.async_calls == calls
            assert store.head.size == 61
        finally:
            await store.close()
        assert _check_log(data, signer) == 61


def test_only_a_class_with_both_sign_calls_signs_in_the_thread() -> None:
    class AsyncOnly(InProcessSigner):
        async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
            return await super().sign_entry_hashes(hashes)

    class SyncSpy(InProcessSigner):
        def sign_entry_hashes_sync(self, hashes: Sequence[EntryHash]) -> list[Signature]:
            return super().sign_entry_hashes_sync(hashes)

    class Plain:
        sign_key = InProcessSigner.generate().sign_key

        async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
            return []

        async def sign_checkpoint(self, note_body: bytes) -> Signature:
            return Signature(bytes(64))

    spy = SyncSpy.generate()
    assert _signs_in_thread(InProcessSigner.generate()) is not None
    assert _signs_in_thread(AsyncOnly.generate()) is None
    assert _signs_in_thread(spy) == spy.sign_entry_hashes_sync
    assert _signs_in_thread(Plain()) is None  # type: ignore[arg-type]


async def test_the_store_rides_out_a_jail_restart(workdir: Path) -> None:
    """A supervised development jail killed between appends: the write thread's connection
    is dead, the store falls back to the async path, which restarts the jail and signs."""
    directory = workdir / "restart"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock")
    await supervisor.start()
    data = directory / "data"
    data.mkdir()
    try:
        async with _Counting(supervisor.socket_path, supervisor=supervisor, timeout=5) as c:
            signer = await JailSigner.create(c)
            store = await _open(data, signer)
            try:
                await asyncio.gather(*(store.append_one(peer_event(i)) for i in range(10)))
                assert c.async_calls == 0
                first = supervisor.pid
                assert first is not None
                os.kill(first, signal.SIGKILL)
                more = await asyncio.gather(*(store.append_one(peer_event(i))
                                              for i in range(10, 20)))
                assert [e.seq for e in more] == list(range(12, 22))
                assert supervisor.pid not in (None, first)
                assert c.async_calls >= 1  # the fallback signed while the jail came back
                # Once the jail is back, the write thread signs again.
                calls = c.async_calls
                await store.append_one(peer_event(20))
                assert c.async_calls == calls
            finally:
                await store.close()
        assert _check_log(data, signer) == 22
    finally:
        await supervisor.stop()
