"""A hostile peer, alone or with a compromised directory, against a served node's grant receipt,
handshake and session renewal (hattack, 2026-12-02).

Everything goes over HTTP to nodes served by Hypercorn on loopback, each with its real jail and
SQLite log; the directory's pushes are RFC 9421-signed with its key. The directory's key is
what a compromised directory holds, so whatever it signs verifies: the node's own checks of
what it signs are all that stand between it and the log. Every refusal is an RFC 9457 problem
and leaves nothing in the log.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from openred.crypto.grants import MAX_TTL, Grant, mint_tokens, seal_token
from openred.crypto.identity import BoxKey, b64url
from openred.errors import ConfigurationError, PeerUnreachable
from openred.node import events as ev
from openred.settings import DirectorySettings
from tests.node.test_app import Served, World, granted, now, problem, push, raw_post, types
from tests.node.test_fastpath import world
from tests.node.world import SUITE

__all__ = ["world"]

YEAR = 365 * 86400


async def delivered(world: World, initiator: Served, responder: Served, *, issued_at: int,
                    expires_at: int, suite: str = SUITE) -> tuple[Grant, dict[str, Any],
                                                                  dict[str, Any]]:
    """A grant the directory's key signs and its log holds, with any times and suite it likes:
    what a compromised directory can push (the honest one mints ``issued_at = now`` and its
    configured lifetime, with the suite its rule picks)."""
    grant = Grant(grant_id=b64url(os.urandom(16)), initiator=initiator.id,
                  responder=responder.id, issued_at=issued_at, expires_at=expires_at,
                  suite=suite, initiator_record=b64url(initiator.record.hash),
                  responder_record=b64url(responder.record.hash))
    directory = world.directory
    proofs = await directory.logged(grant)
    token_a, token_b = mint_tokens(grant, os.urandom(32))
    for_a = directory.delivery(grant, seal_token(token_a, BoxKey(initiator.keys.box_key.raw)),
                               responder, proofs)  # type: ignore[arg-type]
    for_b = directory.delivery(grant, seal_token(token_b, BoxKey(responder.keys.box_key.raw)),
                               initiator, proofs)  # type: ignore[arg-type]
    return grant, for_a, for_b


async def test_a_grant_for_a_suite_no_jail_implements_is_refused_on_receipt(
    world: World,
) -> None:
    """DESIGN §6: both nodes check the grant's suite against the set they allow. The node took
    any name: the token was held, and every handshake on it was answered 503 ("the signer is
    unavailable, try again later") with nothing logged and the refusal limit not counting it
    — the jail refused the suite, which the route took for an outage."""
    t = now()
    _, for_a, for_b = await delivered(world, world.a, world.b, issued_at=t, expires_at=t + 300,
                                      suite="25519_Rot13_SHA256")
    for node, body in ((world.b, for_b), (world.a, for_a)):
        before = await types(node)
        problem(await push(world, node, body), 422, "invalid-grant")
        assert await types(node) == before
    assert await world.b.services.book.count_tokens() == 0


@pytest.mark.parametrize(("issued", "lifetime"), [
    (10 * YEAR, 300),       # issued ten years from now
    (0, 10 * YEAR),         # usable for ten years
    (3600, 300),            # issued an hour ahead: further than any clock is off
    (0, 86400 + 1),         # a second longer than the longest lifetime a node takes
])
async def test_a_grant_from_the_future_or_living_for_years_is_refused_on_receipt(
    world: World, issued: int, lifetime: int,
) -> None:
    """A grant lives five minutes (DESIGN §5); the node took any times the directory's key
    signed. A compromised directory could hand its peer a token usable for years — long after
    the compromise was found and the directory's key replaced — and it could date the grant
    in the future, so the public log showed it minted at a time nobody looks at yet."""
    t = now()
    _, _, for_b = await delivered(world, world.a, world.b, issued_at=t + issued,
                                  expires_at=t + issued + lifetime)
    before = await types(world.b)
    problem(await push(world, world.b, for_b), 422, "invalid-grant")
    assert await types(world.b) == before
    assert await world.b.services.book.count_tokens() == 0


@pytest.mark.parametrize(("issued", "lifetime"), [(0, 300), (60, 300), (-200, 300), (0, 86400)])
async def test_an_honest_grant_with_some_clock_skew_is_still_received(
    world: World, issued: int, lifetime: int,
) -> None:
    t = now()
    grant, _, for_b = await delivered(world, world.a, world.b, issued_at=t + issued,
                                      expires_at=t + issued + lifetime)
    reply = await push(world, world.b, for_b)
    assert reply.status == 200, reply.body
    assert reply.json() == {"grant_id": grant.grant_id, "status": "received"}


async def test_two_renewals_of_one_session_at_once_close_it_once(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer holding two grants renews one session with both at once. Handshakes were
    serialized per grant only, so both saw the old session active and due, and each closed it:
    two sessions replaced one, and the old one's ``renewed_by`` named whichever came last.
    Now renewals of one session are serialized too: the second finds it closed (422)."""
    a, b = world.a, world.b
    t = now()
    grant, for_a, for_b = await delivered(world, a, b, issued_at=t, expires_at=t + 300)
    for node, body in ((a, for_a), (b, for_b)):
        assert (await push(world, node, body)).status == 200
    old = await a.services.connect(grant.grant_id)
    later = t + 70_000  # past 80 % of the default day-long life: renewal is due
    for node in (a, b):
        monkeypatch.setattr(node.services, "clock", lambda: float(later))
    grants = []
    for _ in range(2):
        grant, for_a, for_b = await delivered(world, a, b, issued_at=later,
                                              expires_at=later + 300)
        for node, body in ((a, for_a), (b, for_b)):
            assert (await push(world, node, body)).status == 200
        grants.append(grant.grant_id)
    outcomes = await asyncio.gather(*[
        a.services.handshakes.connect(grant_id, a.services._handshake_over_http, later,
                                      renews=old.session_id)
        for grant_id in grants], return_exceptions=True)
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert getattr(lost[0], "status", None) == 422, lost
    rows = {r.session_id: r for r in await b.services.book.sessions()}
    assert rows[old.session_id].state == "closed"
    assert rows[old.session_id].renewed_by == won[0].session_id
    assert [r.session_id for r in rows.values() if r.state == "active"] == [won[0].session_id]
    renewed = [e for e in await b.services.store.read() if e.type == ev.SESSION_RENEWED]
    assert len(renewed) == 1


def test_a_directory_is_not_configured_to_mint_grants_nodes_refuse(tmp_path: Path) -> None:
    """Nodes take grants living a day at most; a directory configured for longer ones would
    mint only grants every node refuses, so it does not start."""
    assert DirectorySettings.load(tmp_path, environ={"OPENRED_GRANT_TTL": str(MAX_TTL)}
                                  ).grant_ttl == MAX_TTL
    with pytest.raises(ConfigurationError, match="OPENRED_GRANT_TTL must be at most 86400"):
        DirectorySettings.load(tmp_path, environ={"OPENRED_GRANT_TTL": str(MAX_TTL + 1)})


async def test_a_renewal_whose_answer_is_lost_is_made_good_on_the_next_run(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The responder closes the old session when it answers a renewal; if that answer never
    reaches the initiator (a timeout, a reset, anyone on the path dropping one response), the
    initiator still holds the old session, which the responder now refuses (410), and every
    later renewal of it was refused too (422: it is closed, not due): the two nodes stayed
    apart until the old session expired, and nothing reconnected them then. The initiator now
    replaces a session its peer no longer renews with a new session on the same grant."""
    a, b = world.a, world.b
    old = await a.services.connect(await granted(world))
    later = now() + 70_000  # past 80 % of the default day-long life: renewal is due
    for node in (a, b):
        monkeypatch.setattr(node.services, "clock", lambda: float(later))

    async def request_grant(peer: str) -> str:
        assert peer == b.id
        grant, for_a, for_b = await delivered(world, a, b, issued_at=later,
                                              expires_at=later + 300)
        for node, body in ((a, for_a), (b, for_b)):
            assert (await push(world, node, body)).status == 200
        return grant.grant_id

    monkeypatch.setattr(a.services, "request_grant", request_grant)
    original = a.services.http.request
    dropped: list[str] = []

    async def drop_first_answer(method: str, url: str, **kw: Any) -> Any:
        reply = await original(method, url, **kw)
        if url.endswith("/p2p/handshake") and not dropped:
            dropped.append(url)
            raise PeerUnreachable("the answer was lost on the way")
        return reply

    monkeypatch.setattr(a.services.http, "request", drop_first_answer)
    assert await a.services.renew() == []
    rows = {r.session_id: r for r in await b.services.book.sessions()}
    assert rows[old.session_id].state == "closed"  # B renewed it; A never heard
    [(renewed, new)] = await a.services.renew()
    assert renewed == old.session_id
    for node in (a, b):
        rows = {r.session_id: r for r in await node.services.book.sessions()}
        assert rows[new].state == "active"
    assert {r.session_id: r.state for r in await a.services.book.sessions()}[
        old.session_id] == "closed"
    await a.services.send_message(new, "still talking")
    assert [m.text for m in await b.services.messaging.inbox()] == ["still talking"]


async def test_a_held_grant_the_jail_cannot_use_is_a_logged_refusal_not_an_outage(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token held before its grant's terms were checked on receipt (an odd suite, taken by
    an older node): every handshake on it was answered 503 ``signer-unavailable`` — "try
    again later", for ever — with nothing logged, and not counted by the refusal limit, so
    its holder could make the jail work without limit. The jail's refusal of a grant is now
    the grant's refusal: 422, logged once per handshake, counted like every other refusal."""
    t = now()
    with monkeypatch.context() as old_node:
        old_node.setattr(Grant, "terms_problem", lambda self, at: None)
        grant, _, for_b = await delivered(world, world.a, world.b, issued_at=t,
                                          expires_at=t + 300, suite="25519_Rot13_SHA256")
        assert (await push(world, world.b, for_b)).status == 200
    url = f"{world.b.url}/api/v3/p2p/handshake"
    body = json.dumps({"grant_id": grant.grant_id, "message": b64url(bytes(48))})
    before = await types(world.b)
    status, kind, raw = await raw_post(url, body)
    assert (status, json.loads(raw)["type"]) == (422, "urn:openred:problem:unusable-grant"), raw
    assert kind.startswith("application/problem+json")
    assert await types(world.b) == [*before, ev.HANDSHAKE_REJECTED]
    limit = world.b.services.settings.handshake_refusals
    statuses = [(await raw_post(url, body))[0] for _ in range(limit)]
    assert statuses == [422] * (limit - 1) + [429]


async def test_a_request_in_flight_when_the_cache_lapses_is_not_accepted_again(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session cache forgot a channel 300 s after restoring it, and the next request
    restored it again from the log: the saved state plus every counter logged since. A
    request the old channel had accepted whose events were not committed yet (its append
    under way) was in neither, so once any request naming the session — one that does not
    even authenticate — had the session restored meanwhile, the same envelope sent again by
    anyone who saw it on the wire was accepted a second time, then or any time later.
    (Messaging's message ids keep the inbox from storing it twice; a handler without such ids
    would act twice, and the envelope layer promises never to accept a message twice.) A
    lapsed channel is now checked against its session's row and kept, never restored over."""
    from openred.modules.messaging.service import SEND
    from tests.node.test_fastpath import sealed
    from tests.node.test_hostile_peer import message

    session_id = (await world.a.services.connect(await granted(world))).session_id
    url = f"{world.b.url}/api/v3/p2p/{SEND}"
    first = json.dumps((await sealed(world, session_id, message())).to_json())
    assert (await raw_post(url, first))[0] == 200  # the channel is cached on B
    services = world.b.services
    store, append = services.store, services.store.append
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_append(events: Any) -> Any:
        if any(e.type == "MessageReceived" for e in events) and not release.is_set():
            entered.set()
            await release.wait()
        return await append(events)

    monkeypatch.setattr(store, "append", slow_append)
    envelope = json.dumps((await sealed(world, session_id,
                                        message(message_id=b64url(b"in-flight-msg-01"))
                                        )).to_json())
    in_flight = asyncio.create_task(raw_post(url, envelope))
    await asyncio.wait_for(entered.wait(), 10)
    cache = services.keeper.cache
    lapsed = cache._clock() + cache.ttl + 1
    monkeypatch.setattr(cache, "_clock", lambda: lapsed)  # the cache's 300 s run out now
    # Any request naming the session now made B restore it, even one that does not
    # authenticate: someone on the path needs no key for that.
    forged = json.dumps({"session_id": session_id, "counter": 2**40,
                         "ciphertext": b64url(bytes(64))})
    status, _, raw = await raw_post(url, forged)
    assert status == 401, raw
    release.set()
    assert (await in_flight)[0] == 200
    status, _, raw = await raw_post(url, envelope)  # the request seen on the wire, again
    assert status == 409 and b"replayed-message" in raw, (status, raw)


async def test_a_request_in_flight_when_its_session_is_evicted_is_not_accepted_again(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same race through the cache's LRU: a channel evicted (more sessions in use than the
    cache holds) while a request it accepted was still being appended was restored in its
    place by the next request naming the session, and that copy accepted the request again.
    A channel still held by a request under way is taken back instead of restored over."""
    from openred.modules.messaging.service import SEND
    from tests.node.test_fastpath import sealed
    from tests.node.test_hostile_peer import message

    session_id = (await world.a.services.connect(await granted(world))).session_id
    url = f"{world.b.url}/api/v3/p2p/{SEND}"
    services = world.b.services
    services.keeper.cache.max_size = 1
    store, append = services.store, services.store.append
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_append(events: Any) -> Any:
        if any(e.type == "MessageReceived" for e in events) and not release.is_set():
            entered.set()
            await release.wait()
        return await append(events)

    monkeypatch.setattr(store, "append", slow_append)
    envelope = json.dumps((await sealed(world, session_id, message())).to_json())
    in_flight = asyncio.create_task(raw_post(url, envelope))
    await asyncio.wait_for(entered.wait(), 10)
    await world.a.services.connect(await granted(world))  # B caches it: the first is evicted
    assert services.keeper.cache.get(session_id, now()) is None
    forged = json.dumps({"session_id": session_id, "counter": 2**40,
                         "ciphertext": b64url(bytes(64))})
    status, _, raw = await raw_post(url, forged)
    assert status == 401, raw
    release.set()
    assert (await in_flight)[0] == 200
    status, _, raw = await raw_post(url, envelope)
    assert status == 409 and b"replayed-message" in raw, (status, raw)


@pytest.mark.parametrize("answer", ["another session", "a forged ciphertext"])
async def test_a_peer_answer_that_does_not_open_is_the_peers_fault(
    world: World, answer: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer's answer envelope that names another session, or whose ciphertext does not
    authenticate, reached the operator's call as the channel raised it: 404
    ``unknown-session`` (the operator's session exists) or 422 ``invalid-crypto`` (the
    operator's request was fine). It is the peer's failure: 502 ``bad-answer``, and nothing
    of it is logged."""
    from quart import Quart, Response

    from openred.errors import DecryptionFailed, NodeRefused
    from openred.modules.messaging import events as messaging_events
    from tests.servers import serve_in_loop

    session_id = (await world.a.services.connect(await granted(world))).session_id
    hostile = Quart("answers-that-do-not-open")

    @hostile.post("/api/v3/p2p/<path:rest>")
    async def handle(rest: str) -> Response:
        named = b64url(os.urandom(16)) if answer == "another session" else session_id
        return Response(json.dumps({"session_id": named, "counter": 5,
                                    "ciphertext": b64url(os.urandom(40))}),
                        content_type="application/json")

    async with serve_in_loop(hostile) as url:
        assert world.a.services.peer_urls is not None
        monkeypatch.setattr(world.a.services.peer_urls, "api_url", lambda node_id: url)
        with pytest.raises(NodeRefused) as refused:
            await world.a.services.send_message(session_id, "hello")
    assert (refused.value.status, refused.value.reason) == (502, "bad-answer"), refused.value
    assert isinstance(refused.value, DecryptionFailed)  # what callers checking the AEAD expect
    assert messaging_events.MESSAGE_DELIVERED not in await types(world.a)


async def test_a_held_grant_the_jail_cannot_use_is_refused_to_the_initiator_too(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The initiator's side of the same grant: ``connect`` (``openred connect``, the admin
    API) answered 503 "the signer is unavailable, try again later" for a grant its own jail
    refuses. It is the grant's 422 ``unusable-grant``, and nothing is sent to the peer."""
    from openred.errors import NodeRefused

    t = now()
    with monkeypatch.context() as old_node:
        old_node.setattr(Grant, "terms_problem", lambda self, at: None)
        grant, for_a, _ = await delivered(world, world.a, world.b, issued_at=t,
                                          expires_at=t + 300, suite="25519_Rot13_SHA256")
        assert (await push(world, world.a, for_a)).status == 200
    before = await types(world.b)
    with pytest.raises(NodeRefused) as refused:
        await world.a.services.connect(grant.grant_id)
    assert (refused.value.status, refused.value.reason) == (422, "unusable-grant")
    assert await types(world.b) == before
