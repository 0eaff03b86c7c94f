"""A served node's lifecycle duties (DESIGN §10): its record, registration, heartbeat, housekeeping.

The node's signed record is kept in ``DATA_DIR/node-record.json``
(:class:`~openred.node.own_record.OwnRecord`). When the node starts, its current record is
what the record says (URL, keys, modules) if the node is still that, else a new record with the
next ``version`` (so the directory accepts it as newer). :meth:`Registrar.run` registers that
record — retrying while the directory is unreachable (one ERROR when an outage starts, a
WARNING for each new kind of failure in it, one INFO when the directory answers again), while the
node keeps serving its peers — then heartbeats at the interval the directory asks for,
registering again when the directory answers a heartbeat with 404 (it forgot the node or
expired it). A registration whose record
version is new is logged as ``NodeRegistered``.

:class:`Housekeeper` runs beside it: every lifecycle interval the periodic tasks modules add to
:class:`LifecycleTasks` (``app.extensions[LIFECYCLE_TASKS]``; file_sharing's offer expiry is
one), and about once an hour the projection sweep (:mod:`openred.node.cleaning`): rows that
ended longer than ``OPENRED_PROJECTION_RETENTION`` ago are removed by one logged
``ProjectionsCleaned`` event, so the projections stay exactly what replaying the log gives;
then the session ledger forgets the cleaned sessions and the cleaned offers' working files are
removed (:meth:`Housekeeper.release`).

The other lifecycle work (renewal at 80 % of a session's life, send-key rotation, token and
session expiry) is :meth:`~openred.node.services.NodeServices.lifecycle`, run by the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlmodel import col, select

from openred.crypto.records import SignedNodeRecord
from openred.crypto.session import FileSessionLedger
from openred.errors import OpenRedError, PeerUnreachable, TransportError
from openred.node import events as ev
from openred.node.cleaning import CLEANABLE, cleaned_events
from openred.node.own_record import RECORD_FILE
from openred.node.readmodels import GrantOutcomeRow, SessionRow
from openred.node.services import SESSION_LEDGER, NodeServices, clipped, inert
from openred.store.events import NewEvent
from openred.store.sqlite import utc_timestamp

__all__ = [
    "CLEAN_EVERY", "LIFECYCLE_TASKS", "RECORD_FILE", "Housekeeper", "LifecycleTasks", "Registrar",
]

logger = logging.getLogger("openred.node.lifecycle")

REGISTER_PATH = "/api/v3/nodes/register"
HEARTBEAT_PATH = "/api/v3/nodes/heartbeat"
MAX_HEARTBEAT_INTERVAL = 3600.0
"""Longest heartbeat interval the node takes from its directory (seconds). The directory's
answer is not signed: a larger one (a compromised directory, or anyone on its path) would
keep the node silent for as long, after the directory is honest again; clamped to this, the
node beats at least every half hour and a restored directory sees it again by then."""


@dataclass
class RegistrationState:
    """What the operator sees in ``openred status``."""

    registered: bool = False
    version: int = 0
    last_heartbeat: int | None = None
    last_error: str | None = None
    directory_reachable: bool | None = None


class Registrar:
    """Keeps the node's signed record current and registered with its directory."""

    def __init__(self, services: NodeServices, *, retry_interval: float = 5.0,
                 heartbeat_interval: float = 60.0) -> None:
        self.services = services
        self.retry_interval = retry_interval
        self.heartbeat_interval = heartbeat_interval
        self.state = RegistrationState()
        self._down_since: float | None = None
        """Loop time of the first failure of the current outage (None: the directory answers)."""
        self._failure_kinds: set[str] = set()
        """The kinds of failure logged in the current outage (a handful: see :meth:`_failed`)."""

    @property
    def record(self) -> SignedNodeRecord | None:
        """The node's current record (None until :meth:`current_record` ran)."""
        return self.services.own_record.signed

    async def current_record(self) -> SignedNodeRecord:
        """The node's signed record, re-signed with the next version when anything changed."""
        return await self.services.current_record()

    async def register(self) -> bool:
        """Register the current record; whether the directory accepted it (failures logged)."""
        svc = self.services
        signed = self.record or await self.current_record()
        url = svc.settings.directory_url
        try:
            reply = await svc.http.request("POST", url + REGISTER_PATH,
                                           json_body=signed.to_wire(), signed=True, attempts=1)
        except (PeerUnreachable, OpenRedError) as exc:
            self._failed(f"directory unreachable at {url}: {exc}", reachable=False,
                         kind="unreachable")
            return False
        if reply.status not in (200, 201):
            self._failed(f"directory at {url} refused the registration: "
                         f"{reply.status} {_detail(reply.body)}", reachable=True,
                         kind=f"registration {reply.status // 100}xx")
            return False
        self.state.registered = True
        self.state.version = signed.record.version
        self.state.directory_reachable = True
        self.state.last_error = None
        _, logged = svc.own_record.stored()
        if logged != signed.record.version:
            await svc.store.append_one(NewEvent(ev.node_stream(str(svc.keys.node_id)),
                                                ev.NODE_REGISTERED, {
                "directory": url, "node_id": str(svc.keys.node_id),
                "api_url": signed.record.api_url,
            }))
            svc.own_record.save(signed, signed.record.version)
        down = self._recovered()
        if down is None:
            logger.info("registered with the directory at %s (record version %d)", url,
                        signed.record.version)
        else:
            logger.info("the directory at %s is reachable again after %.0f s: registered "
                        "(record version %d)", url, down, signed.record.version)
        return True

    async def heartbeat(self) -> bool | None:
        """One heartbeat: True if the directory saw it, None if it forgot us, False if down."""
        svc = self.services
        url = svc.settings.directory_url
        try:
            reply = await svc.http.request("POST", url + HEARTBEAT_PATH, json_body={},
                                           signed=True, attempts=1)
        except (PeerUnreachable, OpenRedError) as exc:
            self._failed(f"directory unreachable at {url}: {exc}", reachable=False,
                         kind="unreachable")
            return False
        if reply.status == 404:
            self.state.registered = False
            logger.warning("the directory at %s does not know this node: registering again",
                           url)
            return None
        if reply.status != 200:
            self._failed(f"directory at {url} refused the heartbeat: {reply.status} "
                         f"{_detail(reply.body)}", reachable=True,
                         kind=f"heartbeat {reply.status // 100}xx")
            return False
        try:
            body: Any = reply.json()
        except TransportError:
            self._failed(f"directory at {url} answered the heartbeat with something that is "
                         "not JSON", reachable=True, kind="heartbeat not JSON")
            return False
        interval = body.get("heartbeat_interval") if isinstance(body, dict) else None
        if type(interval) is int and interval > 0:  # no bool; an int too large for a float
            self.heartbeat_interval = float(min(interval, MAX_HEARTBEAT_INTERVAL))
        self.state.last_heartbeat = svc.now()
        self.state.directory_reachable = True
        self.state.last_error = None
        down = self._recovered()
        if down is not None:
            logger.info("the directory at %s is reachable again after %.0f s: heartbeat "
                        "accepted", url, down)
        return True

    def _failed(self, message: str, *, reachable: bool, kind: str) -> None:
        """Note a failed round; log it once per outage (ERROR), and when its kind changes.

        An outage was a WARNING (an operator alerting on ERROR did not see it) and the
        directory's return was not logged at all; and the whole message was compared, so
        every change of the exception's text within one outage (a refused connection, a
        timeout, a reset as the directory restarts) was logged again. Now: ERROR on the
        first failure, WARNING only when the kind of failure changes (unreachable, or which
        status it answered), INFO once when a round succeeds again (:meth:`_recovered`).

        A kind is logged once per outage, and a status counts by its class (``5xx``): a
        directory answering 500, 503, 502 in turn (compromised, or a flapping proxy in front
        of a restarting one), or refusing connections and answering 503 in turn, was a new
        kind at every round, so a WARNING per round again.
        """
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            logger.error("%s; still serving peers, retrying", message)
        elif kind not in self._failure_kinds:
            logger.warning("%s; still serving peers, retrying", message)
        self._failure_kinds.add(kind)
        self.state.last_error = message
        self.state.directory_reachable = reachable

    def _recovered(self) -> float | None:
        """After a successful round: seconds the directory was failing (None: it was not)."""
        if self._down_since is None:
            return None
        down = asyncio.get_running_loop().time() - self._down_since
        self._down_since = None
        self._failure_kinds.clear()
        return down

    @property
    def retry_pause(self) -> float:
        """Seconds before the next try after a failure: ``retry_interval``, or half the
        heartbeat interval the directory asked for when that is shorter. The directory counts
        a node's silence from its own restart: a node retrying slower than the directory's
        ``OPENRED_STALE_AFTER`` (twice the interval by default) was marked stale, and expired,
        for the directory's own downtime."""
        return min(self.retry_interval, self.heartbeat_interval / 2)

    async def run(self) -> None:
        """Register (until it works), then heartbeat forever; cancel to stop.

        Nothing that goes wrong in one round ends the loop (a jail or store error, an answer
        no check foresaw): it is logged and the round is tried again after
        ``retry_interval``. The task ended on the first such exception, and the node then
        never heartbeated again until it was restarted.
        """
        current = False
        while True:
            try:
                if not current:
                    await self.current_record()
                    current = True
                await self._round()
            except Exception as exc:  # never CancelledError (a BaseException): cancel stops it
                message = f"registration or heartbeat failed: {type(exc).__name__}"
                if self.state.last_error != message:  # once, with its traceback, per failure
                    logger.exception("%s; still serving peers, retrying", message)
                self.state.last_error = message
                await asyncio.sleep(self.retry_interval)

    async def _round(self) -> None:
        if not self.state.registered and not await self.register():
            await asyncio.sleep(self.retry_pause)
            return
        # The first heartbeat right after registering tells the directory's interval; then
        # one every half interval, so a single lost heartbeat never makes the node stale.
        beat = await self.heartbeat()
        if beat is None:
            return
        await asyncio.sleep(self.retry_pause if beat is False
                            else self.heartbeat_interval / 2)


