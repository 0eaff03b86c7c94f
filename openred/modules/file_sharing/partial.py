"""The receiver's partial file during one fetch: its descriptors, direct I/O and reused buffers.

Chunks are written and the whole digest is read back with ``O_DIRECT`` where the file system
allows it and the chunk size is a multiple of :data:`ALIGN`: the bytes go from one reused,
page-aligned buffer straight to the device and the digest reads them back from the device, so
a fetch does not fill the page cache with the file it is receiving (on this kind of machine,
copying into freshly allocated page-cache memory cost more CPU than the AEAD and both hashes
together), and what the digest checks is what the device holds. Anything else — a file system
that refuses ``O_DIRECT`` (at ``open`` or at the first transfer, ``EINVAL``), an unaligned
chunk size, the short last chunk — goes through the page cache as before, on a second,
ordinary descriptor of the same file (the kernel keeps the two coherent: a direct read writes
dirty cached pages of its range first, a direct write drops the cached pages it replaces).

The buffers are reused for the whole fetch (one per chunk being written, one for the digest's
reads), so steady-state chunks cost no fresh memory. The object is used from worker threads;
it is closed only after every thread using it is done (:class:`~.service._Threads`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Final

__all__ = ["ALIGN", "READ_SPAN", "PartialFile"]

logger = logging.getLogger("openred.file_sharing")

ALIGN: Final = 4096
"""Offsets, lengths and buffers of direct transfers are multiples of this (a page)."""
READ_SPAN: Final = 4 * 1024 * 1024
"""The digest reads back up to this many bytes at once (at least one chunk), into each of two
buffers: the next span is read while the last is hashed."""
O_DIRECT: Final[int] = getattr(os, "O_DIRECT", 0)

Write = Callable[[int, memoryview, int], int]
"""``os.pwrite``-like: write bytes at an offset of a file descriptor (a port for tests)."""


def _aligned(size: int) -> mmap.mmap:
    """A page-aligned buffer of ``size`` bytes (anonymous memory, at least one page)."""
    return mmap.mmap(-1, max(ALIGN, -(-size // ALIGN) * ALIGN))


class PartialFile:
    """One fetch's partial file: ``fd`` (page cache) and, where it works, a direct descriptor."""

    def __init__(self, path: Path, *, size: int, chunk_size: int, direct: bool = True) -> None:
        self.size = size
        self.chunk_size = chunk_size
        # Never through a link planted at the path (ELOOP): the file is the node's own.
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self.direct_fd: int | None = None
        if direct and O_DIRECT and chunk_size % ALIGN == 0 and size >= ALIGN:
            try:
                # The same open file again, not whatever the path names by now.
                self.direct_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | O_DIRECT)
            except OSError as exc:  # EINVAL: no direct I/O here; ENOENT: no /proc
                logger.debug("no direct I/O for %s: %s", path, exc)
        self.use_direct = self.direct_fd is not None
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []
        self._all: list[mmap.mmap] = []
        self._reads: list[mmap.mmap | bytearray] = []
        self._pool: ThreadPoolExecutor | None = None

    # -- buffers --

    def _take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
            buffer = _aligned(self.chunk_size)
            self._all.append(buffer)
            return buffer

    def _give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buffer)

    def _direct_failed(self, exc: OSError) -> None:
        if self.use_direct:
            logger.debug("direct I/O refused (%s): the fetch goes on through the page cache",
                         exc)
        self.use_direct = False

    # -- writing --

    @staticmethod
    def _write_all(write: Write, fd: int, data: memoryview, offset: int) -> None:
        written = 0
        while written < len(data):
            written += write(fd, data[written:], offset + written)

    def write(self, write: Write, data: memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` (whole), directly if it is aligned, else cached.

        ``write`` is the fetch's ``pwrite`` port; OSErrors other than a refused direct
        transfer (``EINVAL``) are raised (a full disk among them).
        """
        if self.use_direct and offset % ALIGN == 0 and len(data) % ALIGN == 0:
            assert self.direct_fd is not None
            buffer = self._take()
            try:
                with memoryview(buffer) as whole, whole[:len(data)] as view:
                    view[:] = data
                    try:
                        self._write_all(write, self.direct_fd, view, offset)
                        return
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        self._direct_failed(exc)
            finally:
                self._give(buffer)
        self._write_all(write, self.fd, data, offset)

    # -- reading back --

    def _read_buffers(self) -> list[mmap.mmap | bytearray]:
        if not self._reads:
            span = max(self.chunk_size, READ_SPAN // self.chunk_size * self.chunk_size)
            span = min(span, max(self.size, 1))
            self._reads = [_aligned(span) if self.use_direct else bytearray(span)
                           for _ in range(2)]
        return self._reads

    def hash_back(self, whole: Any, offset: int, length: int) -> int:
        """Feed ``length`` bytes of the file from ``offset``, read back, to ``whole``.

        Reads span by span into two buffers, the next span read by a helper thread while this
        one hashes the last (both release the GIL). Returns how many bytes were there (fewer
        only if the file was cut short meanwhile).
        """
        buffers = self._read_buffers()
        views = [memoryview(buffer) for buffer in buffers]
        pending: Future[int] | None = None
        done = 0
        try:
            want = min(len(views[0]), length)
            pending = self._reader().submit(self._read_into, views[0], buffers[0], want, offset)
            turn = 0
            while pending is not None:
                got = pending.result()
                pending = None
                after = done + got
                if got == want and after < length:  # start reading the next span now
                    following = min(len(views[1 - turn]), length - after)
                    pending = self._reader().submit(self._read_into, views[1 - turn],
                                                    buffers[1 - turn], following,
                                                    offset + after)
                with views[turn][:got] as piece:
                    whole.update(piece)
                done = after
                if pending is not None:
                    turn, want = 1 - turn, following
        finally:
            if pending is not None:  # an error on this side: the read in flight ends first
                wait([pending])
            for view in views:
                view.release()
        return done

    def _reader(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="openred-readback")
            return self._pool

    def _read_into(self, buffer: memoryview, owner: mmap.mmap | bytearray, want: int,
                   offset: int) -> int:
        if self.use_direct and offset % ALIGN == 0 and isinstance(owner, mmap.mmap):
            assert self.direct_fd is not None
            with buffer[:-(-want // ALIGN) * ALIGN] as view:
                try:
                    got = self._read_all(self.direct_fd, view, offset)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._direct_failed(exc)
                else:
                    return min(got, want)
        with buffer[:want] as view:
            return self._read_all(self.fd, view, offset)

    @staticmethod
    def _read_all(fd: int, view: memoryview, offset: int) -> int:
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        return got

    # -- the end --

    def close(self) -> None:
        """Close both descriptors and drop the buffers (no thread may be using them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
        os.close(self.fd)
        for buffer in (*self._all, *self._reads):
            if isinstance(buffer, mmap.mmap):
                with contextlib.suppress(BufferError):  # a view still held: the GC frees it
                    buffer.close()
        self._all.clear()
        self._free.clear()
        self._reads = []
