"""The jail client: typed operations, error translation, the supervisor and the Signer port."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nacl.public
import pytest

import openred.crypto.client as client_module
from crypto_jail.keystore import create_keystore
from openred.crypto.client import (
    JailClient,
    JailDecryptionFailed,
    JailHandshakeFailed,
    JailSigner,
    JailSupervisor,
)
from openred.crypto.identity import EntryHash
from openred.errors import (
    DecryptionFailed,
    HandshakeFailed,
    InvalidSignature,
    JailProtocolError,
    JailRefused,
    JailUnavailable,
)
from openred.store.signer import Signer
from tests.crypto_jail.test_ops import checkpoint_for, mint
from tests.crypto_jail.test_server import JailProc, dev_keystore, jail_env, spawn_jail

PASSPHRASE = b"client test passphrase"


@pytest.fixture(scope="module")
def jails(workdir: Path) -> Iterator[tuple[JailProc, JailProc]]:
    procs = []
    for name in ("a", "b"):
        (workdir / name).mkdir(mode=0o700)
        keystore, _ = dev_keystore(workdir / name)
        procs.append(spawn_jail(keystore, workdir / name / "s" / "j.sock"))
    yield procs[0], procs[1]
    for proc in procs:
        proc.stop()


@pytest.fixture
async def alice(jails: tuple[JailProc, JailProc]) -> AsyncIterator[JailClient]:
    async with JailClient(jails[0].socket_path, timeout=5) as client:
        yield client


@pytest.fixture
async def bob(jails: tuple[JailProc, JailProc]) -> AsyncIterator[JailClient]:
    async with JailClient(jails[1].socket_path, timeout=5) as client:
        yield client


def _hashes(n: int, salt: bytes = b"") -> list[EntryHash]:
    return [EntryHash(hashlib.sha256(salt + i.to_bytes(4, "big")).digest()) for i in range(n)]


# --- the Signer port -------------------------------------------------------------------------


async def test_jail_signer_is_a_signer_and_signs_verifiably(alice: JailClient) -> None:
    signer = await JailSigner.create(alice)
    assert isinstance(signer, Signer)
    keys = await alice.public_keys()
    assert signer.sign_key == keys.sign_key
    assert keys.sign_key.node_id == keys.node_id
    hashes = _hashes(300)
    signatures = await signer.sign_entry_hashes(hashes)
    assert len(signatures) == 300
    for h, s in zip(hashes, signatures, strict=True):
        signer.sign_key.verify(s, h)
    with pytest.raises(InvalidSignature):
        signer.sign_key.verify(signatures[0], hashes[1])
    assert await signer.sign_entry_hashes([]) == []
    own = checkpoint_for(keys.node_id)
    signer.sign_key.verify(await signer.sign_checkpoint(own), own)
    with pytest.raises(ValueError):
        await signer.sign_entry_hashes([EntryHash(bytes(31))])


async def test_large_batches_are_split_into_frames(
    alice: JailClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_BATCH", 100)
    key = (await alice.public_keys()).sign_key
    hashes = _hashes(250, b"split")
    signatures = await alice.sign_batch(hashes)
    assert len(signatures) == 250
    for h, s in zip(hashes, signatures, strict=True):
        key.verify(s, h)


async def test_concurrent_callers_share_the_pool(alice: JailClient) -> None:
    key = (await alice.public_keys()).sign_key
    hashes = _hashes(40, b"gather")
    signatures = await asyncio.gather(*(alice.sign("entry_hash", h) for h in hashes))
    for h, s in zip(hashes, signatures, strict=True):
        key.verify(s, h)


# --- typed operations and error translation --------------------------------------------------


async def test_refusals_become_jail_refused(alice: JailClient) -> None:
    with pytest.raises(JailRefused) as info:
        await alice.sign("entry_hash", bytes(33))
    assert info.value.code == "refused"
    with pytest.raises(JailRefused) as info:
        await alice.call("no_such_op", {})
    assert info.value.code == "unknown_op"
    # The connection that carried a refusal keeps working.
    assert (await alice.public_keys()).node_id


async def test_open_sealed_and_decryption_failures(alice: JailClient) -> None:
    keys = await alice.public_keys()
    sealed = nacl.public.SealedBox(nacl.public.PublicKey(keys.box_key.raw)).encrypt(bytes(32))
    assert await alice.open_sealed(bytes(sealed)) == 32
    with pytest.raises(JailDecryptionFailed) as info:
        await alice.open_sealed(os.urandom(80))
    assert isinstance(info.value, DecryptionFailed)
    assert isinstance(info.value, JailRefused)
    assert info.value.code == "decrypt_failed"


async def test_wrap_and_unwrap(alice: JailClient) -> None:
    wrapped = await alice.wrap("session:1", b"k" * 32)
    assert await alice.unwrap("session:1", wrapped) == b"k" * 32
    with pytest.raises(DecryptionFailed):
        await alice.unwrap("session:2", wrapped)
    with pytest.raises(DecryptionFailed):
        await alice.unwrap("session:1", wrapped[:-1] + bytes([wrapped[-1] ^ 1]))


async def test_handshake_through_two_jails(alice: JailClient, bob: JailClient) -> None:
    a, b = await alice.public_keys(), await bob.public_keys()
    pub = {"node_id": str(a.node_id), "box_key": a.box_key.b64url()}
    bpub = {"node_id": str(b.node_id), "box_key": b.box_key.b64url()}
    m = mint(pub, bpub)
    first = await alice.noise_initiate(
        suite=m.suite, grant=m.grant, grant_signature=m.signature, sealed_token=m.sealed_a,
        remote_static=b.box_key.raw,
    )
    second = await bob.noise_respond(
        suite=m.suite, grant=m.grant, grant_signature=m.signature, sealed_token=m.sealed_b,
        remote_static=a.box_key.raw, message=first.message,
    )
    keys = await alice.noise_finish(first.handle, second.message)
    assert keys.send_key == second.keys.recv_key
    assert keys.recv_key == second.keys.send_key
    assert keys.handshake_hash == second.keys.handshake_hash
    assert keys.send_key.hex() not in repr(keys)
    with pytest.raises(JailRefused) as info:
        await alice.noise_finish(first.handle, second.message)
    assert info.value.code == "unknown_handle"
    tampered = bytes([first.message[0] ^ 1]) + first.message[1:]
    with pytest.raises(JailHandshakeFailed) as failed:
        await bob.noise_respond(
            suite=m.suite, grant=m.grant, grant_signature=m.signature, sealed_token=m.sealed_b,
            remote_static=a.box_key.raw, message=tampered,
        )
    assert isinstance(failed.value, HandshakeFailed)


# --- a misbehaving server --------------------------------------------------------------------


async def _fake_jail(path: Path, reply: bytes | None) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(4)
            await reader.readexactly(struct.unpack(">I", header)[0])
            if reply is not None:
                writer.write(reply)
                await writer.drain()
                await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(5)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "reply",
    [
        _frame(b"not json"),
        _frame(b'{"id": 99, "ok": true, "result": {}}'),
        _frame(b'{"id": 1, "ok": true, "result": {"sign_key": "!!"}}'),
        _frame(b'{"id": 1, "ok": true}'),
        struct.pack(">I", 64 * 1024 * 1024),
    ],
)
async def test_malformed_answers_are_protocol_errors(workdir: Path, reply: bytes) -> None:
    path = workdir / f"fake{os.getpid()}.sock"
    server = await _fake_jail(path, reply)
    try:
        async with JailClient(path, timeout=2) as client:
            with pytest.raises(JailProtocolError):
                await client.public_keys()
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)


async def test_a_silent_jail_times_out(workdir: Path) -> None:
    path = workdir / "silent.sock"
    server = await _fake_jail(path, None)
    try:
        async with JailClient(path, timeout=0.2) as client:
            with pytest.raises(JailUnavailable, match="in time"):
                await client.public_keys()
    finally:
        server.close()
        await server.wait_closed()
        path.unlink(missing_ok=True)


async def test_no_jail_and_no_supervisor_is_unavailable(workdir: Path) -> None:
    async with JailClient(workdir / "absent.sock", timeout=1, reconnect_timeout=0.2) as client:
        with pytest.raises(JailUnavailable):
            await client.public_keys()


# --- the supervisor --------------------------------------------------------------------------


async def test_supervisor_restarts_a_killed_dev_jail_transparently(workdir: Path) -> None:
    directory = workdir / "sup"
    directory.mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock")
    await supervisor.start()
    try:
        client = JailClient(supervisor.socket_path, supervisor=supervisor, timeout=5)
        signer = await JailSigner.create(client)
        assert signer.sign_key.node_id == public["node_id"]
        first_pid = supervisor.pid
        assert first_pid is not None
        (h,) = _hashes(1, b"before")
        signer.sign_key.verify((await signer.sign_entry_hashes([h]))[0], h)
        os.kill(first_pid, signal.SIGKILL)
        (h,) = _hashes(1, b"after")
        signature = (await signer.sign_entry_hashes([h]))[0]  # restarts, reconnects, retries
        signer.sign_key.verify(signature, h)
        assert supervisor.pid not in (None, first_pid)
        await client.close()
    finally:
        await supervisor.stop()
    assert not supervisor.socket_path.exists()


def _holds(obj: object, secret: bytes, depth: int = 0) -> bool:
    """Whether ``secret`` is reachable from ``obj``'s attributes (bytes, bytearray, containers)."""
    if isinstance(obj, bytes | bytearray):
        return secret in bytes(obj)
    if depth > 3:
        return False
    if isinstance(obj, dict):
        return any(_holds(v, secret, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple | set | frozenset):
        return any(_holds(v, secret, depth + 1) for v in obj)
    attrs = getattr(obj, "__dict__", None)
    return attrs is not None and any(_holds(v, secret, depth + 1) for v in attrs.values())


async def test_a_passphrase_jail_is_never_restarted_by_the_node(workdir: Path) -> None:
    directory = workdir / "pass"
    directory.mkdir(mode=0o700)
    keystore = directory / "ks.json"
    made = create_keystore(keystore, PASSPHRASE, kdf_level="min", test_only=True)
    given = bytearray(PASSPHRASE)
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock", passphrase=given,
                                extra_args=("--insecure-test-kdf",), reconnect_timeout=1.0)
    await supervisor.start()
    client = JailClient(supervisor.socket_path, supervisor=supervisor, timeout=5)
    try:
        assert (await client.public_keys()).node_id == made.node_id
        # The jail runs: the node side holds the passphrase nowhere (the caller's copy too).
        assert given == bytearray(len(PASSPHRASE))
        assert not _holds(supervisor, PASSPHRASE) and not _holds(client, PASSPHRASE)
        first_pid = supervisor.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(JailUnavailable, match="service manager"):
            await client.public_keys()
        assert supervisor.pid == first_pid  # nothing new was spawned
        # The service manager restarts it (here: the test, with the passphrase it holds);
        # the node reconnects on its own.
        proc = spawn_jail(keystore, supervisor.socket_path,
                          env=jail_env(OPENRED_JAIL_PASSPHRASE=PASSPHRASE.decode()))
        try:
            assert (await client.public_keys()).node_id == made.node_id
        finally:
            proc.stop()
    finally:
        await client.close()
        await supervisor.stop()


