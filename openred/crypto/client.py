"""The only code that talks to the crypto jail (DESIGN §7): client, supervisor and Signer.

* :class:`JailClient` sends framed requests over the jail's Unix socket (a small pool of
  connections, one request in flight per connection, a timeout per call) and translates every
  failure here, in one place: error answers become :class:`~openred.errors.JailRefused`
  (with :class:`JailHandshakeFailed` / :class:`JailDecryptionFailed`, which are also
  :class:`~openred.errors.HandshakeFailed` / :class:`~openred.errors.DecryptionFailed`),
  malformed answers :class:`~openred.errors.JailProtocolError`, and a jail that cannot be
  reached :class:`~openred.errors.JailUnavailable`. A broken connection is reopened (after the
  supervisor restarts a dead jail, or once the service manager has restarted it: the client
  waits up to ``reconnect_timeout`` for the socket to answer again) and an idempotent request
  is retried once. Once the client has learned the jail's public keys (:meth:`JailClient.
  public_keys`, which every service asks first), every connection it opens asks them again
  and is refused with :class:`~openred.errors.JailIdentityChanged` when they differ: a jail
  restarted on another keystore, or another process bound to the socket after the jail died,
  gets nothing to sign, wrap or open (docs/threat-model.md, jattack).
* :class:`JailSupervisor` runs ``python -I -m crypto_jail serve`` (``OPENRED_JAIL_PYTHON`` or
  this interpreter) and waits for its ``READY`` line. It restarts a jail that died only for a
  development keystore without passphrase. A passphrase is handed over once, through an
  inherited pipe (never argv or the environment), and wiped here right after: once the jail
  runs, no other process holds it. A passphrase jail that dies is restarted by the service
  manager or the operator (``deploy/systemd/openred-jail@.service``); the supervisor then only
  waits for the socket to answer again (docs/threat-model.md).
* :class:`JailSigner` implements the store's :class:`~openred.store.signer.Signer` over a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crypto_jail.errors import FrameError, OpRefused
from crypto_jail.protocol import (
    HEADER,
    MAX_BATCH,
    MAX_BODY,
    MAX_SIGN_MANY,
    b64d,
    b64e,
    encode_request,
    parse_response,
)
from crypto_jail.witness import MAX_PROOF
from openred.crypto.grants import SEALED_TOKEN_LEN
from openred.crypto.identity import BoxKey, EntryHash, NodeId, Signature, SignKey
from openred.errors import (
    JailDecryptionFailed,
    JailHandshakeFailed,
    JailIdentityChanged,
    JailProtocolError,
    JailRefused,
    JailUnavailable,
)
from openred.store.signer import SignInThreadUnavailable

__all__ = [
    "GrantToSeal",
    "Initiated",
    "JailClient",
    "JailDecryptionFailed",
    "JailHandshakeFailed",
    "JailIdentityChanged",
    "JailSigner",
    "JailSupervisor",
    "PublicKeys",
    "Responded",
    "SealedGrant",
    "SessionKeys",
    "SignCoalescer",
]

logger = logging.getLogger("openred.crypto_jail")

JAIL_PYTHON_ENV = "OPENRED_JAIL_PYTHON"
_IDENTITY = ("sign_key", "box_key", "node_id")
SIGNATURE_LEN = 64
_BROKEN = (ConnectionError, EOFError)
_UNREACHABLE = (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, OSError)


_REFUSALS: dict[str, type[JailRefused]] = {
    "handshake_failed": JailHandshakeFailed,
    "decrypt_failed": JailDecryptionFailed,
}


def refusal(code: str, detail: str) -> JailRefused:
    """The exception for an error answer (the one place wire codes become exception types)."""
    return _REFUSALS.get(code, JailRefused)(code, detail)


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """The jail's public identity."""

    sign_key: SignKey
    box_key: BoxKey
    node_id: NodeId


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Noise Split() output from one side's view; ``repr`` hides the keys."""

    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)
    handshake_hash: bytes


@dataclass(frozen=True, slots=True)
class Initiated:
    """An initiated handshake: the jail-side ``handle`` and Noise message 1."""

    handle: str
    message: bytes


@dataclass(frozen=True, slots=True)
class Responded:
    """A completed responder handshake: Noise message 2 and the responder's session keys."""

    message: bytes
    keys: SessionKeys


def _need(result: dict[str, Any], name: str, length: int | None = None) -> bytes:
    return _decode(result.get(name), name, length)


def _decode(value: object, name: str, length: int | None = None) -> bytes:
    """The bytes of a base64url field ``name`` of a jail answer; JailProtocolError otherwise."""
    try:
        raw = b64d(value, name=name)
    except OpRefused as exc:
        raise JailProtocolError(f"jail answer field {name!r} is not base64url") from exc
    if length is not None and len(raw) != length:
        raise JailProtocolError(f"jail answer field {name!r} has the wrong length")
    return raw


def _session_keys(result: dict[str, Any]) -> SessionKeys:
    return SessionKeys(
        _need(result, "send_key", 32), _need(result, "recv_key", 32),
        _need(result, "handshake_hash"),
    )


