"""The jail's Unix-socket server: one asyncio task per client, one answer per request frame.

A misbehaving client only ever hurts itself: a frame that is not JSON gets an error answer and
the connection stays; a bad length prefix, EOF inside a frame or a frame that dribbles in
slower than ``frame_timeout`` gets an error (when possible) and that connection is closed;
an exception inside an operation becomes an ``internal`` error answer, never a crash. Peers
whose uid (SO_PEERCRED) is not allowed are closed before a byte is read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from crypto_jail.errors import INTERNAL, FrameError, JailFailure, OpRefused
from crypto_jail.ops import JailState, dispatch
from crypto_jail.protocol import (
    HEADER,
    MAX_BODY,
    decode_json,
    encode_error,
    encode_ok,
    parse_request,
    read_frame,
    request_id_of,
)

__all__ = ["JailServer", "SocketError", "log", "peer_uid", "prepare_socket", "unlink_socket"]

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (socket(7))
_INLINE_BATCH_CHARS = 64 * 43  # a sign_batch larger than ~64 hashes runs off the event loop


class SocketError(JailFailure):
    """The socket path or its directory is unsafe or in use (the message is printable)."""


def log(message: str) -> None:
    """One line on stderr (never secrets: callers pass fixed texts and public values)."""
    print(f"crypto_jail: {message}", file=sys.stderr, flush=True)


def _check_private_dir(directory: Path) -> None:
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise SocketError(f"{directory} is not a directory")
    if info.st_uid != os.getuid():
        raise SocketError(f"{directory} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        raise SocketError(
            f"{directory} has mode {stat.S_IMODE(info.st_mode):04o}; "
            "the socket directory must not be accessible to group or others (chmod 700)"
        )


def _remove_stale(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink()  # nobody listens: a stale socket from a jail that died
        return
    finally:
        probe.close()
    raise SocketError(f"{path} is in use by a running jail")


def prepare_socket(path: Path) -> socket.socket:
    """Bind and listen on ``path`` (0600) inside a private directory (0700, created if missing)."""
    path = Path(path)
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    _check_private_dir(directory)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window with a wider mode
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    path.chmod(0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


class JailServer:
    """Serves :func:`crypto_jail.ops.dispatch` over a listening Unix socket."""

    def __init__(
        self,
        state: JailState,
        *,
        allowed_uids: frozenset[int] | None = None,
        max_connections: int = 128,
        frame_timeout: float = 10.0,
        op_executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.state = state
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({os.getuid()})
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        self._executor = op_executor
        self._writers: set[asyncio.StreamWriter] = set()

    async def answer(self, body: bytes) -> bytes:
        """The answer frame for one request body (never raises for any input)."""
        try:
            obj = decode_json(body)
        except FrameError as exc:
            return encode_error(None, exc.code, exc.detail)
        request_id = request_id_of(obj)
        try:
            request = parse_request(obj)
            if self._executor is not None and _heavy(request.op, request.args):
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._executor, dispatch, self.state, request.op, request.args
                )
            else:
                result = dispatch(self.state, request.op, request.args)
            return encode_ok(request.id, result)
        except OpRefused as exc:
            return encode_error(request_id, exc.code, exc.detail)
        except FrameError as exc:  # an answer that would not fit in a frame
            return encode_error(request_id, exc.code, exc.detail)
        except Exception as exc:  # never crash on input; the type name reveals nothing secret
            log(f"internal error in a request: {type(exc).__name__}")
            return encode_error(request_id, INTERNAL, "internal error")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until it closes or misbehaves fatally."""
        sock = writer.get_extra_info("socket")
        try:
            uid = peer_uid(sock)
        except OSError:
            uid = -1
        if uid not in self.allowed_uids:
            log(f"refused a connection from uid {uid}")
            writer.close()
            return
        if len(self._writers) >= self.max_connections:
            log("refused a connection: too many clients")
            writer.close()
            return
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the peer went away or stopped reading: only its own connection ends
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                body = await read_frame(reader, body_timeout=self.frame_timeout)
            except asyncio.IncompleteReadError:
                return  # clean EOF between frames
            except FrameError as exc:  # unrecoverable framing: say why (best effort), then close
                writer.write(encode_error(None, exc.code, exc.detail))
                with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        await writer.drain()
                return
            writer.write(await self.answer(body))
            async with asyncio.timeout(self.frame_timeout):
                await writer.drain()

    async def run(self, sock: socket.socket, *, on_ready: Callable[[], None]) -> None:
        """Serve on ``sock`` until SIGTERM or SIGINT; call ``on_ready`` once listening."""
        server = await asyncio.start_unix_server(
            self.handle, sock=sock, limit=MAX_BODY + HEADER.size
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        on_ready()
        try:
            await stop.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await server.wait_closed()


def _heavy(op: str, args: object) -> bool:
    if op != "sign_batch" or not isinstance(args, dict):
        return False
    data = args.get("data")
    return isinstance(data, str) and len(data) > _INLINE_BATCH_CHARS


def unlink_socket(path: Path, sock: socket.socket) -> None:
    """Close the listening socket and remove its file on shutdown."""
    with contextlib.suppress(OSError):
        sock.close()
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            Path(path).unlink()
