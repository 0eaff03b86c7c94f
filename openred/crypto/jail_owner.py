"""Which process started the jail on a socket, so a restarted service can tell its own orphan.

A service that starts its jail (:func:`openred.directory.keys.start_jail`) records beside the
socket, in ``<socket>.owner`` (0600), the jail's and its own process id and start time (Linux
``/proc/<pid>/stat`` field 22: a pid and its start time name one process, never a later one
that reused the pid). When a service starts and finds a jail on its socket,
:func:`orphaned_jail` says whether that jail is one a now-dead supervisor started — the
development/passphrase-file case, where the node itself starts its jail — and it is then
stopped (:func:`stop_orphan`) so the new service starts and supervises a fresh one. A jail the
record does not name (a service manager's, e.g. ``deploy/systemd/openred-jail@.service``) is
connected to as before.

The jail normally leaves on its own when its supervisor dies (``--exit-on-stdin-eof`` and
``PR_SET_PDEATHSIG``); this catches the window while it is still shutting down and any case
where it did not, so a restarted node never talks to a jail nobody supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from openred.files import write_private

__all__ = ["JailOwner", "orphaned_jail", "owner_path", "record_owner", "stop_orphan"]

logger = logging.getLogger("openred.crypto.jail")


@dataclass(frozen=True, slots=True)
class JailOwner:
    jail_pid: int
    jail_start: int
    supervisor_pid: int
    supervisor_start: int


def owner_path(socket_path: Path) -> Path:
    return socket_path.with_name(socket_path.name + ".owner")


def process_start(pid: int) -> int | None:
    """The start time of live process ``pid`` (clock ticks since boot); None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # after "comm": state is field 3 of stat
        return None
    try:
        return int(fields[19])  # field 22 of stat
    except ValueError:
        return None


def record_owner(socket_path: Path, jail_pid: int | None) -> None:
    """Note that this process started the jail ``jail_pid`` on ``socket_path`` (best effort)."""
    if jail_pid is None:
        return
    jail_start, own_start = process_start(jail_pid), process_start(os.getpid())
    if jail_start is None or own_start is None:
        return  # no /proc here: nothing can be checked later either
    path = owner_path(socket_path)
    try:
        write_private(path, json.dumps({"jail_pid": jail_pid, "jail_start": jail_start,
                                        "supervisor_pid": os.getpid(),
                                        "supervisor_start": own_start}))
    except OSError as exc:
        logger.warning("cannot record the jail's owner in %s: %s", path, exc)


def _read(socket_path: Path) -> JailOwner | None:
    """The record, or None when there is none or it is not one (damaged, nested too deep, or
    not a regular file: a FIFO planted there must not hold the service's start)."""
    try:
        fd = os.open(owner_path(socket_path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            raw = json.loads(handle.read(4096))
        return JailOwner(int(raw["jail_pid"]), int(raw["jail_start"]),
                         int(raw["supervisor_pid"]), int(raw["supervisor_start"]))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def orphaned_jail(socket_path: Path) -> int | None:
    """The pid of a jail on ``socket_path`` started by a supervisor that is gone, else None."""
    owner = _read(socket_path)
    if owner is None or process_start(owner.jail_pid) != owner.jail_start:
        return None  # no record, or that jail is gone: whatever serves the socket is not ours
    if process_start(owner.supervisor_pid) == owner.supervisor_start:
        return None  # its supervisor still runs (another service on this data directory)
    try:
        argv = Path(f"/proc/{owner.jail_pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"crypto_jail" not in argv or os.fsencode(socket_path) not in argv:
        return None
    return owner.jail_pid


async def stop_orphan(pid: int, socket_path: Path, *, timeout: float = 5.0) -> None:
    """Stop the orphaned jail ``pid`` (SIGTERM, SIGKILL after ``timeout``) and wait until gone.

    SIGTERM lets it close and remove its socket; we wait for it to be gone before a new jail
    binds the socket, so the old one can never remove the new one's socket file.
    """
    start = process_start(pid)
    if start is None:
        return
    logger.warning("the jail on %s (pid %d) outlived the process that started it: stopping it "
                   "and starting a supervised one", socket_path, pid)
    loop = asyncio.get_running_loop()
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        if process_start(pid) != start:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)  # a stopped jail acts on SIGTERM only once it runs
        deadline = loop.time() + wait
        while process_start(pid) == start and loop.time() < deadline:
            await asyncio.sleep(0.02)
    with contextlib.suppress(OSError):
        owner_path(socket_path).unlink()
