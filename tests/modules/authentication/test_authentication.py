"""Peer challenge-response between two real nodes over HTTP, with their real jails.

A asks B to prove its key on their session; every refusal is logged on A as
``PeerAuthenticationFailed`` and none leaves a challenge answerable a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url, from_b64url
from openred.errors import JailRefused, NodeRefused
from openred.modules import install_admin_hooks
from openred.modules.authentication import AUTHENTICATION_SERVICE
from openred.modules.authentication import events as ev
from openred.modules.authentication.challenge import PeerChallenge
from openred.modules.authentication.service import PeerAuthentication
from openred.node.admin import create_admin_app
from openred.node.p2p import RequestContext
from openred.store.codec import decode_payload
from openred.web.client import HttpClient, Signer
from openred.web.metrics import METRICS_EXTENSION
from tests.node.test_app import Served, World, directory_app, granted, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import serve_in_loop

MODULES = ("messaging", "authentication", "monitoring")


def now() -> int:
    return int(time.time())


@dataclass
class Pair:
    world: World
    session_id: str
    jails: list[JailClient]

    @property
    def a(self) -> Served:
        return self.world.a

    @property
    def b(self) -> Served:
        return self.world.b

    def auth(self, node: Served) -> PeerAuthentication:
        found: PeerAuthentication = node.app.extensions[AUTHENTICATION_SERVICE]
        return found

    async def prove(self, purpose: str = "file_sharing.offer") -> object:
        svc = self.a.services
        peer = await svc.book.peer(str(self.b.id))
        assert peer is not None
        return await self.auth(self.a).authenticate(
            self.session_id, purpose, transport=svc._p2p_transport(peer.api_url), now=svc.now)

    async def logged(self, node: Served) -> list[tuple[str, dict[str, object]]]:
        return [(e.type, decode_payload(e.payload)) for e in await node.services.store.read()
                if e.type in (ev.PEER_AUTHENTICATED, ev.PEER_AUTHENTICATION_FAILED)]


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    clients = [JailClient(p.socket_path, timeout=10) for p in jails.procs]

    async def sign_base(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    pusher = HttpClient(signer=Signer("directory", sign_base), allow_private=True, attempts=1)
    async with contextlib.AsyncExitStack() as stack:
        dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
        a = await stack.enter_async_context(serve_node(
            "a", clients[0], tmp_path / "a", directory.key, dir_url, modules=MODULES))
        b = await stack.enter_async_context(serve_node(
            "b", clients[1], tmp_path / "b", directory.key, dir_url, modules=MODULES))
        world = World(a, b, directory, pusher, clients, dir_url, contextlib.AsyncExitStack())
        channel = await a.services.connect(await granted(world))
        yield Pair(world, channel.session_id, clients)
    await pusher.close()
    for client in clients:
        await client.close()


async def test_a_peer_proves_its_key_and_the_log_proves_it_too(pair: Pair) -> None:
    proof = await pair.prove()
    assert (proof.peer, proof.session_id, proof.purpose) == (  # type: ignore[attr-defined]
        pair.b.id, pair.session_id, "file_sharing.offer")
    [(kind, payload)] = await pair.logged(pair.a)
    assert kind == ev.PEER_AUTHENTICATED
    # Anyone holding A's log can check the proof: rebuild the challenge, verify under B's key.
    challenge = PeerChallenge("file_sharing.offer", str(pair.a.id), str(pair.b.id),
                              pair.session_id, str(payload["nonce"]))
    pair.b.services.keys.sign_key.verify(from_b64url(str(payload["signature"])),
                                         challenge.signable())
    assert await pair.logged(pair.b) == []  # answering changes nothing on the responder
    auth = pair.auth(pair.a)
    t = now()
    assert auth.require_recent(str(pair.b.id), "file_sharing.offer", t, 60) == proof
    with pytest.raises(NodeRefused) as other:
        auth.require_recent(str(pair.b.id), "delete", t, 60)
    assert (other.value.status, other.value.reason) == (403, "authentication-required")
    with pytest.raises(NodeRefused):
        auth.require_recent(str(pair.b.id), "file_sharing.offer", t + 61, 60)


async def test_outcomes_and_refused_handshakes_are_counted_in_the_metrics(pair: Pair) -> None:
    await pair.prove()
    pair.auth(pair.b).jail = pair.jails[2]
    with pytest.raises(NodeRefused):
        await pair.prove()
    # A handshake for a grant B never received: refused, logged, counted by reason.
    async with aiohttp.ClientSession() as session, session.post(
        f"{pair.b.url}/api/v3/p2p/handshake",
        json={"grant_id": b64url(bytes(16)), "message": b64url(bytes(96))},
    ) as resp:
        assert resp.status == 404
    a, b = await scrape(pair.a), await scrape(pair.b)
    assert a[("openred_peer_authentications_total",
              (("result", "ok"), ("role", "challenger")))] == 1
    assert a[("openred_peer_authentications_total",
              (("result", "peer-authentication-failed"), ("role", "challenger")))] == 1
    assert b[("openred_handshakes_rejected_total", (("reason", "unknown-grant"),))] == 1
    assert b[("openred_http_requests_total", (("method", "POST"),
              ("route", "/api/v3/p2p/<module>/<action>"), ("status", "200")))] == 2


async def scrape(node: Served) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await node.app.extensions[METRICS_EXTENSION].exposition()).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_responder_can_challenge_the_initiator_too(pair: Pair) -> None:
    svc = pair.b.services
    peer = await svc.book.peer(str(pair.a.id))
    assert peer is not None
    proof = await pair.auth(pair.b).authenticate(
        pair.session_id, "operator", transport=svc._p2p_transport(peer.api_url), now=svc.now)
    assert proof.peer == pair.a.id


async def test_an_answer_signed_by_the_wrong_key_is_refused_and_logged(pair: Pair) -> None:
    pair.auth(pair.b).jail = pair.jails[2]  # B answers with another node's jail
    with pytest.raises(NodeRefused) as refused:
        await pair.prove()
    assert (refused.value.status, refused.value.reason) == (401, "peer-authentication-failed")
    [(kind, payload)] = await pair.logged(pair.a)
    assert kind == ev.PEER_AUTHENTICATION_FAILED
    assert payload["reason"] == "peer-authentication-failed" and payload["peer"] == pair.b.id


@pytest.mark.parametrize("field", ["session_id", "purpose", "challenger", "nonce"])
async def test_a_signature_for_another_session_purpose_challenger_or_nonce_is_refused(
    pair: Pair, field: str,
) -> None:
    auth = pair.auth(pair.a)
    challenge = auth.issue(pair.session_id, str(pair.b.id), "file_sharing.offer", now())
    other = {
        "session_id": b64url(secrets.token_bytes(16)), "purpose": "messaging",
        "challenger": str(pair.world.b.id), "nonce": b64url(secrets.token_bytes(32)),
    }[field]
    fields = {"purpose": challenge.purpose, "challenger": challenge.challenger,
              "responder": challenge.responder, "session_id": challenge.session_id,
              "nonce": challenge.nonce, field: other}
    signature = await pair.jails[1].sign("peer_challenge", PeerChallenge(**fields).signable())
    with pytest.raises(NodeRefused) as refused:
        await auth.check(challenge, bytes(signature), now())
    assert refused.value.status == 401
    # The challenge was answered (wrongly): the right answer now comes too late.
    right = await pair.jails[1].sign("peer_challenge", challenge.signable())
    with pytest.raises(NodeRefused) as again:
        await auth.check(challenge, bytes(right), now())
    assert (again.value.status, again.value.reason) == (409, "unknown-challenge")


async def test_a_challenge_is_answered_once(pair: Pair) -> None:
    auth = pair.auth(pair.a)
    challenge = auth.issue(pair.session_id, str(pair.b.id), "operator", now())
    signature = bytes(await pair.jails[1].sign("peer_challenge", challenge.signable()))
    await auth.check(challenge, signature, now())
    with pytest.raises(NodeRefused) as twice:
        await auth.check(challenge, signature, now())
    assert (twice.value.status, twice.value.reason) == (409, "unknown-challenge")
    kinds = [kind for kind, _ in await pair.logged(pair.a)]
    assert kinds == [ev.PEER_AUTHENTICATED, ev.PEER_AUTHENTICATION_FAILED]


async def test_a_challenge_that_waited_too_long_is_refused(pair: Pair) -> None:
    auth = pair.auth(pair.a)
    t = now()
    challenge = auth.issue(pair.session_id, str(pair.b.id), "operator", t)
    signature = bytes(await pair.jails[1].sign("peer_challenge", challenge.signable()))
    with pytest.raises(NodeRefused) as late:
        await auth.check(challenge, signature, t + auth.lifetime)
    assert (late.value.status, late.value.reason) == (410, "challenge-expired")


async def test_an_answer_from_a_peer_whose_session_expired_is_refused(pair: Pair) -> None:
    auth = pair.auth(pair.a)
    challenge = auth.issue(pair.session_id, str(pair.b.id), "operator", now())
    signature = bytes(await pair.jails[1].sign("peer_challenge", challenge.signable()))
    [row] = await pair.a.services.book.sessions()
    expired = await pair.a.services.keeper.expire(row.expires_at)
    assert [s for s in expired] and (await pair.a.services.book.sessions())[0].state == "expired"
    with pytest.raises(NodeRefused) as refused:
        await auth.check(challenge, signature, now())
    assert (refused.value.status, refused.value.reason) == (410, "session-expired")
    [(_, payload)] = await pair.logged(pair.a)
    assert payload["reason"] == "session-expired"
    with pytest.raises(NodeRefused) as over_http:  # and no new challenge goes out on it
        await pair.prove()
    assert over_http.value.status == 410


async def test_the_responder_refuses_malformed_challenges(pair: Pair) -> None:
    auth = pair.auth(pair.b)
    ctx = RequestContext(pair.session_id, str(pair.a.id), 7, ..., now())  # type: ignore[arg-type]
    nonce = b64url(secrets.token_bytes(32))
    for body in (b"[]", b"{}", b'{"purpose": "OPERATOR", "nonce": "' + nonce.encode() + b'"}',
                 b'{"purpose": "operator", "nonce": "AAAA"}',
                 b'{"purpose": "operator", "nonce": "' + nonce.encode() + b'", "x": 1}'):
        with pytest.raises(NodeRefused) as refused:
            await auth.answer(ctx, body)
        assert (refused.value.status, refused.value.reason) == (422, "invalid-challenge")


async def test_the_jail_signs_only_peer_challenges_under_that_kind(pair: Pair) -> None:
    challenge = PeerChallenge.fresh("operator", str(pair.a.id), str(pair.b.id),
                                    pair.session_id, secrets.token_bytes(32))
    for data in (secrets.token_bytes(32), challenge.signable() + b"\n",
                 challenge.signable().replace(b"v1", b"v2")):
        with pytest.raises(JailRefused):
            await pair.jails[1].sign("peer_challenge", data)
    with pytest.raises(JailRefused):  # and a challenge is no other structure
        await pair.jails[1].sign("entry_hash", challenge.signable())


async def test_the_operator_asks_for_a_proof_and_reads_metrics_through_the_admin_api(
    pair: Pair,
) -> None:
    admin = create_admin_app(pair.a.app, "k" * 43)
    install_admin_hooks(admin, pair.a.services.modules)
    client = admin.test_client()
    bearer = {"Authorization": "Bearer " + "k" * 43}
    reply = await client.post("/admin/v1/authentication/challenge", headers=bearer,
                              json={"peer": str(pair.b.id)[:8], "purpose": "operator"})
    assert reply.status_code == 200, await reply.get_data()
    body = await reply.get_json()
    assert (body["peer"], body["session_id"], body["purpose"]) == (
        pair.b.id, pair.session_id, "operator")
    assert (await client.post("/admin/v1/authentication/challenge",
                              json={"peer": str(pair.b.id)})).status_code == 401
    metrics = await client.get("/admin/v1/metrics", headers=bearer)
    assert metrics.status_code == 200
    text = (await metrics.get_data()).decode()
    assert 'openred_peer_authentications_total{result="ok",role="challenger"} 1.0' in text
    assert (await client.get("/admin/v1/metrics")).status_code == 401


async def test_a_peer_has_a_budget_of_proofs_and_another_peer_is_not_charged(
    pair: Pair, tmp_path: Path,
) -> None:
    """Each ``authentication/prove`` costs the responder a signature in its jail and logs
    nothing: past a peer's budget (``OPENRED_PEER_PROOFS_PER_MINUTE``, 60 by default) the
    next is refused 429 ``too-many-proofs`` with Retry-After before the jail is asked, as
    messaging refuses messages past a peer's budget; another peer keeps its own budget, and
    the budget refills."""
    world = pair.world
    c = await world.b_server.enter_async_context(serve_node(
        "c", pair.jails[2], tmp_path / "c", world.directory.key, world.directory_url,
        modules=MODULES))
    c_to_b = World(c, pair.b, world.directory, world.pusher, pair.jails, world.directory_url,
                   world.b_server)
    c_session = (await c.services.connect(await granted(c_to_b))).session_id
    signed: list[bytes] = []
    b_jail = pair.auth(pair.b).jail
    original_sign = b_jail.sign

    async def counting_sign(kind: str, data: bytes) -> bytes:
        if kind == "peer_challenge":
            signed.append(data)
        return bytes(await original_sign(kind, data))

    b_jail.sign = counting_sign  # type: ignore[method-assign]
    try:
        # 60 at once, and one more per second since the first (the budget refills evenly).
        started = time.monotonic()
        refused: NodeRefused | None = None
        while refused is None and len(signed) < 200:
            before = len(signed)
            try:
                await pair.prove()
            except NodeRefused as exc:
                refused = exc
                assert len(signed) == before  # the refused one never reached B's jail
        elapsed = time.monotonic() - started
        assert refused is not None, "no prove was ever refused"
        assert (refused.status, refused.reason) == (429, "too-many-proofs")
        assert 60 <= len(signed) <= 60 + elapsed + 1, (len(signed), elapsed)
        wait = refused.retry_after
        assert wait is not None and 1 <= wait <= 2, wait
        assert len(await pair.logged(pair.b)) == 0  # B logged nothing, for none of them
        count = len(signed)
        # C is another peer of B's: its budget is its own.
        svc = c.services
        peer = await svc.book.peer(str(pair.b.id))
        assert peer is not None
        proof = await pair.auth(c).authenticate(
            c_session, "operator", transport=svc._p2p_transport(peer.api_url), now=svc.now)
        assert proof.peer == pair.b.id
        # The budget refills: one proof's worth after Retry-After.
        await asyncio.sleep(wait + 0.1)
        await pair.prove()
        assert len(signed) == count + 2  # C's, then A's again
        b = await scrape(pair.b)
        assert b[("openred_http_requests_total", (("method", "POST"),
                  ("route", "/api/v3/p2p/<module>/<action>"), ("status", "429")))] == 1
    finally:
        del b_jail.sign
        await world.b_server.aclose()