async def test_a_client_without_supervisor_waits_for_the_restarted_jail(workdir: Path) -> None:
    directory = workdir / "wait"
    directory.mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    socket_path = directory / "s" / "j.sock"
    proc = spawn_jail(keystore, socket_path)
    client = JailClient(socket_path, timeout=5, reconnect_timeout=20)
    try:
        assert (await client.public_keys()).node_id == public["node_id"]
        proc.stop()
        loop = asyncio.get_running_loop()
        restart = loop.run_in_executor(None, lambda: (time.sleep(0.5),
                                                      spawn_jail(keystore, socket_path))[1])
        assert (await client.public_keys()).node_id == public["node_id"]
        proc = await restart
    finally:
        await client.close()
        proc.stop()


@pytest.mark.parametrize("max_idle", [0.2, 30.0])
async def test_connections_the_jail_cut_off_for_idling_are_replaced(
    workdir: Path, max_idle: float
) -> None:
    directory = workdir / f"idle{max_idle}"
    directory.mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    proc = spawn_jail(keystore, directory / "s" / "j.sock", "--idle-timeout", "0.4")
    client = JailClient(proc.socket_path, timeout=5, reconnect_timeout=0.2, max_idle=max_idle)
    try:
        assert (await client.public_keys()).node_id == public["node_id"]
        await asyncio.sleep(0.8)  # the jail hangs up on the pooled connection
        # Not retried on a broken connection, so it must not be sent on a dead one.
        result = await client.call("public_keys", {}, retry=False)
        assert result["node_id"] == public["node_id"]
    finally:
        await client.close()
        proc.stop()


