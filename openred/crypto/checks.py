"""Ed25519 signature checks off the event loop: a worker process verifies them in batches.

A loaded directory is bound by its one Python thread (the GIL), and two Ed25519 verifications
(the request's RFC 9421 signature and the node record's) were 0.12 ms of every registration's
~1 ms there. :class:`ProcessChecker` hands them to a worker process on another core
(``python -I -m openred.crypto.check_worker``), in batches: every check asked for while a batch
is out goes in the next one, so the loop pays one write and one read per batch, not per
signature (the same shape as the store's group commit).

The answer is the worker's, computed with the code the loop would run
(:meth:`~openred.crypto.identity.SignKey.verify`); the parent trusts it no further than its
framing: exactly one byte, ``0`` or ``1``, per check asked, in order. Anything else — the worker
gone, a short or odd answer, no answer within :data:`ANSWER_TIMEOUT` — stops the worker and the
checks of that batch (and every later one until :attr:`ProcessChecker.restart_after` has passed)
are verified inline, so a check always gets the true answer, only slower. A message over
:data:`MAX_MESSAGE` or a signature that is not 64 bytes never leaves the process. The worker
is reached over a socket pair, which no other process can open (a pipe can be reopened through
``/proc/<pid>/fd`` by any process of the same uid, one that may not ptrace either end
included).

:class:`InlineChecker` verifies on the spot (nodes, tests, ``OPENRED_SIGNATURE_WORKER=0``).
Both are :class:`SignatureChecker`\\ s: callers await ``check(key, signature, message)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Final, Protocol

from openred.crypto.client import exit_or_signal, wait_or_kill
from openred.crypto.identity import SignKey
from openred.errors import InvalidSignature

__all__ = [
    "ANSWER_TIMEOUT",
    "MAX_BATCH",
    "MAX_MESSAGE",
    "InlineChecker",
    "ProcessChecker",
    "SignatureChecker",
    "check_inline",
]

logger = logging.getLogger("openred.crypto.checks")

MAX_BATCH: Final = 1024
"""Checks in one batch at most (the worker refuses more)."""
MAX_MESSAGE: Final = 64 * 1024
"""The longest message sent to the worker; a longer one is verified inline."""
ANSWER_TIMEOUT: Final = 5.0
"""Seconds a batch may take in the worker before it counts as hung (about 100 µs a check)."""
SIGNATURE_LEN: Final = 64

_COUNT = struct.Struct(">I")
_ITEM = struct.Struct(">32s64sI")
WORKER_MODULE: Final = "openred.crypto.check_worker"


class SignatureChecker(Protocol):
    """Whether an Ed25519 ``signature`` over ``message`` verifies under ``key``."""

    async def check(self, key: SignKey, signature: bytes, message: bytes) -> bool: ...

    async def close(self) -> None:
        """Release what it holds (its worker); later checks are inline. Harmless twice."""


def check_inline(key: SignKey, signature: bytes, message: bytes) -> bool:
    """The check itself, on the calling thread (what the worker runs, too)."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


class InlineChecker:
    """Verifies on the spot, on the event loop's thread."""

    async def check(self, key: SignKey, signature: bytes, message: bytes) -> bool:
        return check_inline(key, signature, message)

    async def close(self) -> None:
        return None


async def _stop(proc: asyncio.subprocess.Process, kill: Callable[[], None]) -> None:
    """Kill a failed worker — unless it exits on its own at once (gone already, or at the EOF
    of its closed channel): killing an exiting child races asyncio's child watcher
    (:func:`~openred.crypto.client.exit_or_signal`, which kills it also when the wait is
    cancelled). Its channel is closed: it answers no one."""
    if await exit_or_signal(proc, kill):
        await proc.wait()


def _stop_later(proc: asyncio.subprocess.Process) -> asyncio.Task[None]:
    """:func:`_stop` in a task of its own; the worker is killed too when that task is cancelled
    before it even ran (the loop ending at once: ``asyncio.run`` cancels what is left), which
    runs none of :func:`_stop`. A hung worker reads nothing, so it never sees the EOF of its
    channel, and it runs in a session of its own: it would outlive the service."""
    sent = False

    def kill() -> None:  # once: a second kill would poll a dead child (the watcher's race)
        nonlocal sent
        if not sent:
            sent = True
            proc.kill()

    def cancelled(task: asyncio.Task[None]) -> None:
        if task.cancelled() and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                kill()

    task = asyncio.get_running_loop().create_task(_stop(proc, kill))
    task.add_done_callback(cancelled)
    return task


class _Pending:
    __slots__ = ("future", "key", "message", "signature")

    def __init__(self, key: SignKey, signature: bytes, message: bytes,
                 future: asyncio.Future[bool]) -> None:
        self.key, self.signature, self.message, self.future = key, signature, message, future


