"""The periodic offer expiry (issue 9): ``FileOfferExpired`` for every offer past its time.

An offer's expiry used to be logged only when someone noticed it (a chunk request, a fetch, a
listing). The served node's :class:`~openred.node.lifecycle.Housekeeper` now runs
:func:`expire_offers` every lifecycle interval, for offers sent and received alike, so the log
and ``openred files`` say ``expired`` at the offer's time whether or not anybody asked.

Each expiry is appended at the offer stream's version read just before, so an expiry noticed
at the same moment by a request is not logged twice by the task (the loser's conflict is
skipped).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from openred.errors import ConcurrencyConflict
from openred.modules.file_sharing import events as ev
from openred.modules.file_sharing.readmodels import FileOfferRow
from openred.modules.file_sharing.service import FileSharing
from openred.store.events import NewEvent

__all__ = ["TASK_NAME", "expire_offers", "register_expiry"]

TASK_NAME = "file_sharing.expire_offers"


async def expire_offers(service: FileSharing, now: int) -> int:
    """Log ``FileOfferExpired`` for every offer still ``offered`` at ``now`` past its expiry."""
    query = (select(FileOfferRow.offer_id)
             .where(FileOfferRow.state == "offered")
             .where(FileOfferRow.expires_at <= now))
    async with service.reads.session() as s:
        due = list((await s.exec(query)).all())
    expired = 0
    for offer_id in due:
        stream = ev.offer_stream(offer_id)
        version = await service.store.stream_version(stream)
        service._end(offer_id)  # never served from the in-memory cache again
        try:
            await service.store.append_one(NewEvent(
                stream, ev.FILE_OFFER_EXPIRED, {"offer_id": offer_id},
                expected_version=version))
        except ConcurrencyConflict:
            continue  # revoked, declined or found expired meanwhile
        expired += 1
    return expired


def register_expiry(app: Any, service: FileSharing) -> None:
    """Add :func:`expire_offers` to the served node's lifecycle tasks (if it has them)."""
    from openred.node.lifecycle import LIFECYCLE_TASKS

    tasks = app.extensions.get(LIFECYCLE_TASKS)
    if tasks is not None:
        async def task(now: int) -> int:
            return await expire_offers(service, now)

        tasks.add(TASK_NAME, task)
