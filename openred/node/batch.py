"""Several encrypted P2P calls to one peer in one HTTP request: ``POST /api/v3/p2p/batch``.

Every message is one encrypted call (DESIGN §6). Under load most of a call's CPU on both nodes
is HTTP — the sender's aiohttp request and answer, the receiver's Hypercorn/h11 parsing,
ASGI events and event-loop turns — not the call's own work (AEAD, handler, durable append).
A batch carries calls that were waiting for the same peer at the same moment, and nothing
about a call changes: each one is the envelope its own route would carry, sealed with its
own counter and associated data (which binds its session, direction and ``<module>/<action>``),
opened, checked against its session's replay window, handled and committed on its own, and
answered with exactly the status and JSON body its own route would answer (only actions a
module registered as batchable may be batched: others get 400 ``not-batchable``). A batch is
transport, not authority: it carries no key, and a peer gains nothing by batching that it
could not do with as many separate requests (the receiver bounds it: at most
:data:`MAX_CALLS` calls, and the node's usual ``MAX_CONTENT_LENGTH`` for the body).

Wire format (JSON, like the single route)::

    request  {"calls": [{"route": "<module>/<action>", "session_id": ..., "counter": ...,
                         "ciphertext": ...}, ...]}                  1..MAX_CALLS calls
    answer   200 {"answers": [{"status": S, "body": B}, ...]}    one per call, in order

where ``S``/``B`` are the status and JSON body (the answer envelope, or the RFC 9457 problem)
the call's own ``POST /api/v3/p2p/<module>/<action>`` would have answered. A request that is
not of this form is refused whole (400 ``malformed``, 413 for a body over the limit) and no
call in it is handled. A call whose fields are wrong gets its own route's refusal (400
``malformed-envelope``, 404 ``unknown-route``, ...), the others are handled.

The sending side (:class:`CallBatcher`) sends a call on its own when fewer than ``in_flight``
requests to the peer are under way, and otherwise queues it; a request that finishes takes
everything queued (up to :data:`MAX_CALLS` calls and :data:`MAX_BATCH_BYTES`) as one batch.
A lone call therefore waits for nothing, and a busy peer receives fewer, larger requests. A
peer that does not know the route (404/405) or refuses the batch's size (413) gets the calls
one by one, and a peer without the route is not sent batches again for
:data:`RETRY_BATCHING_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from openred.errors import NodeRefused, PeerUnreachable, TransportError
from openred.node.envelope import Envelope, Route
from openred.node.transport import answer_envelope, post_json
from openred.web.client import HttpClient, Reply

__all__ = [
    "BATCH_PATH",
    "MAX_BATCH_BYTES",
    "MAX_CALLS",
    "BatchUnsupported",
    "CallBatcher",
    "batch_body",
    "handle_batch",
    "parse_batch",
    "post_batch",
]

logger = logging.getLogger("openred.node.batch")

BATCH_PATH: Final = "/api/v3/p2p/batch"
MAX_CALLS: Final = 64
"""Most calls in one batch (the receiver refuses more: 400)."""
MAX_BATCH_BYTES: Final = 256 * 1024
"""Largest batch body a sender builds (below the node's default 384 KiB request limit); a call
larger than this on its own is sent alone."""
RETRY_BATCHING_AFTER: Final = 600.0
"""Seconds before batches are tried again with a peer that did not know the route."""


Render = Callable[[Exception], Awaitable[tuple[int, bytes]]]
"""The status and body the node's problem handler answers for an exception."""
Handle = Callable[[Route, object], Awaitable[Envelope]]
"""One call's handling (:meth:`NodeServices.handle`): its answer envelope, or a refusal."""


def _malformed(detail: str) -> NodeRefused:
    return NodeRefused(400, "malformed", detail)


def _no_route(route: str) -> Route:
    raise NodeRefused(404, "unknown-route", f"{route!r} is not <module>/<action>")


def parse_batch(body: object) -> list[tuple[Route | NodeRefused, dict[str, Any]]]:
    """The calls of a batch request: each one's route (or its refusal) and envelope fields.

    Raises NodeRefused 400 when the request is not a batch at all; a call's own fields are
    checked when it is handled (:meth:`Envelope.from_json`), as its own route checks them.
    """
    if not isinstance(body, dict) or set(body) != {"calls"}:
        raise _malformed("a batch is an object with exactly one member, calls")
    calls = body["calls"]
    if not isinstance(calls, list) or not 1 <= len(calls) <= MAX_CALLS:
        raise _malformed(f"calls is a list of 1 to {MAX_CALLS} calls")
    parsed: list[tuple[Route | NodeRefused, dict[str, Any]]] = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("route"), str):
            raise _malformed("each call is an object with a route string")
        fields = {k: v for k, v in call.items() if k != "route"}
        parts = call["route"].split("/")
        route: Route | NodeRefused
        try:  # the single route's own check of <module>/<action>
            route = Route(*parts) if len(parts) == 2 else _no_route(call["route"])
        except NodeRefused as exc:
            route = exc
        parsed.append((route, fields))
    return parsed