class ProcessChecker:
    """Batches of checks verified by one worker process (see the module).

    :meth:`start` once on the running loop, :meth:`close` at the end (it stops the worker).
    Checks asked before :meth:`start` or after :meth:`close` are verified inline.
    """

    def __init__(self, *, python: str | None = None, restart_after: float = 30.0,
                 answer_timeout: float = ANSWER_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.python = python or sys.executable
        self.restart_after = restart_after
        """Seconds a failed worker is not replaced (its checks are inline meanwhile)."""
        self._answer_timeout = answer_timeout
        self._clock = clock
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None  # the worker's answers
        self._writer: asyncio.StreamWriter | None = None  # its batches
        self._pending: list[_Pending] = []
        self._drainer: asyncio.Task[None] | None = None
        self._failed_at: float | None = None
        self._reaping: set[asyncio.Task[None]] = set()  # failed workers, killed, being reaped
        self._started = False
        self._closed = False
        self.batches = 0
        """Batches the worker answered (for tests and metrics)."""

    @property
    def pid(self) -> int | None:
        """The worker's process id, while one runs."""
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        """Start the worker; if it cannot start, checks are inline (and a warning logged)."""
        self._started = True
        await self._spawn()

    async def _spawn(self) -> None:
        # Only what Python needs: no passphrase or other secret of the parent's environment.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        # A socket pair, not pipes: a pipe of a process can be reopened, writable, through
        # /proc/<pid>/fd by any process of the same uid — even one Yama forbids to ptrace it —
        # which could then write "valid" answers the directory would take for the worker's.
        # A socket cannot be opened from /proc.
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:  # no descriptor left, say: checked inline meanwhile
            self._fail(f"cannot start {WORKER_MODULE}: {exc}")
            return
        try:
            # The worker's stdin and stdout, open for its lifetime: if this process dies it
            # reads EOF and exits. A session of its own: a terminal's Ctrl-C (SIGINT to the
            # foreground process group) stops this service gracefully, and must not kill the
            # worker under the requests it still answers; close() stops it.
            proc = await asyncio.create_subprocess_exec(
                self.python, "-I", "-m", WORKER_MODULE,
                stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=asyncio.subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            self._fail(f"cannot start {WORKER_MODULE} with {self.python}: {exc}")
            return
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException as exc:
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if not isinstance(exc, OSError):
                raise
            self._fail(f"cannot reach {WORKER_MODULE}: {exc}")
            return
        if self._closed:  # close() came while it started: nothing would ever stop it
            writer.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return
        self._proc, self._reader, self._writer = proc, reader, writer

    async def check(self, key: SignKey, signature: bytes, message: bytes) -> bool:
        if (self._proc is None and not self._may_respawn()) or len(signature) != SIGNATURE_LEN \
                or len(message) > MAX_MESSAGE:
            return check_inline(key, signature, message)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(key, bytes(signature), bytes(message), future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _may_respawn(self) -> bool:
        return (self._started and not self._closed and self._failed_at is not None
                and self._clock() - self._failed_at >= self.restart_after)

    async def _drain(self) -> None:
        """Send what is pending as one batch, settle it, repeat until nothing is pending."""
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    results = await self._ask(batch)
                except Exception as exc:  # a check must never be left waiting
                    self._fail(f"the signature check worker failed ({type(exc).__name__}: {exc})")
                    results = [check_inline(i.key, i.signature, i.message) for i in batch]
                except asyncio.CancelledError:
                    # Closing: whoever still waits gets the true answer, computed here.
                    for item in batch + self._pending:
                        if not item.future.done():
                            item.future.set_result(
                                check_inline(item.key, item.signature, item.message))
                    self._pending.clear()
                    raise
                for item, ok in zip(batch, results, strict=True):
                    if not item.future.done():
                        item.future.set_result(ok)
        finally:
            self._drainer = None

    async def _ask(self, batch: list[_Pending]) -> list[bool]:
        """The worker's answers for ``batch``, or the inline ones if it cannot give them."""
        if self._proc is None and self._may_respawn():
            await self._spawn()
        reader, writer = self._reader, self._writer
        if self._proc is not None and reader is not None and writer is not None \
                and not self._closed:
            frame = [_COUNT.pack(len(batch))]
            for item in batch:
                frame += [_ITEM.pack(item.key.raw, item.signature, len(item.message)),
                          item.message]
            try:
                writer.write(b"".join(frame))
                # asyncio.timeout, not wait_for: no task of its own per batch.
                async with asyncio.timeout(self._answer_timeout):
                    answer = await reader.readexactly(len(batch))
            except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self._fail(f"the signature check worker failed ({type(exc).__name__}: {exc})")
            else:
                if len(answer) == len(batch) and not answer.translate(None, b"\x00\x01"):
                    self.batches += 1
                    return [byte == 1 for byte in answer]
                self._fail("the signature check worker answered something other than 0 or 1")
        return [check_inline(i.key, i.signature, i.message) for i in batch]

    def _fail(self, reason: str) -> None:
        """Stop the worker; its checks are inline until ``restart_after`` has passed."""
        logger.warning("%s: signatures are verified inline for %g s", reason, self.restart_after)
        self._failed_at = self._clock()
        proc, self._proc = self._proc, None
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
        if proc is not None:
            reaping = _stop_later(proc)
            self._reaping.add(reaping)
            reaping.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        """Stop the worker (its stdin closed, then killed if it lingers); later checks inline."""
        self._closed = True
        drainer, proc, self._proc = self._drainer, self._proc, None
        writer, self._reader, self._writer = self._writer, None, None
        if drainer is not None:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drainer
        for reaping in list(self._reaping):
            with contextlib.suppress(Exception):
                await reaping
        self._reaping.clear()
        # A drainer cancelled before it ran settled nothing: whoever waits gets the true answer.
        pending, self._pending = self._pending, []
        for item in pending:
            if not item.future.done():
                item.future.set_result(check_inline(item.key, item.signature, item.message))
        if writer is not None:
            writer.close()  # the worker reads EOF and exits
        if proc is None:
            return
        await wait_or_kill(proc, 2.0)
