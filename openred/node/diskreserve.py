"""Room the node keeps on its log's file system for its own events.

When SQLite meets a full disk every append fails: a peer's messages, and the node's own
handshakes, session events and expiries alike. So nothing a peer's call causes is logged while
the free space is below a reserve (507 ``disk-full``, before the append); the node's own events
may still use the reserve. The free space is read through a port (``free``: the bytes an
unprivileged process may still write, ``statvfs``'s ``f_bavail × f_frsize``), so tests read a
full disk without filling one.

A ``statvfs`` costs 1.5-3 µs here (measured in-process), against ~1.2 ms of CPU per message;
the reading is still kept for :data:`READ_EVERY` seconds, so the message path pays a clock
read. What can be appended meanwhile is far below the reserve: at 800 messages a second of
the largest text (64 KiB, ~200 KiB in the log and the inbox), 0.1 s is ~16 MiB of 64 MiB.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from openred.errors import NodeRefused

__all__ = ["DISK_RESERVE", "READ_EVERY", "DiskReserve", "free_bytes"]

logger = logging.getLogger("openred.node")

DISK_RESERVE: Final = 64 * 1024 * 1024
"""Free space kept for the node's own events (and left by a fetch, file sharing)."""
READ_EVERY: Final = 0.1
"""Seconds a free-space reading is used before it is read again."""

FreeSpace = Callable[[], int]
"""Bytes free for the node on its log's file system."""


def free_bytes(path: Path) -> FreeSpace:
    """The free space of the file system holding ``path``, as an unprivileged writer sees it."""

    def read() -> int:
        found = os.statvfs(path)
        return found.f_bavail * found.f_frsize

    return read


class DiskReserve:
    """Refuses peer-caused appends while less than ``reserve`` bytes are free (:meth:`check`)."""

    def __init__(self, free: FreeSpace, reserve: int = DISK_RESERVE, *,
                 clock: Callable[[], float] = time.monotonic, every: float = READ_EVERY,
                 ) -> None:
        self.free = free
        self.reserve = reserve
        self._clock = clock
        self._every = every
        self._short = False
        self._read_at: float | None = None

    def check(self) -> None:
        """NodeRefused 507 ``disk-full`` if the last reading (at most ``every`` old) is short.

        A reading that fails (the file system gone, say) lets the call through: the append
        then fails or not on its own, as it did before this guard.
        """
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._every:
            self._read_at = now
            try:
                self._short = self.free() < self.reserve
            except OSError:
                logger.warning("reading the free disk space failed", exc_info=True)
                self._short = False
        if self._short:
            raise NodeRefused(507, "disk-full", "this node is short of disk space for its log "
                              "and logs nothing a peer asks until space is freed: try later")