class _Connection(asyncio.BufferedProtocol):
    """One connection to the jail, one request at a time.

    A buffered protocol reads into one reused buffer: asyncio's stream reader would allocate
    (and the allocator mmap and trim) a 256 KiB block for every answer, three system calls a
    jail call does not need.
    """

    _CHUNK = 64 * 1024

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._scratch = memoryview(bytearray(self._CHUNK))
        self._data = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._lost: BaseException | None = None
        self._next_id = 1
        self.idle_since = 0.0

    @classmethod
    async def open(cls, path: Path) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_unix_connection(cls, str(path))
        return protocol

    # -- asyncio.BufferedProtocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._data += self._scratch[:nbytes]
        if len(self._data) < HEADER.size:
            return
        (length,) = HEADER.unpack_from(self._data)
        if length > MAX_BODY:
            self._fail(JailProtocolError(f"jail answer length {length} exceeds {MAX_BODY}"))
            return
        end = HEADER.size + length
        if len(self._data) >= end and self._waiter is not None and not self._waiter.done():
            body = bytes(self._data[HEADER.size : end])
            del self._data[:end]
            self._waiter.set_result(body)

    def eof_received(self) -> bool | None:
        self._fail(ConnectionResetError("the jail closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the jail closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # -- requests --

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._lost is not None or self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the connection to the jail is closed")
        request_id = self._next_id
        self._next_id += 1
        try:
            frame = encode_request(request_id, op, args)
        except FrameError as exc:
            raise JailProtocolError(f"request too large for one frame ({op})") from exc
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(frame)
        return _check_answer(await self._waiter, request_id)

    @property
    def alive(self) -> bool:
        """False once the jail hung up (e.g. it cut this connection off as idle)."""
        return self._lost is None and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _check_answer(body: bytes, request_id: int) -> dict[str, Any]:
    """The result of one answer body to request ``request_id``, or the error it carries."""
    try:
        response = parse_response(body)
    except FrameError as exc:
        raise JailProtocolError(exc.detail) from exc
    if response.id != request_id:
        if not response.ok and response.id is None:
            raise refusal(response.code, response.detail)
        raise JailProtocolError(f"jail answered id {response.id}, expected {request_id}")
    if not response.ok:
        raise refusal(response.code, response.detail)
    return response.result


class _NoAnswerInTime(JailUnavailable):
    """The jail took the request but did not answer within the client's timeout."""


class _BlockingConnection:
    """One blocking connection to the jail, for calls made from a worker thread.

    The store's write thread signs a group's entry hashes with it between chaining and
    committing, in the same hand-off to that thread: no trip through the event loop, no second
    hand-off. Same frames, same checks of the answer as :class:`_Connection`. The socket stays
    in blocking mode with kernel timeouts (SO_SNDTIMEO, SO_RCVTIMEO), as the jail's own: the
    usual answer costs one ``send`` and one ``recv``, and every call ends by its deadline.
    """

    _CHUNK = 64 * 1024

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self._scratch = bytearray(self._CHUNK)
        self._view = memoryview(self._scratch)
        self._next_id = 1
        self._read_timeout = timeout
        self.idle_since = time.monotonic()
        self.broken = False

    @classmethod
    def open(cls, path: Path, timeout: float) -> _BlockingConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(timeout))
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout)

    def request(self, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        try:
            frame = encode_request(request_id, op, args)
        except FrameError as exc:
            raise JailProtocolError(f"request too large for one frame ({op})") from exc
        deadline = time.monotonic() + timeout
        self.broken = True  # until a whole answer is read: a half-read answer poisons the stream
        self._set_read_timeout(timeout)
        try:
            self.sock.sendall(frame)
            data = bytearray()
            end = -1
            while end < 0 or len(data) < end:
                if data:  # a split answer: the rest must come before the deadline
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"the jail did not answer {op} in time")
                    self._set_read_timeout(remaining)
                count = self.sock.recv_into(self._scratch)
                if not count:
                    raise ConnectionResetError("the jail closed the connection")
                data += self._view[:count]
                if end < 0 and len(data) >= HEADER.size:
                    (length,) = HEADER.unpack_from(data)
                    if length > MAX_BODY:
                        raise JailProtocolError(f"jail answer length {length} exceeds {MAX_BODY}")
                    end = HEADER.size + length
        except BlockingIOError as exc:  # SO_RCVTIMEO / SO_SNDTIMEO expired
            raise TimeoutError(f"the jail did not answer {op} in time") from exc
        if len(data) != end:  # one request in flight: nothing may follow its answer
            raise JailProtocolError("the jail sent more than one answer")
        self.broken = False
        return _check_answer(bytes(data[HEADER.size:]), request_id)

    def _set_read_timeout(self, seconds: float) -> None:
        if seconds != self._read_timeout:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
            self._read_timeout = seconds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _timeval(seconds: float) -> bytes:
    """A struct timeval for SO_RCVTIMEO / SO_SNDTIMEO, at least 1 µs (0 would mean never)."""
    micros = max(1, int(seconds * 1_000_000))
    return struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)


async def _answers(socket_path: Path) -> bool:
    """Whether a jail answers a request on ``socket_path`` (a dying one may still accept)."""
    try:
        async with asyncio.timeout(1.0):
            conn = await _Connection.open(socket_path)
            try:
                await conn.request("public_keys", {})
            finally:
                conn.close()
    except (OSError, TimeoutError, JailProtocolError, JailRefused):
        return False
    return True


EXIT_GRACE: Final = 0.5
"""Seconds a child that may be exiting on its own is given before it is signalled."""