async def test_supervisor_reports_a_wrong_passphrase(workdir: Path) -> None:
    directory = workdir / "wrong"
    directory.mkdir(mode=0o700)
    keystore = directory / "ks.json"
    create_keystore(keystore, PASSPHRASE, kdf_level="min", test_only=True)
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock", passphrase=b"nope",
                                extra_args=("--insecure-test-kdf",))
    with pytest.raises(JailUnavailable, match="wrong passphrase"):
        await supervisor.start()
    await supervisor.stop()


async def test_unavailable_python_is_jail_unavailable(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = workdir / "nopy"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    monkeypatch.setenv("OPENRED_JAIL_PYTHON", "/nonexistent/python3")
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock")
    assert supervisor.python == "/nonexistent/python3"
    client = JailClient(supervisor.socket_path, supervisor=supervisor, timeout=2)
    with pytest.raises(JailUnavailable, match="cannot start"):
        await client.public_keys()
    await client.close()
    await supervisor.stop()


async def test_supervisor_gives_up_on_a_jail_that_keeps_dying(workdir: Path) -> None:
    directory = workdir / "dying"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock", max_restarts=2)
    client = JailClient(supervisor.socket_path, supervisor=supervisor, timeout=5)
    try:
        await supervisor.start()
        pid = supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await client.public_keys()  # the second start is allowed
        pid = supervisor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(JailUnavailable, match="giving up"):
            await client.public_keys()
    finally:
        await client.close()
        await supervisor.stop()


ORPHAN_PARENT = """
import asyncio, sys
from pathlib import Path
from openred.crypto.client import JailSupervisor

async def main():
    supervisor = JailSupervisor(Path(sys.argv[1]), Path(sys.argv[2]))
    await supervisor.start()
    print(supervisor.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_the_jail_does_not_outlive_its_supervisor(workdir: Path) -> None:
    directory = workdir / "orphan"
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    socket_path = directory / "s" / "j.sock"
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN_PARENT, str(keystore), str(socket_path),
        stdout=asyncio.subprocess.PIPE,
    )
    assert parent.stdout is not None
    jail_pid = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    try:
        assert _alive(jail_pid)
        parent.kill()  # SIGKILL: the supervisor gets no chance to stop the jail
        await parent.wait()
        for _ in range(100):
            if not _alive(jail_pid):
                break
            await asyncio.sleep(0.05)
        assert not _alive(jail_pid)
        assert not socket_path.exists()  # it shut down cleanly and removed its socket
    finally:
        if _alive(jail_pid):
            os.kill(jail_pid, signal.SIGKILL)
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_a_call_cancelled_while_it_waits_for_its_answer_closes_its_connection() -> None:
    """A caller's timeout (the health check's ``wait_for``) cancels a call mid-request: its
    connection, with an answer still owed on it, cannot go back to the pool — and it was
    neither pooled nor closed, left for the garbage collector ("unclosed transport")."""
    from tests.crypto_jail.test_server import short_dir

    path = short_dir() / "j.sock"
    closed = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # the request arrives; no answer is ever sent
        closed.set()
        writer.close()

    server = await asyncio.start_unix_server(never_answer, str(path))
    async with server:
        client = JailClient(path, timeout=30.0)
        call = asyncio.create_task(client.call("public_keys", {}))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(closed.wait(), 5.0)  # the client hung up
        await client.close()


async def test_a_jail_that_exits_before_ready_is_reaped_once(
        workdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A jail that exits on its own before it is ready (a wrong passphrase, a socket it cannot
    bind) is reaped by asyncio's child watcher only: signalling it as it exits polled it
    (``Popen.send_signal`` reaps a finished child first), the watcher then found no child and
    logged "Unknown child process pid …" — a stray line on the operator's terminal after the
    one-line error of ``openred directory init`` (seen in CI)."""
    directory = workdir / "exits"
    directory.mkdir(mode=0o700)
    keystore = directory / "ks.json"
    create_keystore(keystore, PASSPHRASE, kdf_level="min", test_only=True)
    with caplog.at_level(logging.WARNING, "asyncio"):
        for _ in range(12):
            supervisor = JailSupervisor(keystore, directory / "s" / "j.sock",
                                        passphrase=b"nope", extra_args=("--insecure-test-kdf",))
            with pytest.raises(JailUnavailable, match="wrong passphrase"):
                await supervisor.start()
            await supervisor.stop()
            await asyncio.sleep(0.05)  # the watcher's callback, had it raced
    assert "Unknown child process" not in caplog.text


