"""The jail's Unix-socket server: one thread per client, one answer per request frame, in order.

Threads with blocking sockets rather than an event loop: measured here, a round trip through
epoll costs ~40 µs more than a blocking ``recv`` wakeup, and every jail call pays it.

A misbehaving client only ever hurts itself: a frame that is not JSON gets an error answer and
the connection stays; a bad length prefix, EOF inside a frame, or a frame that dribbles in
slower than ``frame_timeout`` gets an error (when possible) and that connection is closed; a
client silent for ``idle_timeout`` between frames, or that does not read its answer within
``frame_timeout``, is cut off, and when all ``max_connections`` slots are taken a newcomer
takes the slot of the client that has waited on its peer longest — idle between frames,
stalled inside a frame, or not reading its answer — (at least :data:`EVICT_AFTER_IDLE`
seconds), so idle clients, clients dribbling frames and clients that do not read cannot lock
others out; an exception inside an operation becomes an
``internal`` error answer, never a crash. Peers whose uid (SO_PEERCRED) is not allowed are
closed before a byte is read.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from crypto_jail.errors import (
    FRAME_TOO_LARGE,
    INTERNAL,
    MALFORMED_FRAME,
    FrameError,
    JailFailure,
    OpRefused,
)
from crypto_jail.ops import JailState, dispatch
from crypto_jail.protocol import (
    HEADER,
    MAX_BODY,
    decode_json,
    encode_error,
    encode_ok,
    parse_request,
    request_id_of,
)

__all__ = ["JailServer", "SocketError", "log", "peer_uid", "prepare_socket", "unlink_socket"]

EVICT_AFTER_IDLE = 1.0
"""A client idle between frames, inside a frame that has not arrived whole, or not reading its
answer, this long may lose its slot to a newcomer when all are taken (a whole frame arrives,
and an answer is read, in milliseconds)."""

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (socket(7))


class SocketError(JailFailure):
    """The socket path or its directory is unsafe or in use (the message is printable)."""


def log(message: str) -> None:
    """One line on stderr (never secrets: callers pass fixed texts and public values).

    A closed stderr (the supervisor died) must never break serving or shutting down.
    """
    with contextlib.suppress(OSError, ValueError):
        print(f"crypto_jail: {message}", file=sys.stderr, flush=True)


def _group_id(group: str) -> int:
    import grp  # only here: most jails never resolve a group name

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketError(f"no such group {group!r}") from None


def _check_private_dir(directory: Path, gid: int | None = None) -> None:
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise SocketError(f"{directory} is not a directory")
    if info.st_uid != os.getuid():
        raise SocketError(f"{directory} belongs to uid {info.st_uid}, not to this user")
    if gid is not None:  # shared with one group (systemd RuntimeDirectory + Group=): no others
        if info.st_gid != gid or info.st_mode & 0o027:
            raise SocketError(
                f"{directory} must belong to the socket group and have mode 0710 or 0750 "
                f"(it has group {info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o})"
            )
        return
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
    probe.settimeout(2.0)  # a listener that never accepts (its backlog full) must not hold us
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink()  # nobody listens: a stale socket from a jail that died
        return
    except (BlockingIOError, TimeoutError):
        raise SocketError(f"{path} is in use by a process that does not accept connections "
                          "(not a jail that answers): stop it") from None
    finally:
        probe.close()
    raise SocketError(f"{path} is in use by a running jail")


def prepare_socket(path: Path, *, group: str | None = None) -> socket.socket:
    """Bind and listen on ``path`` (0600) inside a private directory (0700, created if missing).

    With ``group`` the directory may be shared with that group only (0710 or 0750) and the
    socket is 0660 with that group, for a node running as another user of the group.
    """
    path = Path(path)
    directory = path.parent
    gid = None if group is None else _group_id(group)
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    _check_private_dir(directory, gid)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window with a wider mode
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise SocketError(f"cannot bind {path}: {exc.strerror or exc}") from exc
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, -1, gid)
        path.chmod(0o660)
    else:
        path.chmod(0o600)
    sock.listen(128)
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
        idle_timeout: float = 60.0,
    ) -> None:
        self.state = state
        self.allowed_uids = allowed_uids if allowed_uids is not None else frozenset({os.getuid()})
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        # Each client → since when it waits on its peer (monotonic): between frames, for the
        # rest of a frame, or to read its answer; None while its request is being answered.
        self._clients: dict[socket.socket, float | None] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._stop = threading.Event()
        self._stop_once = threading.Lock()
        self._stop_write: int | None = None
        self._on_stop: Callable[[], None] | None = None

    def answer(self, body: bytes) -> bytes:
        """The answer frame for one request body (never raises for any input)."""
        try:
            obj = decode_json(body)
        except FrameError as exc:
            return encode_error(None, exc.code, exc.detail)
        request_id = request_id_of(obj)
        try:
            request = parse_request(obj)
            return encode_ok(request.id, dispatch(self.state, request.op, request.args))
        except (OpRefused, FrameError) as exc:  # FrameError: an answer too large for a frame
            return encode_error(request_id, exc.code, exc.detail)
        except Exception as exc:  # never crash on input; the type name reveals nothing secret
            log(f"internal error in a request: {type(exc).__name__}")
            return encode_error(request_id, INTERNAL, "internal error")

    # -- one connection --

    def serve_connection(self, conn: socket.socket) -> None:
        """Serve one accepted client until it closes or misbehaves fatally."""
        try:
            _Connection(self, conn).serve()
        except OSError:
            pass  # the peer went away or stopped reading: only its own connection ends
        finally:
            with self._lock:
                self._clients.pop(conn, None)
            with contextlib.suppress(OSError):
                conn.close()

    def set_idle(self, conn: socket.socket, since: float | None) -> None:
        """Record that ``conn`` waits on its peer since ``since`` (None: it is being answered)."""
        with self._lock:
            if conn in self._clients:  # an evicted client stays out
                self._clients[conn] = since

    def _admit(self, conn: socket.socket) -> bool:
        try:
            uid = peer_uid(conn)
        except OSError:
            uid = -1
        if uid not in self.allowed_uids:
            log(f"refused a connection from uid {uid}")
            return False
        with self._lock:
            if self._stopping:
                return False
            if len(self._clients) >= self.max_connections and not self._evict_idlest():
                log("refused a connection: too many clients")
                return False
            self._clients[conn] = None
        return True

    def _evict_idlest(self) -> bool:
        """Hang up on the client that has waited on its peer longest (idle, stalled inside a
        frame, or not reading its answer), if any has for EVICT_AFTER_IDLE (lock held)."""
        idle = [(since, c) for c, since in self._clients.items() if since is not None]
        if not idle:
            return False
        since, victim = min(idle, key=lambda item: item[0])
        if time.monotonic() - since < EVICT_AFTER_IDLE:
            return False
        del self._clients[victim]
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)  # its thread sees EOF between frames and ends
        log("all client slots taken: hung up on the client idle longest "
            "(between frames or inside one)")
        return True

    # -- the listening loop --

    def run(self, sock: socket.socket, *, on_ready: Callable[[], None],
            restore_signals: bool = True, on_stop: Callable[[], None] | None = None) -> None:
        """Accept and serve clients until SIGTERM or SIGINT; call ``on_ready`` once listening.

        A signal is noticed twice: by its Python handler, which runs only on the main thread
        (this loop), and by a thread of its own reading the pipe the C-level handler writes to
        (``signal.set_wakeup_fd``), which hears it even while the loop is stuck in a blocking
        call (a log line written to a full stderr pipe nobody reads). Either asks the loop to
        stop (:meth:`stop`); ``on_stop`` runs once, on the first request, on whichever thread
        made it: ``crypto_jail serve`` bounds there how long the process may still take.

        With ``restore_signals=False`` the handler that only asks the loop to stop stays
        installed when this returns: a process that still has to clean up (remove its socket)
        must not be killed by a second SIGTERM — a supervised jail gets one from
        ``PR_SET_PDEATHSIG`` and one from its stdin watcher when its supervisor dies.
        """
        signal_read, signal_write = os.pipe()
        stop_read, stop_write = os.pipe()
        os.set_blocking(signal_write, False)
        os.set_blocking(stop_write, False)
        self._on_stop = on_stop
        self._stop_write = stop_write

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.stop()

        previous = [signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)]
        old_wakeup = signal.set_wakeup_fd(signal_write)  # a signal in any thread writes there
        watcher = threading.Thread(target=self._watch_signals, args=(signal_read,), daemon=True,
                                   name="jail-signals")
        watcher.start()
        sock.setblocking(False)
        try:
            on_ready()
            while not self._stop.is_set():
                readable, _, _ = select.select([sock.fileno(), stop_read], [], [])
                if stop_read in readable:
                    os.read(stop_read, 512)
                    continue
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                conn.setblocking(True)
                if not self._admit(conn):
                    conn.close()
                    continue
                threading.Thread(target=self.serve_connection, args=(conn,), daemon=True,
                                 name="jail-client").start()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            if restore_signals:
                for signum, handler in zip((signal.SIGTERM, signal.SIGINT), previous,
                                           strict=True):
                    signal.signal(signum, handler)
            os.close(signal_write)  # the watcher reads EOF and ends
            watcher.join()
            self._stop_write = None  # a later stop() (a handler on this thread) writes nowhere
            for fd in (signal_read, stop_read, stop_write):
                os.close(fd)
            self.close_clients()

    def stop(self) -> None:
        """Ask the serving loop to stop (any thread, or a signal handler); the first request
        runs ``on_stop``. Takes no lock: a handler may run while its own thread holds one."""
        self._stop.set()
        fd = self._stop_write
        if fd is not None:
            with contextlib.suppress(OSError):  # full: the loop is woken already
                os.write(fd, b"\0")
        if self._on_stop is not None and self._stop_once.acquire(blocking=False):
            self._on_stop()

    def _watch_signals(self, fd: int) -> None:
        """Read the signal numbers the C-level handler writes; stop on SIGTERM or SIGINT."""
        stopping = {signal.SIGTERM.value, signal.SIGINT.value}
        while True:
            try:
                numbers = os.read(fd, 512)
            except OSError:
                return
            if not numbers:
                return
            if stopping.intersection(numbers):
                self.stop()

    def close_clients(self) -> None:
        """Stop accepting and hang up on every client (their threads then end)."""
        with self._lock:
            self._stopping = True
            clients = list(self._clients)
        for conn in clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Connection:
    """One client: frames in, answers out, strictly in order, on the calling thread.

    The socket stays in blocking mode and deadlines are kernel timeouts (SO_RCVTIMEO and
    SO_SNDTIMEO), so the common case — a whole request in one segment — costs one ``recv``
    and one ``send``. Waiting for a new frame may take ``idle_timeout`` (then the client is
    cut off, between frames, without an answer); once a frame has started it must complete
    within ``frame_timeout``; an answer the client does not read within ``frame_timeout``
    drops it.
    """

    _CHUNK = 64 * 1024

    def __init__(self, server: JailServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.buffer = bytearray()
        # recv_into one reused buffer: recv(n) would allocate (mmap) and trim n bytes per call.
        self.scratch = bytearray(self._CHUNK)
        self.scratch_view = memoryview(self.scratch)
        self.deadline = 0.0
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(server.frame_timeout))

    def serve(self) -> None:
        while True:
            try:
                body = self._next_frame()
            except FrameError as exc:  # unrecoverable framing: say why (best effort), then close
                with contextlib.suppress(OSError):
                    self.conn.sendall(encode_error(None, exc.code, exc.detail))
                return
            if body is None:
                return  # clean EOF between frames
            answer = self.server.answer(body)
            # Waiting on the peer to read: as evictable as an idle client (an answer larger
            # than the socket's buffer, never read, would hold the slot for frame_timeout).
            self.server.set_idle(self.conn, time.monotonic())
            self.conn.sendall(answer)

    def _frame_in_buffer(self) -> bytes | None:
        if len(self.buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self.buffer)
        if length > MAX_BODY:
            raise FrameError(FRAME_TOO_LARGE, f"length {length} exceeds {MAX_BODY} bytes",
                             fatal=True)
        end = HEADER.size + length
        if len(self.buffer) < end:
            return None
        body = bytes(self.buffer[HEADER.size : end])
        del self.buffer[:end]
        return body

    def _next_frame(self) -> bytes | None:
        body = self._frame_in_buffer()
        if body is not None:  # sent right behind the last one: being answered, not waiting
            self.server.set_idle(self.conn, None)
            return body
        if not self.buffer:  # between frames: wait at most idle_timeout
            self._set_read_deadline(self.server.idle_timeout)
            self.server.set_idle(self.conn, time.monotonic())
            try:
                if not self._recv():
                    return None
            except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO expired: idle, cut off
                return None
        if (body := self._frame_in_buffer()) is not None:  # the usual case: whole at once
            self.server.set_idle(self.conn, None)
            return body
        started = time.monotonic()
        deadline = started + self.server.frame_timeout
        # Waiting on the peer for the rest: as evictable as an idle client (a dribbled frame
        # would otherwise hold its slot for frame_timeout at no cost to the sender).
        self.server.set_idle(self.conn, started)
        while (body := self._frame_in_buffer()) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameError(MALFORMED_FRAME, "frame did not arrive in time", fatal=True)
            self._set_read_deadline(remaining)
            try:
                received = self._recv()
            except (BlockingIOError, TimeoutError) as exc:  # SO_RCVTIMEO expired
                raise FrameError(MALFORMED_FRAME, "frame did not arrive in time",
                                 fatal=True) from exc
            if not received:
                raise FrameError(MALFORMED_FRAME, "connection closed inside a frame", fatal=True)
        self.server.set_idle(self.conn, None)
        return body

    def _recv(self) -> bool:
        count = self.conn.recv_into(self.scratch)
        self.buffer += self.scratch_view[:count]
        return count > 0

    def _set_read_deadline(self, seconds: float) -> None:
        if seconds == self.deadline:  # the common case: the idle deadline is already set
            return
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        self.deadline = seconds


def _timeval(seconds: float) -> bytes:
    """A struct timeval for SO_RCVTIMEO / SO_SNDTIMEO (0 = no timeout), at least 1 µs if set."""
    micros = max(1, int(seconds * 1_000_000)) if seconds > 0 else 0
    return struct.pack("@ll", micros // 1_000_000, micros % 1_000_000)


def unlink_socket(path: Path, sock: socket.socket) -> None:
    """Close the listening socket and remove its file on shutdown."""
    with contextlib.suppress(OSError):
        sock.close()
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            Path(path).unlink()
