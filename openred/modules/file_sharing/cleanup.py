"""Removing the files of ended offers from the node's files directory.

What each kind of file under ``<data_dir>/files/`` is for, and when it goes:

============================== ========== ==================================================
file                           side       removed
============================== ========== ==================================================
``partial/<offer>.part``       receiver   when the fetch completes (the file was linked into
``partial/<offer>.marks``                 place) or was declined, as before; otherwise once
                                          the offer is revoked, declined or expired, at the
                                          next lifecycle run after that (no fetch can
                                          complete it any more), unless a fetch of it is
                                          still running in this process
``trees/<offer>.leaves``       sender     once the offer is revoked, declined or expired, at
``trees/<offer>.tmp``                     the next lifecycle run (no chunk is served for it
                                          any more); while it stands it is kept, even after
                                          a completed fetch (the peer may fetch again)
any of the above               both       at the latest when the sweep cleans the offer's
                                          row (``ProjectionsCleaned``), whatever its state
``received/…``, ``--out``      receiver   never: a placed file is the user's
============================== ========== ==================================================

Removal is a side effect outside the log, so it never happens while projections are replayed
or rebuilt: :func:`remove_ended_files` runs as a lifecycle task of a served node (registered by
:func:`register_cleanup`), and :func:`remove_offer_files` is called by the projection sweep
(:class:`~openred.node.lifecycle.Housekeeper`) after its ``ProjectionsCleaned`` is in the log.

Safety: only entries of the node's own ``files/partial`` and ``files/trees`` directories are
removed, and only those named exactly ``<offer id><known suffix>`` where the offer id is one of
those given (22 base64url characters, never a path); the directories are opened without
following symbolic links and entries are unlinked relative to them, so a symbolic link named
like an offer's file is removed itself, never what it points to. A file already gone is no
error. A partial file hard-linked into place by a fetch that crashed before removing it only
loses that name: the placed file is another link to it and stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlmodel import col, select

from openred.modules.file_sharing.readmodels import FileOfferRow

if TYPE_CHECKING:
    from openred.modules.file_sharing.service import FileSharing

__all__ = [
    "ENDED_STATES",
    "FILES_DIR",
    "TASK_NAME",
    "offer_files",
    "register_cleanup",
    "remove_ended_files",
    "remove_offer_files",
]

logger = logging.getLogger("openred.file_sharing.cleanup")

FILES_DIR: Final = "files"
"""The node's files directory, in its data directory (``FileSharing.root``)."""
TASK_NAME: Final = "file_sharing.remove_ended_files"
ENDED_STATES: Final = ("revoked", "declined", "expired")
"""Offer states from which no transfer can ever complete (the offer gives nothing more)."""

_KINDS: Final = {
    "partial": (".part", ".marks"),
    "trees": (".leaves", ".tmp"),
}
"""Subdirectories of ``files/`` holding an offer's working files, with their suffixes."""
_OFFER_ID: Final = re.compile(r"[A-Za-z0-9_-]{22}")
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _open_dir(name: str, *, dir_fd: int | None = None) -> Iterator[int | None]:
    """A descriptor of the directory ``name`` (not followed if a link), or None if absent."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        yield None
        return
    except OSError as exc:  # ELOOP: a symbolic link where the directory should be
        logger.warning("not cleaning %s: %s", name, exc.strerror or exc)
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _offer_of(entry: str, suffixes: tuple[str, ...]) -> str | None:
    """The offer id an entry of a working directory belongs to, if it is one of ours."""
    for suffix in suffixes:
        if entry.endswith(suffix):
            stem = entry[: -len(suffix)]
            if _OFFER_ID.fullmatch(stem):
                return stem
    return None


def _working_files(files_dir: Path) -> Iterator[tuple[int, str, str, str]]:
    """``(directory fd, kind, entry, offer id)`` of every working file under ``files_dir``.

    The directories are opened without following links; each descriptor is valid until the
    generator moves on to the next kind.
    """
    with _open_dir(str(files_dir)) as root:
        if root is None:
            return
        for kind, suffixes in _KINDS.items():
            with _open_dir(kind, dir_fd=root) as fd:
                if fd is None:
                    continue
                for entry in os.listdir(fd):  # noqa: PTH208 (by descriptor: no link followed)
                    offer_id = _offer_of(entry, suffixes)
                    if offer_id is not None:
                        yield fd, kind, entry, offer_id


def offer_files(files_dir: Path) -> dict[str, list[str]]:
    """The working files present, by offer id (``partial/<id>.part`` etc., relative)."""
    found: dict[str, list[str]] = {}
    for _, kind, entry, offer_id in _working_files(files_dir):
        found.setdefault(offer_id, []).append(f"{kind}/{entry}")
    return found


def remove_offer_files(files_dir: Path, offer_ids: Iterable[str]) -> list[str]:
    """Remove every working file of ``offer_ids`` under ``files_dir``; what was removed.

    Ids that are not offer ids are ignored. Blocking (directory listings and unlinks): run it
    in a thread from async code.
    """
    wanted = {offer_id for offer_id in offer_ids if _OFFER_ID.fullmatch(offer_id)}
    removed: list[str] = []
    if not wanted:
        return removed
    for fd, kind, entry, offer_id in _working_files(files_dir):
        if offer_id not in wanted:
            continue
        try:
            os.unlink(entry, dir_fd=fd)
        except FileNotFoundError:
            continue  # removed meanwhile (a fetch completing, a decline)
        except OSError as exc:  # a directory named like a file, permissions
            logger.warning("could not remove %s/%s/%s: %s", files_dir, kind, entry,
                           exc.strerror or exc)
            continue
        removed.append(f"{kind}/{entry}")
    if removed:
        logger.info("removed %d working files of ended offers from %s", len(removed), files_dir)
    return removed


async def remove_ended_files(service: FileSharing, now: int) -> int:
    """Remove the working files of offers revoked, declined or expired; how many went.

    Only offers this node has a row for in one of :data:`ENDED_STATES` are touched (a file of an
    offer with no row may belong to a share being logged right now), and never one this
    process is fetching.
    """
    present = await asyncio.to_thread(offer_files, service.root)
    if not present:
        return 0
    query = (select(FileOfferRow.offer_id)
             .where(col(FileOfferRow.offer_id).in_(sorted(present)))
             .where(col(FileOfferRow.state).in_(ENDED_STATES)))
    async with service.reads.session() as s:
        ended = set((await s.exec(query)).all())
    ended -= service._fetching
    if not ended:
        return 0
    return len(await asyncio.to_thread(remove_offer_files, service.root, ended))


def register_cleanup(app: Any, service: FileSharing) -> None:
    """Add :func:`remove_ended_files` to the served node's lifecycle tasks (if it has them)."""
    from openred.node.lifecycle import LIFECYCLE_TASKS

    tasks = app.extensions.get(LIFECYCLE_TASKS)
    if tasks is not None:
        async def task(now: int) -> int:
            return await remove_ended_files(service, now)

        tasks.add(TASK_NAME, task)
