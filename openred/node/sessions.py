"""Sessions (DESIGN §6): lifecycle decisions, the validated-session cache, and persistence.

Decisions (pure):

* :func:`decide_use` — may a message use this session now? unknown 404, expired or closed 410;
* :func:`decide_tick` — ``SessionExpired`` once ``expires_at`` is reached;
* :func:`renewal_due` — at/after 80 % of the life (``renew_at``) and before expiry, an active
  session that no newer one renewed is due; the new grant's session then logs
  ``SessionRenewed`` for the old one (:func:`openred.node.handshake.decide_established`).

Persistence: a session's :class:`~openred.crypto.session.SessionCipher` state is stored only
wrapped by the jail (label ``session:<id>``), first in ``SessionEstablished`` and then in
``SessionStateSaved`` events. Restoring (:meth:`SessionKeeper.channel`):

1. unwrap the newest saved state; :meth:`SessionCipher.from_state` moves sending to a send
   epoch the :class:`NodeSessionLedger` reserved durably, never used before however often the
   state is restored, so no (key, nonce) is ever used twice;
2. mark in the replay window every counter the log shows was accepted after the save before
   that one (each event a P2P request caused carries ``counter``; see
   :func:`accepted_counters`), so no request is accepted twice (answers are accepted only for
   requests pending in memory);
3. save the restored state at once, which keeps the saved state current and step 2 short.

The state is saved again after every epoch rotation (and every ``save_every`` accepted
requests, which only shortens step 2). The :class:`SessionCache` (LRU + TTL) keeps restored
channels in memory so the message path touches neither the database nor the jail. Past its
TTL a channel is checked against its session's row again and kept, and one the LRU evicted is
taken back while anything in the process still holds it (never restored over: a request it
accepted whose events are still being appended is in no saved state nor logged counter, and
a fresh restore would accept it again); only a channel nothing holds any more is restored,
like one after a restart.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url, from_b64url
from openred.crypto.session import FileSessionLedger, SessionCipher, SessionLedger
from openred.errors import CryptoError, DecryptionFailed, NodeRefused, ReplayDetected
from openred.node import events as ev
from openred.node.book import NodeBook
from openred.node.envelope import SessionChannel
from openred.node.readmodels import SessionRow
from openred.node.tokens import Refusal
from openred.store.events import NewEvent, RecordedEvent
from openred.store.sqlite import SQLiteEventStore

__all__ = [
    "NodeSessionLedger",
    "SessionCache",
    "SessionKeeper",
    "decide_tick",
    "decide_use",
    "renewal_due",
    "wrap_label",
]

DEFAULT_CACHE_SIZE: Final = 4096
DEFAULT_CACHE_TTL: Final = 300.0
DEFAULT_SAVE_EVERY: Final = 1000
_STATE_EVENTS = frozenset({ev.SESSION_ESTABLISHED, ev.SESSION_STATE_SAVED})


@dataclass(frozen=True, slots=True)
class SessionView:
    """What the decisions need of a session row."""

    session_id: str
    state: str
    expires_at: int
    renew_at: int | None
    renewed_by: str | None

    @classmethod
    def of(cls, row: SessionRow) -> SessionView:
        return cls(row.session_id, row.state, row.expires_at, row.renew_at, row.renewed_by)


def decide_use(session: SessionView | None, now: int) -> Refusal | None:
    """None if a message may use the session at ``now``; otherwise the refusal."""
    if session is None:
        return Refusal(404, "unknown-session", "no session with this id")
    if session.state != "active" or now >= session.expires_at:
        return Refusal(410, "session-expired", f"the session is {session.state} or expired")
    return None


def decide_tick(session: SessionView, now: int) -> list[NewEvent]:
    """``SessionExpired`` for an active session whose life is over."""
    if session.state == "active" and now >= session.expires_at:
        return [NewEvent(ev.session_stream(session.session_id), ev.SESSION_EXPIRED,
                         {"session_id": session.session_id})]
    return []


def renewal_due(session: SessionView, now: int) -> bool:
    """Whether the node should get a new grant and renew this session now (80 % of life)."""
    return (
        session.state == "active"
        and session.renewed_by is None
        and session.renew_at is not None
        and session.renew_at <= now < session.expires_at
    )


def wrap_label(session_id: str) -> str:
    """The jail wrap label binding saved state to its session."""
    return f"session:{session_id}"


class NodeSessionLedger:
    """The node's :class:`~openred.crypto.session.SessionLedger`: durable send epochs only.

    Send epochs are reserved in a :class:`~openred.crypto.session.FileSessionLedger` (fsynced,
    locked across processes) before their first nonce, so no restore ever reuses a (key,
    nonce). Receive marks are not kept: the node prevents double acceptance itself — every
    request that changes anything leaves its counter in the log, which a restore re-marks
    exactly, and answers are accepted only for requests pending in memory. A receive floor would
    add nothing to that but refuse the peer's next messages and answers after every restart.
    """

    def __init__(self, path: Path) -> None:
        self._send = FileSessionLedger(path)

    def reserve_send_epoch(self, session_id: str, at_least: int) -> int:
        return self._send.reserve_send_epoch(session_id, at_least)

    def raise_recv_mark(self, session_id: str, mark: int) -> None:
        """Receive marks are not kept (see the class doc)."""

    def recv_mark(self, session_id: str) -> int:
        return -1


class SessionCache:
    """LRU + TTL cache of validated, restored session channels (monotonic clock)."""

    def __init__(
        self, *, max_size: int = DEFAULT_CACHE_SIZE, ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1 or ttl <= 0:
            raise ValueError("the cache needs a positive size and time to live")
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[SessionChannel, float, int]] = OrderedDict()

    def get(self, session_id: str, now: int) -> SessionChannel | None:
        """The cached channel, unless absent, past its TTL, or past the session's expiry.

        A channel past its TTL stays (for :meth:`revalidate`); past the session's expiry it
        goes.
        """
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        channel, deadline, expires_at = entry
        if now >= expires_at:
            del self._entries[session_id]
            return None
        if self._clock() >= deadline:
            return None
        self._entries.move_to_end(session_id)
        return channel

    def revalidate(self, session_id: str, now: int) -> SessionChannel | None:
        """The channel kept past its TTL, cached for another TTL (the caller checked its
        session again), or None. Never a copy: requests still under way on it mark their
        counters in this very window."""
        entry = self._entries.get(session_id)
        if entry is None or now >= entry[2]:
            return None
        self.put(entry[0], entry[2])
        return entry[0]

    def put(self, channel: SessionChannel, expires_at: int) -> None:
        self._entries[channel.session_id] = (channel, self._clock() + self.ttl, expires_at)
        self._entries.move_to_end(channel.session_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def drop(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def channels(self) -> list[SessionChannel]:
        """The channels cached now (none is touched or evicted)."""
        return [channel for channel, _, _ in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)


def accepted_counters(events: list[RecordedEvent]) -> tuple[str, list[int]]:
    """The newest saved state of a session stream and the counters to re-mark on restoring it.

    Those are the counters of every event after the *second* newest saved state, not only after
    the newest: a state is taken before the jail wraps it and logged after, so a request
    accepted meanwhile is in neither that state nor (its event logged before the state's)
    after it. Saves of a session are serialized (:meth:`SessionKeeper.save`), so each state is
    taken after the previous one was logged, and every request the newest state misses was
    logged after the previous state. Re-marking a counter the state holds changes nothing.
    """
    wrapped: str | None = None
    earlier: list[int] = []
    counters: list[int] = []
    for event in events:
        if event.type in _STATE_EVENTS:
            wrapped = event.payload["wrapped_state"]
            earlier, counters = counters, []
        elif isinstance(event.payload.get("counter"), int):
            counters.append(event.payload["counter"])
    if wrapped is None:
        raise CryptoError("the session stream holds no saved state")
    return wrapped, earlier + counters


class SessionKeeper:
    """Restores, caches and saves session channels (the imperative shell around the cipher)."""

    def __init__(
        self, store: SQLiteEventStore, jail: JailClient, book: NodeBook, ledger: SessionLedger,
        *, cache: SessionCache | None = None, save_every: int = DEFAULT_SAVE_EVERY,
    ) -> None:
        self.store = store
        self.jail = jail
        self.book = book
        self.ledger = ledger
        self.cache = cache or SessionCache()
        self.save_every = save_every
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self._save_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())
        self._live: weakref.WeakValueDictionary[str, SessionChannel] = (
            weakref.WeakValueDictionary())
        """Every channel something in this process still holds, cached or not (see channel)."""
        self._uses: dict[str, int] = {}
        self._saved_epoch: dict[str, int] = {}
        self._epoch_since: dict[str, int] = {}

    def new_cipher(self, suite: str, send_key: bytes, recv_key: bytes,
                   session_id: str) -> SessionCipher:
        """The cipher of a session just established, bound to the ledger from the start."""
        return SessionCipher(suite, send_key, recv_key, ledger=self.ledger,
                             session_id=session_id)

    def adopt(self, channel: SessionChannel, expires_at: int, now: int) -> None:
        """Cache a channel just established (its state was saved in SessionEstablished)."""
        self._saved_epoch[channel.session_id] = channel.cipher.send_epoch
        self._epoch_since[channel.session_id] = now
        self._live[channel.session_id] = channel
        self.cache.put(channel, expires_at)

    async def channel(self, session_id: str, now: int) -> SessionChannel:
        """The usable channel of ``session_id``, restored from the log if it is not cached."""
        cached = self.cache.get(session_id, now)
        if cached is not None:
            return cached
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        async with lock:
            cached = self.cache.get(session_id, now)
            if cached is not None:
                return cached
            row = await self.book.session(session_id)
            refusal = decide_use(None if row is None else SessionView.of(row), now)
            if refusal is not None:
                raise refusal.error()
            assert row is not None
            # A channel past the cache's TTL, or evicted while something still holds it (a
            # request under way), is taken back, not restored over: a request it accepted
            # whose events are not committed yet is in no saved state and no logged counter,
            # so a channel restored now would accept it again (then or later).
            kept = self.cache.revalidate(session_id, now) or self._live.get(session_id)
            if kept is not None:  # past the TTL, or evicted while a request still holds it
                self.cache.put(kept, row.expires_at)
                return kept
            channel = await self._restore(row)
            self._live[session_id] = channel
            await self.save(channel)
            self._epoch_since[session_id] = now
            self.cache.put(channel, row.expires_at)
        return channel

    async def _restore(self, row: SessionRow) -> SessionChannel:
        events = await self.store.read_stream(ev.session_stream(row.session_id))
        wrapped, counters = accepted_counters(events)
        try:
            state = await self.jail.unwrap(wrap_label(row.session_id), from_b64url(wrapped))
        except DecryptionFailed as exc:
            raise CryptoError(f"saved state of session {row.session_id} does not unwrap") from exc
        cipher = SessionCipher.from_state(state, ledger=self.ledger, session_id=row.session_id)
        window = cipher.window
        for counter in counters:
            if window.accepts(counter):
                window.mark(counter)
        return SessionChannel(row.session_id, row.role, row.peer, cipher)

    async def save(self, channel: SessionChannel) -> None:
        """Wrap the channel's state in the jail and log it (``SessionStateSaved``).

        One save of a session at a time: the state is taken after the previous save was logged
        (what :func:`accepted_counters` relies on).
        """
        sid = channel.session_id
        lock = self._save_locks.get(sid)
        if lock is None:
            lock = self._save_locks[sid] = asyncio.Lock()
        async with lock:
            self._uses[sid] = 0
            epoch = channel.cipher.send_epoch
            wrapped = await self.jail.wrap(wrap_label(sid), channel.cipher.to_state())
            await self.store.append_one(NewEvent(
                ev.session_stream(sid), ev.SESSION_STATE_SAVED,
                {"session_id": sid, "wrapped_state": b64url(wrapped)},
            ))
            self._saved_epoch[sid] = epoch

    def _saving(self, session_id: str) -> bool:
        lock = self._save_locks.get(session_id)
        return lock is not None and lock.locked()

    async def rotate(self, channel: SessionChannel) -> int:
        """Move sending to the next epoch and save at once (the cipher's contract)."""
        epoch = channel.cipher.rotate()
        await self.save(channel)
        return epoch

    async def rotate_due(self, now: int, interval: int) -> list[str]:
        """Rotate the send epoch of every cached channel in its epoch ``interval`` s or more.

        DESIGN §6: keys rotate every epoch. A message of the old epoch still in flight is then
        refused by the peer as a replay; the messaging sender resends it in the new epoch.
        """
        rotated: list[str] = []
        for channel in self.cache.channels():
            since = self._epoch_since.setdefault(channel.session_id, now)
            if now - since >= interval:
                await self.rotate(channel)
                self._epoch_since[channel.session_id] = now
                rotated.append(channel.session_id)
        return rotated

    async def after_use(self, channel: SessionChannel) -> None:
        """Save when the sender moved to a new epoch on its own, or every ``save_every`` uses.

        Not while a save of the session is under way: the requests finishing meanwhile would
        each start one more (up to one per request in flight), all saving the same state. The
        next use after that save checks again.
        """
        sid = channel.session_id
        uses = self._uses.get(sid, 0) + 1
        self._uses[sid] = uses
        if self._saving(sid):
            return
        if channel.cipher.send_epoch != self._saved_epoch.get(sid) or uses >= self.save_every:
            await self.save(channel)

    async def expire(self, now: int) -> list[str]:
        """Log ``SessionExpired`` for every active session past its life; their ids."""
        expired: list[str] = []
        for row in await self.book.sessions(state="active"):
            events = decide_tick(SessionView.of(row), now)
            if events:
                await self.store.append(events)
                self.forget(row.session_id)
                expired.append(row.session_id)
        return expired

    def due_for_renewal(self, rows: list[SessionRow], now: int) -> list[SessionRow]:
        """The sessions among ``rows`` whose renewal is due at ``now``."""
        return [row for row in rows if renewal_due(SessionView.of(row), now)]

    def forget(self, session_id: str) -> None:
        self.cache.drop(session_id)
        self._live.pop(session_id, None)
        self._uses.pop(session_id, None)
        self._saved_epoch.pop(session_id, None)
        self._epoch_since.pop(session_id, None)


def refusal_for_crypto(exc: CryptoError) -> NodeRefused:
    """How a transport failure is answered: replay 409, anything the AEAD refused 401."""
    if isinstance(exc, ReplayDetected):
        return NodeRefused(409, "replayed-message", str(exc))
    return NodeRefused(401, "message-rejected", "the message does not authenticate")