async def handle_batch(body: object, handle: Handle, render: Render,
                       check: Callable[[Route], None]) -> list[dict[str, Any]]:
    """Handle every call of a batch concurrently; each one's ``{"status", "body"}``, in order.

    ``check`` refuses a route that may not be batched (:meth:`P2PActions.check_batchable`);
    every other call goes through ``handle`` exactly as its own route's request would (so it
    is committed, or refused with nothing committed, on its own); a refusal is the body the
    node's problem handler answers (``render``), parsed back into JSON.
    """
    calls = parse_batch(body)

    async def one(route: Route | NodeRefused, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            if isinstance(route, NodeRefused):
                raise route
            check(route)
            envelope = await handle(route, fields)
        except Exception as exc:  # every refusal, as the single route's problem handler
            status, content = await render(exc)
            return {"status": status, "body": json.loads(content)}
        return {"status": 200, "body": envelope.to_json()}

    return list(await asyncio.gather(*(one(route, fields) for route, fields in calls)))


def batch_body(calls: Sequence[tuple[Route, Envelope]]) -> bytes:
    """The request body of ``calls`` (each call's envelope JSON with its route first)."""
    parts = []
    for route, envelope in calls:
        raw = envelope.to_json_bytes()
        parts.append(b'{"route":"%s",%s' % (str(route).encode("ascii"), raw[1:]))
    return b'{"calls":[' + b",".join(parts) + b"]}"


class BatchUnsupported(Exception):
    """The peer refused the batch as a whole in a way single calls would not be (404/405/413)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the peer answered a batch with {status}")
        self.status = status


Outcome = Envelope | Exception


async def post_batch(
    http: HttpClient, url: str, calls: Sequence[tuple[Route, Envelope]], *,
    refuse: Callable[[Route, Reply], Exception],
) -> list[Outcome]:
    """POST ``calls`` as one batch to ``url`` once; each call's answer envelope or refusal.

    A refusal is ``refuse(route, reply)`` of a :class:`Reply` with the call's own status and
    problem body, as if its own route had answered. Raises :class:`BatchUnsupported` for a
    404, 405 or 413 of the whole batch, ``refuse`` of the reply for any other refusal of the
    whole batch (every call gets it), PeerUnreachable when the peer cannot be reached and
    TransportError for an answer that is not a batch answer for these calls.
    """
    reply = await post_json(http, url, batch_body(calls))
    if reply.status in (404, 405, 413):
        raise BatchUnsupported(reply.status)
    if not reply.ok:
        raise refuse(calls[0][0], reply)
    answers = _answers(reply.body, len(calls))
    outcomes: list[Outcome] = []
    for (route, _), (item_status, item_body) in zip(calls, answers, strict=True):
        if item_status == 200:
            try:
                outcomes.append(answer_envelope(item_body))
            except NodeRefused as exc:
                outcomes.append(exc)
        else:
            problem = Reply(item_status, {"Content-Type": "application/problem+json"},
                            json.dumps(item_body).encode())
            outcomes.append(refuse(route, problem))
    return outcomes


def _answers(content: bytes, count: int) -> list[tuple[int, object]]:
    try:
        obj = json.loads(content)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise TransportError("the peer's batch answer is not JSON") from exc
    answers = obj.get("answers") if isinstance(obj, dict) else None
    if not isinstance(answers, list) or len(answers) != count:
        raise TransportError(f"the peer's batch answer does not hold {count} answers")
    out: list[tuple[int, object]] = []
    for item in answers:
        status = item.get("status") if isinstance(item, dict) else None
        if (isinstance(status, bool) or not isinstance(status, int)
                or not 200 <= status <= 599 or "body" not in item):
            raise TransportError("the peer's batch answer holds a malformed answer")
        out.append((status, item["body"]))
    return out


Single = Callable[[Route, Envelope], Awaitable[Envelope]]
Many = Callable[[Sequence[tuple[Route, Envelope]]], Awaitable[list[Outcome]]]


@dataclass(slots=True)
class _Call:
    route: Route
    envelope: Envelope
    future: asyncio.Future[Envelope]
    size: int
    after: asyncio.Future[Any] | None = None


@dataclass(slots=True)
class BatchStats:
    """What a :class:`CallBatcher` sent: requests with one call, batches, calls in batches."""

    singles: int = 0
    batches: int = 0
    batched_calls: int = 0
    fallbacks: int = 0
    largest: int = 0


def _size(envelope: Envelope) -> int:
    """An upper bound of the call's bytes in a batch body."""
    return (len(envelope.ciphertext) * 4 + 2) // 3 + len(envelope.session_id) + 120


class CallBatcher:
    """Sends the encrypted calls for one peer, coalescing those that wait into batches.

    ``single`` sends one call as its own request; ``many`` sends a batch (:func:`post_batch`).
    At most ``in_flight`` requests are under way at once; calls that arrive meanwhile wait and
    leave together with the next request. A caller gets exactly what its call's own request
    would have given it: the answer envelope or the same exception. A caller cancelled while
    it waits is left out of the batch; one cancelled while its batch is under way is not
    taken back (as a request already sent is not).
    """

    def __init__(self, single: Single, many: Many, *, in_flight: int = 2,
                 max_calls: int = MAX_CALLS, max_bytes: int = MAX_BATCH_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if in_flight < 1 or not 1 <= max_calls <= MAX_CALLS:
            raise ValueError(f"in_flight >= 1 and 1 <= max_calls <= {MAX_CALLS}")
        self._single, self._many = single, many
        self._limit, self._max_calls, self._max_bytes = in_flight, max_calls, max_bytes
        self._clock = clock
        self._busy = 0
        self._queue: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._no_batches_until = float("-inf")
        self._closed = False
        self.stats = BatchStats()

    @property
    def idle(self) -> bool:
        """Whether nothing is under way or waiting (the batcher may be dropped)."""
        return self._busy == 0 and not self._queue and not self._tasks

    @property
    def batching(self) -> bool:
        """Whether the peer is sent batches (not while it is known not to take them)."""
        return self._clock() >= self._no_batches_until

    async def call(self, route: Route, envelope: Envelope, *,
                   after: asyncio.Future[Any] | None = None) -> Envelope:
        """Send the call; its answer envelope, or what its own request would have raised.

        With ``after``, the call does not leave before ``after`` has succeeded (the message
        path's ``MessageSent`` append): it waits for that in the queue, alongside the calls
        waiting for a request to end, instead of before joining them; if ``after`` fails the
        call is never sent and raises what ``after`` raised.
        """
        if self._closed:
            raise PeerUnreachable("the node is closing")
        size = _size(envelope)
        if after is not None and (not self.batching or size > self._max_bytes or (
                self._busy < self._limit and not self._queue)):
            await after  # it would leave at once: nothing to wait beside
            after = None
        if not self.batching or size > self._max_bytes:
            self.stats.singles += 1
            return await self._single(route, envelope)
        if self._busy < self._limit and not self._queue:
            self._busy += 1
            self.stats.singles += 1
            try:
                return await self._single(route, envelope)
            finally:
                self._release()
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._queue.append(_Call(route, envelope, future, size, after))
        if after is not None and not after.done():
            after.add_done_callback(self._ready)
        self._pump()
        return await future

    def _ready(self, _: object) -> None:
        if not self._closed:
            self._pump()

    def _release(self) -> None:
        self._busy -= 1
        self._pump()

    def _pump(self) -> None:
        while self._queue and self._busy < self._limit:
            batch = self._take()
            if not batch:
                return  # what waits is not ready yet (its ``after`` will pump again)
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Call]:
        """The waiting calls that may leave and fit one batch, oldest first.

        A call whose caller went away is dropped; one whose ``after`` has not finished stays
        in the queue, in its place; one whose ``after`` failed gets that failure.
        """
        taken: list[_Call] = []
        kept: list[_Call] = []
        size = 0
        while self._queue and len(taken) < self._max_calls:
            call = self._queue.pop(0)
            if call.future.done():
                continue
            after = call.after
            if after is not None:
                if not after.done():
                    kept.append(call)
                    continue
                if after.cancelled():
                    call.future.set_exception(TransportError(
                        "what this call waited for was cancelled; it was not sent"))
                    continue
                failure = after.exception()
                if failure is not None:
                    call.future.set_exception(failure)
                    continue
            if taken and size + call.size > self._max_bytes:
                kept.append(call)
                break
            taken.append(call)
            size += call.size
        self._queue[:0] = kept
        return taken

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                self.stats.singles += 1
                outcomes = await self._one_by_one(batch)
            else:
                outcomes = await self._batch(batch)
        except asyncio.CancelledError:
            _settle(batch, [PeerUnreachable("the node is closing")] * len(batch))
            raise
        except Exception as exc:  # the whole request failed: every call gets its failure
            outcomes = [_own_copy(exc) for _ in batch]
        finally:
            self._release()
        _settle(batch, outcomes)

    async def _batch(self, batch: list[_Call]) -> list[Outcome]:
        calls = [(c.route, c.envelope) for c in batch]
        try:
            outcomes = await self._many(calls)
        except BatchUnsupported as exc:
            self.stats.fallbacks += 1
            if exc.status in (404, 405):
                self._no_batches_until = self._clock() + RETRY_BATCHING_AFTER
                logger.info("the peer has no batch route (%d): sending it single calls",
                            exc.status)
            return await self._one_by_one(batch)
        self.stats.batches += 1
        self.stats.batched_calls += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        return outcomes

    async def _one_by_one(self, batch: list[_Call]) -> list[Outcome]:
        async def one(call: _Call) -> Outcome:
            try:
                return await self._single(call.route, call.envelope)
            except Exception as exc:
                return exc

        return list(await asyncio.gather(*(one(c) for c in batch)))

    async def close(self) -> None:
        """Refuse new calls, fail the waiting ones and stop the batches under way."""
        self._closed = True
        waiting, self._queue = self._queue, []
        _settle(waiting, [PeerUnreachable("the node is closing")] * len(waiting))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _own_copy(exc: Exception) -> Exception:
    """A copy of ``exc`` for one caller: one exception object raised in several tasks would
    collect all their tracebacks."""
    try:  # as copy.copy would, without calling an __init__ of another signature
        twin = type(exc).__new__(type(exc), *exc.args)
        twin.__dict__.update(vars(exc))
    except Exception:  # an exception that cannot be copied: the same one, then
        return exc
    twin.__cause__, twin.__context__ = exc.__cause__, exc.__context__
    return twin


def _settle(batch: Sequence[_Call], outcomes: Sequence[Outcome]) -> None:
    for call, outcome in zip(batch, outcomes, strict=True):
        if call.future.done():
            continue
        if isinstance(outcome, Exception):
            call.future.set_exception(outcome)
        else:
            call.future.set_result(outcome)