LIFECYCLE_TASKS = "openred.lifecycle_tasks"
"""Key of the served node's :class:`LifecycleTasks` in ``app.extensions`` (absent when the app
is not run by ``openred node serve``: then nothing runs the tasks)."""

CLEAN_EVERY = 3600.0
"""Seconds between projection sweeps (the first one comes one lifecycle interval after start)."""

LifecycleTask = Callable[[int], Awaitable[int]]
"""A periodic task: called with the node's clock (Unix seconds); how many things it did."""


class LifecycleTasks:
    """Periodic tasks modules add (``add(name, task)`` from their ``register_routes``)."""

    def __init__(self) -> None:
        self._tasks: dict[str, LifecycleTask] = {}

    def add(self, name: str, task: LifecycleTask) -> None:
        if name in self._tasks:
            raise ValueError(f"lifecycle task {name!r} is added twice")
        self._tasks[name] = task

    def __iter__(self) -> Iterator[tuple[str, LifecycleTask]]:
        return iter(list(self._tasks.items()))

    @property
    def names(self) -> list[str]:
        return list(self._tasks)


class Housekeeper:
    """The served node's periodic housekeeping: module tasks and the projection sweep."""

    def __init__(self, services: NodeServices, tasks: LifecycleTasks | None = None, *,
                 clean_every: float = CLEAN_EVERY) -> None:
        self.services = services
        self.tasks = tasks or LifecycleTasks()
        self.clean_every = clean_every
        self._last_clean: float | None = None
        self._released_all = False
        """Whether everything earlier sweeps cleaned was released (see :meth:`release`)."""

    async def due_rows(self, before: int) -> dict[str, list[str]]:
        """Keys of the rows that ended before ``before`` (Unix seconds), per cleanable table."""
        from openred.modules.file_sharing.readmodels import FileOfferRow, FileTransferRow

        before_iso = utc_timestamp(datetime.fromtimestamp(before, UTC))
        due: dict[str, list[str]] = {table: [] for table in CLEANABLE}
        async with self.services.reads.session() as s:
            due["sessions"] = list((await s.exec(
                select(SessionRow.session_id)
                .where(col(SessionRow.state).in_(("expired", "closed")))
                .where(SessionRow.expires_at < before))).all())
            due["grant_outcomes"] = list((await s.exec(
                select(GrantOutcomeRow.grant_id)
                .where(GrantOutcomeRow.recorded_at < before_iso))).all())
            offers = list((await s.exec(
                select(FileOfferRow.offer_id)
                .where(col(FileOfferRow.state).in_(("revoked", "declined", "expired")))
                .where(FileOfferRow.expires_at < before))).all())
            due["file_offers"] = offers
            if offers:
                due["file_transfers"] = list((await s.exec(
                    select(FileTransferRow.offer_id)
                    .where(col(FileTransferRow.offer_id).in_(offers)))).all())
        return due

    async def clean(self, now: int | None = None) -> int:
        """One projection sweep: log ``ProjectionsCleaned`` for what is due; rows removed."""
        svc = self.services
        retention = svc.settings.projection_retention
        if retention is None:
            return 0
        now = svc.now() if now is None else now
        before = now - retention
        due = await self.due_rows(before)
        count = sum(len(keys) for keys in due.values())
        if count:
            await svc.store.append(cleaned_events(
                ev.node_stream(str(svc.keys.node_id)), due, before=before, retention=retention))
            logger.info("cleaned %d projection rows that ended before %s", count,
                        datetime.fromtimestamp(before, UTC).isoformat())
        await self.release(due.get("sessions", ()), due.get("file_offers", ()))
        return count

    async def release(self, sessions: Iterable[str], offers: Iterable[str]) -> None:
        """What the node keeps outside its log for sessions and offers whose rows are cleaned.

        Called once their ``ProjectionsCleaned`` is in the log (never by a replay): the
        session ledger forgets the sessions' send epochs (safe: a cleaned session ended —
        expired or renewed — before the cut-off, so no path can restore or use it again, see
        docs/decisions.md) and the offers' working files go from ``DATA_DIR/files``
        (:mod:`openred.modules.file_sharing.cleanup`; placed files are never touched). The
        first sweep of a process also releases everything earlier sweeps cleaned, as its log
        names it: a node stopped between the event and the release, or cleaned before this
        existed, catches up. A failure is logged and retried at the next sweep the same way.
        """
        from openred.modules.file_sharing.cleanup import FILES_DIR, remove_offer_files

        sessions, offers = set(sessions), set(offers)
        if not self._released_all:
            for event in await self.services.store.read_stream(
                    ev.node_stream(str(self.services.keys.node_id))):
                if event.type == ev.PROJECTIONS_CLEANED:
                    rows = event.payload["rows"]
                    sessions.update(rows.get("sessions", ()))
                    offers.update(rows.get("file_offers", ()))
        data_dir = self.services.settings.data_dir

        def release() -> tuple[int, int]:
            forgotten = (FileSessionLedger(data_dir / SESSION_LEDGER).forget(sessions)
                         if sessions else 0)
            return forgotten, len(remove_offer_files(data_dir / FILES_DIR, offers))

        try:
            forgotten, removed = await asyncio.to_thread(release)
        except (OSError, OpenRedError):
            logger.exception("releasing the ledger marks and files of cleaned rows failed")
            self._released_all = False
            return
        self._released_all = True
        if forgotten or removed:
            logger.info("forgot %d cleaned sessions in the session ledger, removed %d files "
                        "of cleaned offers", forgotten, removed)

    async def run_once(self, now: int | None = None) -> dict[str, int]:
        """Every module task, and the sweep when one is due; what each did (failures logged)."""
        now = self.services.now() if now is None else now
        done: dict[str, int] = {}
        for name, task in self.tasks:
            try:
                done[name] = await task(now)
            except Exception:  # one failing task never stops the others or the next run
                logger.exception("lifecycle task %s failed", name)
        loop = asyncio.get_running_loop()
        if self._last_clean is None or loop.time() - self._last_clean >= self.clean_every:
            try:
                done["clean"] = await self.clean(now)
                self._last_clean = loop.time()
            except Exception:
                logger.exception("cleaning the projections failed")
        return done

    async def run(self) -> None:
        """Run the housekeeping every lifecycle interval until cancelled."""
        while True:
            await asyncio.sleep(self.services.settings.lifecycle_interval)
            await self.run_once()


_DETAIL: Final = 300
"""Characters of the directory's answer kept in the log line and the status."""


def _detail(body: bytes) -> str:
    """What the directory's answer says, for the log and ``openred status``: its problem's
    detail, else its first bytes; control characters made inert and cut at 300 characters
    (a detail of 100 000 characters with a line break went into every line as it came)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("detail"), str):
        text = str(obj["detail"])
    else:
        text = body[:_DETAIL].decode("utf-8", "replace")
    return clipped(inert(text), _DETAIL)