async def test_a_stop_cut_short_still_signals_the_jail(workdir: Path) -> None:
    """A stop cancelled at once (a shutdown cut short: a second Ctrl-C, a time limit around
    the clean-ups) still signals the jail: a cancel inside the grace once left it unsignalled,
    serving its socket, with stdin still open (the EOF that stops it comes only when this
    process dies). A running jail is now signalled before any await; the grace's own cancel
    is :func:`test_a_wait_for_an_exit_cut_short_still_signals`."""
    supervisor = await _started_supervisor(workdir, "cut")
    try:
        pid = supervisor.pid
        assert pid is not None
        stopping = asyncio.create_task(supervisor.stop())
        await asyncio.sleep(0.1)
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        for _ in range(60):
            if not Path(f"/proc/{pid}").exists():
                break
            await asyncio.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), "the jail outlived its stop"
    finally:
        await supervisor.stop()


async def test_a_wait_for_an_exit_cut_short_still_signals() -> None:
    """:func:`exit_or_signal` cancelled inside its grace signals the child all the same."""
    proc = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        waiting = asyncio.create_task(client_module.exit_or_signal(proc, proc.terminate))
        await asyncio.sleep(0.1)  # inside the grace
        assert proc.returncode is None
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGTERM
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _started_supervisor(workdir: Path, name: str) -> JailSupervisor:
    """A development jail under a supervisor, started, in ``workdir / name``."""
    directory = workdir / name
    directory.mkdir(mode=0o700)
    keystore, _ = dev_keystore(directory)
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock")
    await supervisor.start()
    return supervisor


