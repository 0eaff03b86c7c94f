"""The handshake between two real jails: sessions on both sides, every refusal audited alone."""

from __future__ import annotations

import os
from typing import Any

import pytest

from openred.crypto.grants import Grant, mint_tokens, new_grant, seal_token
from openred.crypto.identity import BoxKey, NodeId, b64url
from openred.errors import NodeRefused
from openred.node import events as ev
from openred.node.envelope import Envelope
from openred.node.handshake import (
    decide_established,
    decide_handshake,
    renew_at,
    session_id_for,
)
from openred.node.handshake_service import HandshakeAnswer
from openred.node.tokens import UNKNOWN, HeldToken, Refusal, TokenState, TokenStatus
from tests.node.world import NOW, SUITE, Directory, Node, transport_to


async def received(directory: Directory, a: Node, b: Node, **kw: Any) -> str:
    grant, for_a, for_b = await directory.pair(a, b, **kw)
    await a.tokens.receive(for_a, NOW)
    await b.tokens.receive(for_b, NOW)
    return grant.grant_id


def recording(node: Node, now: int, sent: list[tuple[str, bytes]]) -> Any:
    inner = transport_to(node, now)

    async def send(api_url: str, grant_id: str, message: bytes,
                   renews: str | None = None) -> HandshakeAnswer:
        sent.append((grant_id, message))
        answer: HandshakeAnswer = await inner(api_url, grant_id, message, renews)
        return answer

    return send


async def rejections(node: Node) -> list[dict[str, Any]]:
    return [node.store.registry.decode(e).payload for e in await node.store.read()
            if e.type == ev.HANDSHAKE_REJECTED]