async def exited_within(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    """Whether ``proc`` exits within ``seconds`` (reaped by asyncio's child watcher).

    Wait for this before signalling a child that may be exiting already (its output ended: a
    jail with a wrong passphrase or a socket it cannot bind, a worker gone): signalling polls
    it (``Popen.send_signal`` reaps a finished child first), and the watcher's own
    ``waitpid``, finding no child, logs "Unknown child process pid …, will report returncode
    255" — a stray line after ``openred directory init``'s one-line error (seen in CI).
    """
    try:
        await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def wait_or_kill(proc: asyncio.subprocess.Process, seconds: float) -> None:
    """Wait up to ``seconds`` for ``proc`` to exit, then SIGKILL it and wait for it."""
    if not await exited_within(proc, seconds):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def exit_or_signal(proc: asyncio.subprocess.Process, signal: Callable[[], None]) -> bool:
    """Give ``proc`` :data:`EXIT_GRACE` to exit on its own (:func:`exited_within`), else call
    ``signal`` (its ``terminate`` or ``kill``); whether it was signalled.

    Signalled at once, too, when the wait is cancelled (a stop cut short, the loop ending and
    cancelling what is left): the grace is for a child already exiting, and must never let
    one that is not — hung, or compromised and deaf to the EOF of its channel — outlive the
    stop that was to signal it (before the grace, the signal came before any await).
    """
    if proc.returncode is not None:
        return False
    try:
        if await exited_within(proc, EXIT_GRACE):
            return False
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            signal()
        raise
    with contextlib.suppress(ProcessLookupError):
        signal()
    return True


class JailSupervisor:
    """Runs the jail as a child process; restarts it only if its keystore has no passphrase.

    ``passphrase`` is used for the first start only and then wiped (pass a ``bytearray`` to
    have the caller's copy wiped too; a ``bytes`` object cannot be). After that the
    supervisor holds no secret: when a passphrase jail dies, :meth:`ensure_running` waits up
    to ``reconnect_timeout`` for a jail started by the service manager to answer on the
    socket, and raises :class:`~openred.errors.JailUnavailable` otherwise.
    """

    def __init__(
        self,
        keystore: Path,
        socket_path: Path,
        *,
        passphrase: bytes | bytearray | None = None,
        python: str | None = None,
        no_seccomp: bool = False,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        reconnect_timeout: float = 30.0,
    ) -> None:
        self.keystore = Path(keystore)
        self.socket_path = Path(socket_path)
        self.restartable = passphrase is None
        """Whether this supervisor may start the jail again (development keystores only)."""
        self._passphrase: bytearray | None = None if passphrase is None else bytearray(passphrase)
        if isinstance(passphrase, bytearray):
            passphrase[:] = bytes(len(passphrase))
        self._reconnect_timeout = reconnect_timeout
        self._python = python
        self._no_seccomp = no_seccomp
        self._extra = tuple(extra_args)
        self._start_timeout = start_timeout
        self._max_restarts = max_restarts
        self._window = restart_window
        self._starts: deque[float] = deque()
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # The jail's stdout read to its end: it is exiting, or gone (see _reap).
        self._output_ended = False
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The running jail's process id (None before start)."""
        return None if self._proc is None else self._proc.pid

    @property
    def python(self) -> str:
        return self._python or os.environ.get(JAIL_PYTHON_ENV) or sys.executable

    def _argv(self) -> list[str]:
        # --supervisor-pid: a jail whose supervisor died while it started stops at once.
        argv = [self.python, "-I", "-m", "crypto_jail", "serve", "--exit-on-stdin-eof",
                "--supervisor-pid", str(os.getpid()),
                "--keystore", str(self.keystore), "--socket", str(self.socket_path)]
        if self._no_seccomp:
            argv.append("--no-seccomp")
        return argv + list(self._extra)

    async def start(self) -> None:
        """Start the jail if it is not running and wait for READY; JailUnavailable on failure."""
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                if self._proc is not None and not self.restartable:
                    raise JailUnavailable("a jail with a passphrase is restarted by the "
                                          "service manager, not by the node")
                await self._spawn()

    async def ensure_running(self) -> None:
        """Called after a connection failed: restart a development jail unless it answers;
        for a passphrase jail, wait for the service manager's jail to answer instead."""
        async with self._lock:
            proc = self._proc
            if proc is not None and proc.returncode is None and await _answers(self.socket_path):
                return
            if not self.restartable:
                if proc is not None and proc.returncode is not None:
                    await self._reap(proc)
                await self._wait_for_other_jail()
                return
            if proc is not None:
                await self._reap(proc)
            await self._spawn()

    async def _wait_for_other_jail(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._reconnect_timeout
        while not await _answers(self.socket_path):
            if loop.time() >= deadline:
                raise JailUnavailable(
                    f"the jail at {self.socket_path} is down; a jail with a passphrase is "
                    "restarted by the service manager or the operator, not by the node"
                )
            await asyncio.sleep(0.1)

    async def _spawn(self) -> None:
        now = time.monotonic()
        while self._starts and now - self._starts[0] > self._window:
            self._starts.popleft()
        if len(self._starts) >= self._max_restarts:
            raise JailUnavailable(
                f"the jail was started {len(self._starts)} times in {self._window:.0f} s; "
                "giving up"
            )
        self._starts.append(now)
        argv = self._argv()
        pass_fds: tuple[int, ...] = ()
        read_end: int | None = None
        if not self.restartable:
            passphrase, self._passphrase = self._passphrase, None  # used once, then gone
            if passphrase is None:
                raise JailUnavailable("the passphrase was handed to a jail already; a jail "
                                      "with a passphrase is restarted by the service manager")
            try:
                if len(passphrase) > 4096:
                    raise JailUnavailable("passphrase longer than 4096 bytes")
                read_end, write_end = os.pipe()
                try:
                    os.write(write_end, passphrase)  # fits the pipe buffer: nothing blocks
                finally:
                    os.close(write_end)
            finally:
                passphrase[:] = bytes(len(passphrase))
            argv += ["--passphrase-fd", str(read_end)]
            pass_fds = (read_end,)
        env = {k: v for k, v in os.environ.items() if k != "OPENRED_JAIL_PASSPHRASE"}
        try:
            proc = await asyncio.create_subprocess_exec(
                # stdin stays open for the jail's lifetime: if this process dies, the jail sees
                # EOF and stops instead of holding the socket (--exit-on-stdin-eof).
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=pass_fds, env=env,
            )
        except OSError as exc:
            raise JailUnavailable(f"cannot start the jail with {self.python}: {exc}") from exc
        finally:
            if read_end is not None:
                os.close(read_end)
        self._proc = proc
        self._output_ended = False
        self._stderr_tail.clear()
        assert proc.stdout is not None and proc.stderr is not None
        self._tasks = [asyncio.create_task(self._drain_stderr(proc.stderr))]
        try:
            await asyncio.wait_for(self._wait_ready(proc.stdout), self._start_timeout)
        except (TimeoutError, JailUnavailable) as exc:
            await self._reap(proc)
            tail = " | ".join(self._stderr_tail) or "no output"
            raise JailUnavailable(f"the jail did not become ready: {tail}") from exc
        self._tasks.append(asyncio.create_task(self._drain(proc.stdout)))

    async def _wait_ready(self, stdout: asyncio.StreamReader) -> None:
        while True:
            line = await stdout.readline()
            if not line:
                self._output_ended = True
                raise JailUnavailable("the jail exited before it was ready")
            if line.startswith(b"READY "):
                return

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(text)
            logger.info("%s", text)

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while await stream.read(65536):
            pass
        self._output_ended = True

    async def _reap(self, proc: asyncio.subprocess.Process, *, exiting: bool = True) -> None:
        """Stop ``proc`` and wait for it. ``exiting``: it may be exiting on its own (it failed,
        its output ended), so it is given :data:`EXIT_GRACE` before it is signalled
        (:func:`exit_or_signal`); a jail that is not is signalled at once."""
        if not exiting and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            signalled = True
        else:
            signalled = await exit_or_signal(proc, proc.terminate)
        if signalled:
            await wait_or_kill(proc, 5.0)
        if proc.stdin is not None:
            proc.stdin.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        self._tasks = []

    async def stop(self) -> None:
        """Terminate the jail (SIGTERM, then SIGKILL after 5 s) and wait for it.

        At once: only a jail whose output has ended (exiting on its own) is first given
        :data:`EXIT_GRACE`, which every stop of a running jail used to wait out."""
        async with self._lock:
            if self._proc is not None:
                await self._reap(self._proc, exiting=self._output_ended)
                self._proc = None


class JailClient:
    """Typed requests to the jail over its Unix socket."""

    def __init__(
        self,
        socket_path: Path,
        *,
        supervisor: JailSupervisor | None = None,
        timeout: float = 10.0,
        max_connections: int = 4,
        reconnect_timeout: float = 30.0,
        max_idle: float = 30.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.supervisor = supervisor
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        # Below the jail's --idle-timeout (60 s): a pooled connection is never used just as
        # the jail cuts it off for idling.
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False
        # Blocking connections for calls from worker threads (call_blocking), and their lock.
        self._blocking: list[_BlockingConnection] = []
        self._blocking_lock = threading.Lock()
        # The jail's public keys as first answered (public_keys): every connection opened
        # afterwards must answer the same before it carries a request.
        self._identity: dict[str, Any] | None = None

    async def __aenter__(self) -> JailClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every pooled connection (the supervisor, if any, is stopped separately)."""
        self._closed = True
        self._drop_idle()
        self._drop_blocking()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _drop_blocking(self) -> None:
        with self._blocking_lock:
            idle, self._blocking = self._blocking, []
        for conn in idle:
            conn.close()

    async def _open(self) -> _Connection:
        conn = await asyncio.wait_for(_Connection.open(self.socket_path), self.timeout)
        if self._identity is None:
            return conn
        try:
            async with asyncio.timeout(self.timeout):
                self._hold_identity(await conn.request("public_keys", {}))
        except BaseException:
            conn.close()
            raise
        return conn

    def _hold_identity(self, result: dict[str, Any]) -> None:
        """Remember the jail's keys from its first answer; refuse any other answer after."""
        seen = {name: result.get(name) for name in _IDENTITY}
        if self._identity is None:
            self._identity = seen
            return
        if seen != self._identity:
            raise JailIdentityChanged(
                f"the jail on {self.socket_path} answers as node {seen['node_id']!r}, not as "
                f"node {self._identity['node_id']!r} this service started with: another "
                "keystore or another process is on the socket; nothing is sent to it "
                "(restart the right jail, or this service if the change is meant)"
            )

    async def _connect(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.alive and now - conn.idle_since < self.max_idle:
                return conn
            conn.close()  # cut off by the jail, or about to be, for idling
        try:
            return await self._open()
        except (TimeoutError, *_UNREACHABLE):
            if self.supervisor is None:
                return await self._open_when_back()
        await self.supervisor.ensure_running()
        return await self._open()

    async def _open_when_back(self) -> _Connection:
        """Wait up to ``reconnect_timeout`` for a jail (restarted by the service manager)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        while True:
            try:
                return await self._open()
            except (TimeoutError, *_UNREACHABLE):
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.05)

    async def call(self, op: str, args: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """Send one request; the result object, or raise a JailError subclass.

        ``retry`` resends once after a broken connection (only for idempotent operations).
        """
        if self._closed:
            raise JailUnavailable("the jail client is closed")
        async with self._slots:
            for attempt in (1, 2):
                try:
                    conn = await self._connect()
                except (TimeoutError, *_UNREACHABLE) as exc:
                    raise JailUnavailable(f"cannot reach the jail at {self.socket_path}") from exc
                try:
                    async with asyncio.timeout(self.timeout):
                        result = await conn.request(op, args)
                except JailRefused:
                    self._release(conn)
                    raise
                except JailProtocolError:
                    conn.close()
                    raise
                except TimeoutError as exc:
                    conn.close()
                    raise JailUnavailable(f"the jail did not answer {op} in time") from exc
                except _BROKEN as exc:
                    conn.close()
                    self._drop_idle()  # every pooled connection died with the jail
                    if self.supervisor is not None:
                        await self.supervisor.ensure_running()
                    if attempt == 1 and retry:
                        continue
                    raise JailUnavailable(f"the connection to the jail broke during {op}") from exc
                except BaseException:
                    # Cancelled (a caller's timeout) with the answer still owed on this
                    # connection: it cannot carry another request, so it is closed here, not
                    # left to the garbage collector.
                    conn.close()
                    raise
                self._release(conn)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _release(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    def call_blocking(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """:meth:`call` for a worker thread (never the event loop's): blocks until answered.

        For idempotent operations only: a pooled connection that turns out broken is replaced
        and the request resent once. Error answers raise what :meth:`call` raises
        (:class:`~openred.errors.JailRefused` and its subclasses, JailProtocolError); a jail
        that cannot be reached, breaks the connection twice or does not answer within
        ``timeout`` raises :class:`~openred.errors.JailUnavailable` at once — this path never
        restarts a jail nor waits for one: callers fall back to the async :meth:`call`,
        which does (except after a timeout: a jail that does not answer is not asked twice).
        """
        for attempt in (1, 2):
            if self._closed:
                raise JailUnavailable("the jail client is closed")
            conn, reused = self._take_blocking()
            try:
                result = conn.request(op, args, self.timeout)
            except JailRefused:
                self._give_back(conn)
                raise
            except JailProtocolError:
                conn.close()
                raise
            except TimeoutError as exc:
                conn.close()
                raise _NoAnswerInTime(f"the jail did not answer {op} in time") from exc
            except OSError as exc:  # broken pipe, reset, EOF: the jail hung up
                conn.close()
                if attempt == 1 and reused:
                    continue
                raise JailUnavailable(f"the connection to the jail broke during {op}") from exc
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_blocking(self) -> tuple[_BlockingConnection, bool]:
        """A pooled blocking connection (reused: True) or a new one (False)."""
        now = time.monotonic()
        while True:
            with self._blocking_lock:
                conn = self._blocking.pop() if self._blocking else None
            if conn is None:
                break
            if not conn.broken and now - conn.idle_since < self.max_idle:
                return conn, True
            conn.close()  # cut off by the jail, or about to be, for idling
        try:
            conn = _BlockingConnection.open(self.socket_path, self.timeout)
        except OSError as exc:  # TimeoutError included
            raise JailUnavailable(f"cannot reach the jail at {self.socket_path}") from exc
        if self._identity is None:
            return conn, False
        try:
            self._hold_identity(conn.request("public_keys", {}, self.timeout))
        except OSError as exc:  # it hung up or did not answer: as if unreachable
            conn.close()
            raise JailUnavailable(f"cannot reach the jail at {self.socket_path}") from exc
        except BaseException:
            conn.close()
            raise
        return conn, False

    def _give_back(self, conn: _BlockingConnection) -> None:
        conn.idle_since = time.monotonic()
        with self._blocking_lock:
            if not self._closed:
                self._blocking.append(conn)
                return
        conn.close()

    # -- typed operations --

    async def public_keys(self) -> PublicKeys:
        """The jail's public keys; the first answer is the identity this client holds on to
        (every later connection must answer the same: :class:`JailIdentityChanged`)."""
        result = await self.call("public_keys", {})
        try:
            sign_key = SignKey(_need(result, "sign_key", 32))
            box_key = BoxKey(_need(result, "box_key", 32))
            node_id = NodeId(str(result.get("node_id")))
        except ValueError as exc:
            raise JailProtocolError("jail answered malformed public keys") from exc
        if sign_key.node_id != node_id:
            raise JailProtocolError("jail node id does not match its signing key")
        self._hold_identity(result)
        return PublicKeys(sign_key, box_key, node_id)

    async def sign(self, kind: str, data: bytes) -> Signature:
        """Ed25519 over ``data``, which must be one of the jail's signable structures."""
        result = await self.call("sign", {"kind": kind, "data": b64e(data)})
        return Signature(_need(result, "signature", SIGNATURE_LEN))

    async def sign_batch(self, hashes: Sequence[bytes]) -> list[Signature]:
        """Sign 32-byte entry hashes in order (split into frames of at most MAX_BATCH)."""
        out: list[Signature] = []
        for chunk in _batches(hashes):
            out.extend(_signatures(await self.call("sign_batch", _batch_args(chunk)), len(chunk)))
        return out

    def sign_batch_blocking(self, hashes: Sequence[bytes]) -> list[Signature]:
        """:meth:`sign_batch` from a worker thread (see :meth:`call_blocking`)."""
        out: list[Signature] = []
        for chunk in _batches(hashes):
            out.extend(_signatures(self.call_blocking("sign_batch", _batch_args(chunk)),
                                   len(chunk)))
        return out

    async def sign_many(
        self, items: Sequence[SignItem]
    ) -> list[Signature | SealedGrant | JailRefused]:
        """:meth:`sign` for each ``(kind, data)`` in one round trip per :data:`MAX_SIGN_MANY`.

        An item ``("checkpoint", body, proof)`` carries a consistency proof, as
        :meth:`sign_checkpoint` does (a jail with a witness wants one for a larger tree); a
        :class:`GrantToSeal` is a grant the jail signs and mints the two sealed tokens of
        (answered as a :class:`SealedGrant`).
        In order: a signature, or the :class:`~openred.errors.JailRefused` the jail answered
        for that item (the exception :meth:`sign` would raise; the caller raises it). A refusal
        of the whole call (a malformed request) and a jail that cannot be reached raise.
        """
        out: list[Signature | SealedGrant | JailRefused] = []
        for start in range(0, len(items), MAX_SIGN_MANY):
            chunk = items[start : start + MAX_SIGN_MANY]
            result = await self.call("sign_many", {"items": [_sign_item(i) for i in chunk]})
            out.extend(_sign_many_results(result, chunk))
        return out

    async def sign_grant(self, grant: GrantToSeal) -> SealedGrant:
        """The grant's signature and its two tokens, minted in the jail and sealed there to
        the two nodes' X25519 keys (DESIGN §5): the caller never holds a token it can read."""
        (result,) = await self.sign_many([grant])
        if isinstance(result, JailRefused):
            raise result
        assert isinstance(result, SealedGrant)
        return result

    async def sign_checkpoint(
        self, body: bytes, consistency_proof: Sequence[bytes] | None = None
    ) -> Signature:
        """Sign a checkpoint body; a jail with a witness wants ``consistency_proof`` from the
        checkpoint it signed last (:meth:`witnessed`) unless it signed none or the same."""
        args: dict[str, Any] = {"body": b64e(body)}
        if consistency_proof is not None:
            args["consistency_proof"] = [b64e(h) for h in consistency_proof]
        result = await self.call("sign_checkpoint", args)
        return Signature(_need(result, "signature", SIGNATURE_LEN))

    async def witnessed(self, origin: str) -> tuple[bool, bytes | None]:
        """(whether the jail keeps a witness, the newest checkpoint body it signed for
        ``origin`` or None). A jail from before witnesses keeps none."""
        try:
            result = await self.call("witnessed", {"origin": origin})
        except JailRefused as exc:
            if exc.code == "unknown_op":
                return False, None
            raise
        body = result.get("body")
        if body is None:
            return bool(result.get("witness")), None
        if not isinstance(body, str):
            raise JailProtocolError("witnessed: body is not a string")
        try:
            return True, b64d(body, name="body")
        except OpRefused as exc:
            raise JailProtocolError(f"witnessed: {exc.detail}") from None

    async def witness_file(self, origin: str) -> str | None:
        """The file the jail keeps its witness in (its ``--witness-file``, as it names it), or
        None when it keeps none or does not say (a jail from before it did)."""
        try:
            result = await self.call("witnessed", {"origin": origin})
        except JailRefused as exc:
            if exc.code == "unknown_op":
                return None
            raise
        name = result.get("file") if result.get("witness") else None
        return name if isinstance(name, str) and name.isprintable() else None

    async def open_sealed(self, sealed: bytes) -> int:
        """Check that a sealed token opens with the node's key; its length (it stays inside)."""
        result = await self.call("open_sealed", {"sealed": b64e(sealed)})
        length = result.get("length")
        if not isinstance(length, int) or isinstance(length, bool):
            raise JailProtocolError("jail answered open_sealed without a length")
        return length

    async def noise_initiate(
        self, *, suite: str, grant: bytes, grant_signature: bytes, sealed_token: bytes,
        remote_static: bytes,
    ) -> Initiated:
        """Start a KKpsk0 handshake as initiator; Noise message 1 and a handle for finish."""
        result = await self.call("noise_initiate", {
            "suite": suite, "grant": b64e(grant), "grant_signature": b64e(grant_signature),
            "sealed_token": b64e(sealed_token), "remote_static": b64e(remote_static),
        })
        handle = result.get("handle")
        if not isinstance(handle, str):
            raise JailProtocolError("jail answered noise_initiate without a handle")
        return Initiated(handle, _need(result, "message"))

    async def noise_respond(
        self, *, suite: str, grant: bytes, grant_signature: bytes, sealed_token: bytes,
        remote_static: bytes, message: bytes,
    ) -> Responded:
        """Answer Noise message 1 as responder; message 2 and the responder's session keys."""
        result = await self.call("noise_respond", {
            "suite": suite, "grant": b64e(grant), "grant_signature": b64e(grant_signature),
            "sealed_token": b64e(sealed_token), "remote_static": b64e(remote_static),
            "message": b64e(message),
        })
        return Responded(_need(result, "message"), _session_keys(result))

    async def noise_finish(self, handle: str, message: bytes) -> SessionKeys:
        """Read Noise message 2 on ``handle`` (used once); the initiator's session keys."""
        result = await self.call(
            "noise_finish", {"handle": handle, "message": b64e(message)}, retry=False
        )
        return _session_keys(result)

    async def wrap(self, label: str, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` at rest under the jail's wrap key, bound to ``label``."""
        result = await self.call("wrap", {"label": label, "plaintext": b64e(plaintext)})
        return _need(result, "wrapped")

    async def unwrap(self, label: str, wrapped: bytes) -> bytes:
        """Decrypt a wrapped value; JailDecryptionFailed for a wrong label or any tampering."""
        result = await self.call("unwrap", {"label": label, "wrapped": b64e(wrapped)})
        return _need(result, "plaintext")


@dataclass(frozen=True, slots=True)
class GrantToSeal:
    """A grant for the jail to sign and to mint the tokens of (an item of ``sign_many``).

    ``canonical`` is the grant's RFC 8785 bytes; the jail draws the grant's secret, derives
    ``token_a`` and ``token_b`` from it (DESIGN §5) and seals ``token_a`` to
    ``initiator_box`` and ``token_b`` to ``responder_box`` (the nodes' X25519 keys).
    """

    canonical: bytes
    initiator_box: BoxKey
    responder_box: BoxKey


@dataclass(frozen=True, slots=True)
class SealedGrant:
    """The jail's answer to a :class:`GrantToSeal`: the grant's signature and its two tokens,
    each sealed to its node (``crypto_box_seal``; only that node's jail opens it)."""

    signature: Signature
    sealed_initiator: bytes
    sealed_responder: bytes


SignItem = tuple[str, bytes] | tuple[str, bytes, Sequence[bytes]] | GrantToSeal
"""An item of :meth:`JailClient.sign_many`: (kind, data), a checkpoint with its proof, or a
grant whose tokens the jail mints and seals."""


def _sign_item(item: SignItem) -> dict[str, Any]:
    if isinstance(item, GrantToSeal):
        return {"kind": "grant", "data": b64e(item.canonical),
                "seal_to": [b64e(item.initiator_box.raw), b64e(item.responder_box.raw)]}
    wire: dict[str, Any] = {"kind": item[0], "data": b64e(item[1])}
    if len(item) == 3:
        wire["consistency_proof"] = [b64e(h) for h in item[2]]
    return wire


def _sign_many_results(
    result: dict[str, Any], items: Sequence[SignItem]
) -> list[Signature | SealedGrant | JailRefused]:
    results = result.get("results")
    if not isinstance(results, list) or len(results) != len(items):
        raise JailProtocolError("jail answered sign_many with the wrong number of results")
    out: list[Signature | SealedGrant | JailRefused] = []
    for item, answer in zip(items, results, strict=True):
        if not isinstance(answer, dict):
            raise JailProtocolError("jail answered sign_many with a malformed result")
        sealing = isinstance(item, GrantToSeal)
        if set(answer) == ({"signature", "sealed_tokens"} if sealing else {"signature"}):
            signature = Signature(_need(answer, "signature", SIGNATURE_LEN))
            out.append(_sealed_grant(signature, answer["sealed_tokens"]) if sealing
                       else signature)
        elif (set(answer) == {"error", "detail"} and isinstance(answer["error"], str)
              and isinstance(answer["detail"], str)):
            out.append(refusal(answer["error"], answer["detail"]))
        else:
            raise JailProtocolError("jail answered sign_many with a malformed result")
    return out


def _sealed_grant(signature: Signature, sealed: object) -> SealedGrant:
    if not isinstance(sealed, list) or len(sealed) != 2:
        raise JailProtocolError("jail answered a grant without its two sealed tokens")
    initiator, responder = (_decode(text, "sealed_tokens", SEALED_TOKEN_LEN) for text in sealed)
    return SealedGrant(signature, initiator, responder)


ALONE_ABOVE = MAX_BODY // (2 * MAX_SIGN_MANY)
"""Largest ``data`` a :class:`SignCoalescer` batches (32 KiB, above any structure the jail signs):
a full batch of items this large, base64url-encoded, still fits one frame."""


class SignCoalescer:
    """:meth:`JailClient.sign` for concurrent callers, sent together in ``sign_many`` calls.

    The first :meth:`sign` of a batch starts a task that sends, one turn of the event loop
    later, the items asked for by then (no timer: at most one turn of waiting), at most
    ``max_batch`` per call (a full batch starts the next one): the grant signature and the
    two push signatures of a grant, and those of grants proceeding together (they share a
    checkpoint, so they reach their pushes in the same turn), cost one jail round trip
    instead of one each. Each caller gets its own signature or its own refusal (the exception
    :meth:`JailClient.sign` raises for that item); a failure of the whole call (the jail
    unreachable, a malformed answer) is raised to every caller of that batch. A caller
    cancelled while waiting leaves the batch to the others.

    An item no batch may carry for the others — ``data`` that is not ``bytes``, a ``kind``
    that is not a string, or ``data`` above :data:`ALONE_ABOVE` bytes (the jail signs
    nothing that large; a full batch of such items would not fit one frame) — is sent alone
    through :meth:`JailClient.sign`, so whatever that refusal is, it is its caller's only.
    :meth:`sign_checkpoint` does the same for a checkpoint whose proof the jail would refuse
    as malformed (more than ``MAX_PROOF`` hashes, one not 32 bytes) or that is too large with
    it; it goes alone through :meth:`JailClient.sign_checkpoint`.
    """

    def __init__(self, client: JailClient, *, max_batch: int = MAX_SIGN_MANY) -> None:
        if not 1 <= max_batch <= MAX_SIGN_MANY:
            raise ValueError(f"max_batch must be 1-{MAX_SIGN_MANY}")
        self._client = client
        self._max = max_batch
        self._open: list[tuple[SignItem, asyncio.Future[Signature | SealedGrant]]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def sign(self, kind: str, data: bytes) -> Signature:
        if type(data) is not bytes or type(kind) is not str or len(data) > ALONE_ABOVE:
            return await self._client.sign(kind, data)
        return _signature(await self._join((kind, data)))

    async def sign_grant(self, grant: GrantToSeal) -> SealedGrant:
        """:meth:`JailClient.sign_grant` in the batch; alone when no batch may carry it."""
        if type(grant.canonical) is not bytes or len(grant.canonical) > ALONE_ABOVE:
            return await self._client.sign_grant(grant)
        result = await self._join(grant)
        if not isinstance(result, SealedGrant):
            raise JailProtocolError("jail answered a grant without its sealed tokens")
        return result

    async def sign_checkpoint(self, body: bytes, consistency_proof: Sequence[bytes]) -> Signature:
        """:meth:`JailClient.sign_checkpoint` with a proof, in the batch (item kind
        ``checkpoint`` with its ``consistency_proof``); alone when no batch may carry it."""
        proof = list(consistency_proof)
        if (type(body) is not bytes or len(proof) > MAX_PROOF
                or len(body) + 32 * len(proof) > ALONE_ABOVE
                or any(type(h) is not bytes or len(h) != 32 for h in proof)):
            return await self._client.sign_checkpoint(body, proof)
        return _signature(await self._join(("checkpoint", body, proof)))

    async def _join(self, item: SignItem) -> Signature | SealedGrant:
        future: asyncio.Future[Signature | SealedGrant] = (
            asyncio.get_running_loop().create_future())
        batch = self._open
        if batch is None or len(batch) >= self._max:
            batch = self._open = []
            task = asyncio.ensure_future(self._send(batch))  # its first step runs next turn
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)
        batch.append((item, future))
        return await future

    async def _send(
        self, batch: list[tuple[SignItem, asyncio.Future[Signature | SealedGrant]]]
    ) -> None:
        if self._open is batch:
            self._open = None  # what is asked from now on goes to the next batch
        try:
            results = await self._client.sign_many([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, JailRefused):
                future.set_exception(result)
            else:
                future.set_result(result)


def _signature(result: Signature | SealedGrant) -> Signature:
    if isinstance(result, SealedGrant):  # pragma: no cover - only a GrantToSeal gets one
        raise JailProtocolError("jail answered a signature with sealed tokens")
    return result


def _batches(hashes: Sequence[bytes]) -> list[Sequence[bytes]]:
    for h in hashes:
        if len(h) != 32:
            raise ValueError("an entry hash is 32 bytes")
    return [hashes[start : start + MAX_BATCH] for start in range(0, len(hashes), MAX_BATCH)]


def _batch_args(chunk: Sequence[bytes]) -> dict[str, Any]:
    return {"kind": "entry_hash", "data": b64e(b"".join(chunk))}


def _signatures(result: dict[str, Any], count: int) -> list[Signature]:
    raw = _need(result, "signatures", SIGNATURE_LEN * count)
    return [Signature(raw[i : i + SIGNATURE_LEN]) for i in range(0, len(raw), SIGNATURE_LEN)]


class JailSigner:
    """The store's :class:`~openred.store.signer.Signer`, signing through the jail."""

    def __init__(self, client: JailClient, sign_key: SignKey) -> None:
        self._client = client
        self._sign_key = sign_key

    @classmethod
    async def create(cls, client: JailClient) -> JailSigner:
        """A signer whose ``sign_key`` is the jail's (asked once, at startup)."""
        keys = await client.public_keys()
        return cls(client, keys.sign_key)

    @property
    def sign_key(self) -> SignKey:
        return self._sign_key

    @property
    def client(self) -> JailClient:
        """The jail client this signer signs through."""
        return self._client

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        if not hashes:
            return []
        return await self._client.sign_batch(hashes)

    def sign_entry_hashes_sync(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        """Sign from the store's write thread, in the hand-off that chains and commits.

        A jail that cannot be reached right now raises
        :class:`~openred.store.signer.SignInThreadUnavailable`: the store then signs through
        the async :meth:`sign_entry_hashes`, which restarts or waits for the jail as usual.
        Refusals, malformed answers and a jail that took the request but did not answer in
        time raise what the async call raises (JailRefused, JailProtocolError,
        JailUnavailable).
        """
        if not hashes:
            return []
        try:
            return self._client.sign_batch_blocking(hashes)
        except _NoAnswerInTime:
            raise
        except JailUnavailable as exc:
            raise SignInThreadUnavailable(str(exc)) from exc

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return await self._client.sign_checkpoint(note_body)

    async def witnessed_checkpoint(self, origin: str) -> bytes | None:
        """The newest checkpoint body the jail signed for ``origin`` (None: none, or the jail
        keeps no witness)."""
        return (await self._client.witnessed(origin))[1]

    async def sign_checkpoint_extending(
        self, note_body: bytes, consistency_proof: Sequence[bytes]
    ) -> Signature:
        return await self._client.sign_checkpoint(note_body, list(consistency_proof))