def _record_graces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids given the grace (:func:`openred.crypto.client.exit_or_signal`) from now on."""
    asked: list[int] = []
    real = client_module.exit_or_signal

    async def recording(proc: asyncio.subprocess.Process, signal: Callable[[], None]) -> bool:
        asked.append(proc.pid)
        return await real(proc, signal)

    monkeypatch.setattr(client_module, "exit_or_signal", recording)
    return asked


async def test_a_running_jail_is_stopped_at_once(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping a jail that runs signals it at once. The grace for a child exiting on its own
    was waited out by every stop (0.5 s per node and per directory stopped: the demo went from
    14 to 19 s); a running jail is not exiting, its stdout has not ended."""
    asked = _record_graces(monkeypatch)
    supervisor = await _started_supervisor(workdir, "atonce")
    pid = supervisor.pid
    await supervisor.stop()
    assert asked == []
    assert pid is not None and not Path(f"/proc/{pid}").exists()


async def test_a_jail_that_died_is_left_to_the_watcher_when_stopped(
        workdir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A jail whose output ended (it died, here by SIGKILL from outside) is given the grace
    when stopped, so asyncio's child watcher reaps it alone: no "Unknown child process"."""
    asked = _record_graces(monkeypatch)
    supervisor = await _started_supervisor(workdir, "died")
    pid = supervisor.pid
    assert pid is not None
    with caplog.at_level(logging.WARNING, "asyncio"):
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if supervisor._output_ended:
                break
            await asyncio.sleep(0.02)
        assert supervisor._output_ended
        await supervisor.stop()
        await asyncio.sleep(0.05)  # the watcher's callback, had it raced
    assert asked == [pid]
    assert "Unknown child process" not in caplog.text