async def test_a_handshake_establishes_the_same_session_on_both_sides(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant_id = await received(directory, a, b)
    channel = await a.handshakes.connect(grant_id, transport_to(b, NOW + 1), NOW + 1)
    [row_a] = await a.book.sessions()
    [row_b] = await b.book.sessions()
    assert row_a.session_id == row_b.session_id == channel.session_id
    assert (row_a.role, row_b.role) == ("initiator", "responder")
    assert (row_a.peer, row_b.peer) == (b.id, a.id)
    assert row_a.expires_at == NOW + 1 + 86400
    assert row_a.renew_at == NOW + 1 + 86400 * 4 // 5
    for node in (a, b):
        assert (await node.book.token_state(grant_id)).status is TokenStatus.CONSUMED
        assert (await node.types())[-2:] == [ev.TOKEN_CONSUMED, ev.SESSION_ESTABLISHED]
    # The saved state is wrapped by the jail: it is not the cipher state in clear.
    assert b64url(channel.cipher.to_state()) != row_a.wrapped_state


async def test_a_replayed_first_message_is_refused_and_only_that_is_logged(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant_id = await received(directory, a, b)
    sent: list[tuple[str, bytes]] = []
    await a.handshakes.connect(grant_id, recording(b, NOW, sent), NOW)
    size = b.store.head.size
    with pytest.raises(NodeRefused) as info:
        await b.handshakes.respond(*sent[0], NOW + 2)
    assert (info.value.status, info.value.reason) == (409, "grant-used")
    assert b.store.head.size == size + 1
    assert await rejections(b) == [{"grant_id": grant_id, "reason": "grant-used",
                                    "status": 409}]
    assert len(await b.book.sessions()) == 1


async def test_unknown_and_expired_grants_and_the_wrong_role_are_refused(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    unknown = b64url(os.urandom(16))
    expired = await received(directory, a, b)
    held_by_initiator = await received(directory, b, a)
    cases = [(unknown, NOW, 404, "unknown-grant"),
             (expired, NOW + 300, 410, "grant-expired"),
             (held_by_initiator, NOW, 403, "wrong-role")]
    for grant_id, now, status, reason in cases:
        with pytest.raises(NodeRefused) as info:
            await b.handshakes.respond(grant_id, os.urandom(48), now)
        assert (info.value.status, info.value.reason) == (status, reason)
    assert [(r["grant_id"], r["reason"]) for r in await rejections(b)] == [
        (g, r) for g, _, _, r in cases]
    assert await b.book.sessions() == []
    # The initiator refuses to start with an expired grant too, before any message.
    with pytest.raises(NodeRefused, match="grant-expired"):
        await a.handshakes.connect(expired, transport_to(b, NOW + 300), NOW + 300)


async def test_tokens_that_do_not_match_are_refused_with_401(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant = directory.grant(a, b)
    proofs = await directory.logged(grant)
    token_a, _ = mint_tokens(grant, os.urandom(32))
    _, other_b = mint_tokens(grant, os.urandom(32))  # B's half of another secret
    await a.tokens.receive(directory.delivery(
        grant, seal_token(token_a, BoxKey(a.keys.box_key.raw)), b, proofs), NOW)
    await b.tokens.receive(directory.delivery(
        grant, seal_token(other_b, BoxKey(b.keys.box_key.raw)), a, proofs), NOW)
    with pytest.raises(NodeRefused) as info:
        await a.handshakes.connect(grant.grant_id, transport_to(b, NOW), NOW)
    assert (info.value.status, info.value.reason) == (401, "tokens-do-not-match")
    assert [r["reason"] for r in await rejections(b)] == ["tokens-do-not-match"]
    # Nothing else was committed: the token is still unused on both sides.
    for node in (a, b):
        assert (await node.book.token_state(grant.grant_id)).status is TokenStatus.RECEIVED
        assert await node.book.sessions() == []


async def test_a_tampered_first_message_is_refused(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant_id = await received(directory, a, b)
    sent: list[tuple[str, bytes]] = []

    async def tamper(api_url: str, gid: str, message: bytes,
                     renews: str | None = None) -> HandshakeAnswer:
        sent.append((gid, message))
        flipped = bytes([message[0] ^ 1]) + message[1:]
        return await b.handshakes.respond(gid, flipped, NOW)

    with pytest.raises(NodeRefused, match="tokens-do-not-match"):
        await a.handshakes.connect(grant_id, tamper, NOW)
    # The untampered message still works afterwards: a refusal consumed nothing.
    answer = await b.handshakes.respond(*sent[0], NOW)
    assert answer.session_id


async def test_a_forged_answer_is_refused_by_the_initiator(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant_id = await received(directory, a, b)

    async def wrong_id(api_url: str, gid: str, message: bytes,
                       renews: str | None = None) -> HandshakeAnswer:
        real = await b.handshakes.respond(gid, message, NOW)
        return HandshakeAnswer(b64url(os.urandom(16)), real.message)

    with pytest.raises(NodeRefused) as info:
        await a.handshakes.connect(grant_id, wrong_id, NOW)
    assert (info.value.status, info.value.reason) == (502, "peer-handshake-failed")
    assert await a.book.sessions() == []


# -- the pure decisions --

def pure_grant() -> Grant:
    return new_grant(NodeId("a" * 32), NodeId("b" * 32), grant_id=os.urandom(16),
                     issued_at=NOW, suite=SUITE, initiator_record=bytes(32),
                     responder_record=bytes(32))


def test_decide_handshake_tells_every_state_apart() -> None:
    grant = pure_grant()
    token = HeldToken(grant, bytes(64), bytes(80), "responder")
    received_state = TokenState(TokenStatus.RECEIVED, token, 1)
    assert decide_handshake(received_state, role="responder", now=NOW) is token
    assert decide_handshake(UNKNOWN, role="responder", now=NOW) == Refusal(
        404, "unknown-grant", "this node holds no token for that grant")
    used = decide_handshake(TokenState(TokenStatus.CONSUMED), role="responder", now=NOW)
    assert isinstance(used, Refusal) and used.status == 409
    late = decide_handshake(received_state, role="responder", now=grant.expires_at)
    assert isinstance(late, Refusal) and late.status == 410
    wrong = decide_handshake(received_state, role="initiator", now=NOW)
    assert isinstance(wrong, Refusal) and wrong.status == 403


def test_decide_established_consumes_at_the_grant_version_and_renews() -> None:
    grant = pure_grant()
    token = HeldToken(grant, bytes(64), bytes(80), "initiator")
    sid = session_id_for(b"h" * 32)
    events = decide_established(token, grant_version=1, session_id=sid, wrapped_state=b"w",
                                now=NOW, lifetime=1000, renews="old")
    assert [e.type for e in events] == [ev.TOKEN_CONSUMED, ev.SESSION_ESTABLISHED,
                                        ev.SESSION_RENEWED]
    assert events[0].expected_version == 1 and events[1].expected_version == 0
    assert events[1].payload["peer"] == "b" * 32
    assert events[1].payload["renew_at"] == renew_at(NOW, NOW + 1000) == NOW + 800
    assert events[2].payload == {"session_id": "old", "renewed_by": sid}
    assert session_id_for(b"h" * 32) != session_id_for(b"i" * 32)
    with pytest.raises(ValueError):
        decide_established(token, grant_version=1, session_id=sid, wrapped_state=b"w",
                           now=NOW, lifetime=0)


GOOD_BODY = {"grant_id": b64url(bytes(16)), "message": b64url(bytes(48))}


@pytest.mark.parametrize(("body", "status"), [
    (None, 400),
    ([], 400),
    ({"grant_id": GOOD_BODY["grant_id"]}, 400),
    ({**GOOD_BODY, "extra": 1}, 400),
    ({**GOOD_BODY, "grant_id": "short"}, 400),
    ({**GOOD_BODY, "grant_id": 7}, 400),
    ({**GOOD_BODY, "message": 7}, 400),
    ({**GOOD_BODY, "message": "@@@"}, 400),
    ({**GOOD_BODY, "message": ""}, 400),
    ({**GOOD_BODY, "message": "A" * 2000}, 413),
    ({**GOOD_BODY, "renews": 5}, 400),
    ({**GOOD_BODY, "renews": "not a session"}, 400),
    ({**GOOD_BODY, "renews": b64url(bytes(16))}, 400),  # a bare session id proves nothing
    ({**GOOD_BODY, "renews": {"session_id": b64url(bytes(16)), "counter": 1}}, 400),
])
def test_malformed_and_oversized_handshake_bodies_are_refused(body: Any, status: int) -> None:
    from openred.node.handshake import parse_handshake

    with pytest.raises(NodeRefused) as info:
        parse_handshake(body)
    assert info.value.status == status


def test_a_handshake_body_parses() -> None:
    from openred.node.handshake import parse_handshake

    assert parse_handshake(GOOD_BODY) == (GOOD_BODY["grant_id"], bytes(48), None)
    proof = Envelope(b64url(bytes(16)), 3, bytes(40))
    renewing = {**GOOD_BODY, "renews": proof.to_json()}
    assert parse_handshake(renewing) == (GOOD_BODY["grant_id"], bytes(48), proof)


async def test_racing_copies_of_message_1_establish_one_session(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    import asyncio

    a, b, _ = nodes
    grant_id = await received(directory, a, b)
    sent: list[tuple[str, bytes]] = []
    await a.handshakes.connect(grant_id, recording(b, NOW, sent), NOW)
    # Another grant; its message 1 captured and sent five times at once.
    grant_id = await received(directory, a, b)
    captured: list[tuple[str, bytes]] = []

    async def capture(api_url: str, gid: str, message: bytes,
                      renews: str | None = None) -> HandshakeAnswer:
        captured.append((gid, message))
        raise NodeRefused(502, "peer-unreachable", "the test keeps the message")

    with pytest.raises(NodeRefused):
        await a.handshakes.connect(grant_id, capture, NOW)
    results = await asyncio.gather(
        *(b.handshakes.respond(*captured[0], NOW) for _ in range(5)), return_exceptions=True)
    answers = [r for r in results if isinstance(r, HandshakeAnswer)]
    refusals = [r for r in results if isinstance(r, NodeRefused)]
    assert len(answers) == 1 and [r.status for r in refusals] == [409] * 4
    assert len(await b.book.sessions()) == 2
