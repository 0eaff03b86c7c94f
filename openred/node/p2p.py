"""Encrypted P2P calls (DESIGN §6): the action registry and the request dispatcher.

``POST /api/v3/p2p/<module>/<action>`` carries an :class:`~openred.node.envelope.Envelope`.
:func:`dispatch` parses it strictly, finds the module's handler, opens the request with the
session's channel (cache first), runs the handler on the plaintext, appends the events the
handler returns and seals the answer bound to the request's counter. Any event a request
causes in its session's stream must carry that request's ``counter``: restoring a session
re-marks those counters in the replay window (:mod:`openred.node.sessions`).

Everything a call appends is caused by the peer, so ``room`` (the node's
:class:`~openred.node.diskreserve.DiskReserve` check) is asked before each such append: below
the reserve the call is refused (507 ``disk-full``) and nothing is logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from openred.errors import CryptoError, NodeRefused
from openred.node import events as ev
from openred.node.envelope import Envelope, Route
from openred.node.sessions import SessionKeeper, refusal_for_crypto
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore

__all__ = ["P2P_ACTIONS", "Outcome", "P2PActions", "RequestContext", "dispatch"]

P2P_ACTIONS = "openred.p2p_actions"
"""Key of the :class:`P2PActions` registry in the node app's ``extensions``."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who sent an authenticated request, on which session, with which counter, and when."""

    session_id: str
    peer: str
    counter: int
    route: Route
    now: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """A handler's result: the answer's plaintext and the events to append first.

    ``settled``, if given, is called once the append is over, whether it succeeded or not (a
    handler that holds something for the request until its events are durable lets it go).
    """

    answer: bytes
    events: list[NewEvent] = field(default_factory=list)
    settled: Callable[[], None] | None = None


Handler = Callable[[RequestContext, bytes], Awaitable[Outcome]]


class P2PActions:
    """The encrypted actions modules offer: ``<module>/<action>`` → handler."""

    def __init__(self) -> None:
        self._handlers: dict[Route, Handler] = {}
        self._batchable: set[Route] = set()

    def add(self, module: str, action: str, handler: Handler, *,
            batchable: bool = False) -> None:
        """Offer ``<module>/<action>``; ``batchable`` lets it travel in ``POST p2p/batch``.

        Only small, quick calls should be batchable: a batch is answered when its slowest
        call is, in one body (file chunks, for one, are not).
        """
        route = Route(module, action)
        if route in self._handlers:
            raise ValueError(f"P2P action {route} is registered twice")
        self._handlers[route] = handler
        if batchable:
            self._batchable.add(route)

    def check_batchable(self, route: Route) -> None:
        """Refuse a batched call to an unknown action (404) or one not offered in batches (400)."""
        self.get(route)
        if route not in self._batchable:
            raise NodeRefused(400, "not-batchable", f"P2P action {route} is not sent in batches")

    def get(self, route: Route) -> Handler:
        handler = self._handlers.get(route)
        if handler is None:
            raise NodeRefused(404, "unknown-route", f"no P2P action {route}")
        return handler


async def dispatch(
    route: Route, body: object, *, actions: P2PActions, keeper: SessionKeeper,
    store: SQLiteEventStore, now: int, room: Callable[[], None] | None = None,
) -> Envelope:
    """Handle one encrypted request; the encrypted answer, or NodeRefused (nothing committed)."""
    envelope = body if isinstance(body, Envelope) else Envelope.from_json(body)  # binary: parsed
    handler = actions.get(route)
    channel = await keeper.channel(envelope.session_id, now)
    try:
        plaintext = channel.open_request(route, envelope)
    except CryptoError as exc:
        raise refusal_for_crypto(exc) from exc
    context = RequestContext(envelope.session_id, channel.peer, envelope.counter, route, now)
    outcome = await handler(context, plaintext)
    try:
        stream = ev.session_stream(envelope.session_id)
        for event in outcome.events:
            if event.stream == stream and event.payload.get("counter") != envelope.counter:
                raise AssertionError(
                    f"{event.type} in the session stream lacks the request counter")
        if outcome.events:
            if room is not None:
                room()
            await store.append(outcome.events)
    finally:
        if outcome.settled is not None:
            outcome.settled()
    answer = channel.seal_answer(route, envelope.counter, outcome.answer)
    await keeper.after_use(channel)
    return answer
