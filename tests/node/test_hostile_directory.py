"""A compromised directory against served nodes: what it signs and pushes must not undo what a
node already verified.

The directory's key signs grants and checkpoints, so a compromised directory can mint a grant
naming any record a node ever signed and push it with a checkpoint of any history it signed.
A node must still never go back to an older record of a peer (its old URL, its old keys), nor
hold two checkpoints of forked histories without noticing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from quart import Quart, Response

from openred.crypto.client import JailClient
from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request
from openred.crypto.records import NodeRecord, SignedNodeRecord, sign_record
from openred.crypto.transparency import InclusionProof
from openred.node import events as ev
from openred.web.client import HttpClient, Signer
from tests.node.test_app import (
    World,
    directory_app,
    granted,
    now,
    problem,
    push,
    serve_node,
)
from tests.node.test_fastpath import world
from tests.node.world import Directory
from tests.servers import serve_in_loop

__all__ = ["world"]


async def signed_by(world: World, node: str, api_url: str, version: int) -> SignedNodeRecord:
    """A record node ``node`` ("a" or "b") really signed (in its jail): this URL and version."""
    served, jail = (world.a, world.jails[0]) if node == "a" else (world.b, world.jails[1])
    keys = served.services.keys
    return await sign_record(NodeRecord.build(
        sign_key=keys.sign_key, box_key=keys.box_key, api_url=api_url, modules=("messaging",),
        issued_at=now(), version=version), jail.sign)


async def test_a_grant_naming_an_older_record_of_the_peer_does_not_roll_it_back(
    world: World,
) -> None:
    old_url = "http://127.0.0.1:9/moved-away"  # where A was once (version 1)
    old = await signed_by(world, "a", old_url, 1)
    world.a.record = await signed_by(world, "a", world.a.url, 2)  # where A is now
    _, _, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, for_b)).status == 200
    peer = await world.b.services.book.peer(str(world.a.id))
    assert peer is not None and peer.api_url == world.a.url
    # The directory mints a grant for A's version 1 record and pushes it to B.
    world.a.record = old
    _, _, stale = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                 issued_at=now())
    reply = await push(world, world.b, stale)
    # The grant itself is genuine and logged; only the record it names is behind.
    assert reply.status == 200, reply.body
    peer = await world.b.services.book.peer(str(world.a.id))
    assert peer is not None and peer.api_url == world.a.url
    assert world.b.services.peer_urls is not None
    world.b.services.peer_urls.changing(str(world.a.id))
    assert world.b.services.peer_urls.api_url(str(world.a.id)) == world.a.url
    discovered = await world.b.services.store.read_stream(ev.node_stream(str(world.a.id)))
    assert [(e.type, e.payload["api_url"], e.payload["version"]) for e in discovered] == [
        (ev.PEER_DISCOVERED, world.a.url, 2)]
    # A newer record than the one held still replaces it.
    world.a.record = await signed_by(world, "a", old_url + "/back", 3)
    _, _, newer = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, newer)).status == 200
    peer = await world.b.services.book.peer(str(world.a.id))
    assert peer is not None and peer.api_url == old_url + "/back"


async def test_checkpoints_of_two_forked_histories_pushed_at_once_are_not_both_held(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each delivery is checked against the checkpoint held when it arrived: two pushed at
    once, from two histories the directory's key signed, were each consistent with that one
    (none yet, here) and were both accepted; the node then held whichever was logged last."""
    book = world.b.services.book
    read = book.directory_checkpoint
    both_read = asyncio.Event()
    readers = 0

    async def held_when_both_arrived(*args: Any) -> Any:
        nonlocal readers
        held = await read(*args)
        readers += 1
        if readers == 2:
            both_read.set()
        await asyncio.wait_for(both_read.wait(), 5)
        return held

    monkeypatch.setattr(book, "directory_checkpoint", held_when_both_arrived)
    directory = world.directory
    _, _, honest = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                        issued_at=now())
    _, _, forked = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                        issued_at=now(), log=directory.fork)
    replies = await asyncio.gather(push(world, world.b, honest), push(world, world.b, forked))
    monkeypatch.setattr(book, "directory_checkpoint", read)
    assert sorted(r.status for r in replies) == [200, 409], [r.body for r in replies]
    refused = next(r for r in replies if r.status == 409)
    problem(refused, 409, "directory-fork")
    [evidence] = await world.b.services.store.read_stream("directory")
    assert evidence.type == ev.DIRECTORY_FORK_DETECTED
    held = await read()
    assert held is not None and evidence.payload["held_checkpoint"] == held.note
    assert {evidence.payload["received_checkpoint"], held.note} == {
        honest["checkpoint"], forked["checkpoint"]}


@pytest.mark.parametrize("answer", [
    [], "checkpoint", {"checkpoint": None}, {"consistency_proof": []},
    {"checkpoint": "NOTE", "consistency_proof": [1]},
    {"checkpoint": "NOTE", "consistency_proof": ["!!not base64url"]},
    {"checkpoint": "NOTE", "consistency_proof": {"0": "AAAA"}},
    {"checkpoint": "NOTE", "consistency_proof": [None, []]},
    {"checkpoint": "NOTE\udc80", "consistency_proof": []},
    # Hashes that are not 32 bytes, or more of them than any proof has (tattack): a
    # malformed answer, not a proof that fails; it was taken for a fork and logged as one.
    {"checkpoint": "NOTE", "consistency_proof": ["AAAA"]},
    {"checkpoint": "NOTE", "consistency_proof": ["A" * 43 + "A" * 43]},
    {"checkpoint": "NOTE", "consistency_proof": ["A" * 43] * 10_000},
])
async def test_a_malformed_checkpoint_answer_of_the_directory_is_a_problem_not_a_500(
    world: World, answer: Any,
) -> None:
    """When a delivery's checkpoint is of another size than the one held, the node asks the
    directory for a consistency proof: whatever it answers, the push gets a problem (502,
    the directory's answer is unusable) and nothing is logged."""
    directory = world.directory
    _, _, first = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                       issued_at=now())
    assert (await push(world, world.b, first)).status == 200
    _, _, second = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                        issued_at=now())
    note = second["checkpoint"]
    hostile = Quart("hostile-directory")

    @hostile.get("/api/v3/directory/checkpoint")
    async def checkpoint() -> Any:
        body = json.dumps(answer).replace("NOTE", json.dumps(note)[1:-1])
        return Response(body, content_type="application/json")

    settings = world.b.services.settings
    honest_url = settings.directory_url
    size = world.b.services.store.head.size
    async with serve_in_loop(hostile) as url:
        object.__setattr__(settings, "directory_url", url)  # the node's settings are frozen
        try:
            reply = await push(world, world.b, second)
        finally:
            object.__setattr__(settings, "directory_url", honest_url)
    problem(reply, 502, "peer-unreachable")
    assert world.b.services.store.head.size == size


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every leaf (and of every object and list) in a JSON value."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += leaves(item, (*path, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    copy = json.loads(json.dumps(value))
    holder = copy
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = new
    return copy


async def test_every_field_of_a_delivery_made_odd_gets_a_problem_not_a_500(
    world: World,
) -> None:
    """Each field of a genuine delivery replaced by text with a lone surrogate (which JSON
    may carry but UTF-8 cannot), a number, null, a list or an object."""
    _, _, first = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, first)).status == 200
    _, _, delivery = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                issued_at=now())
    size = world.b.services.store.head.size
    failures: list[tuple[Any, ...]] = []
    for path in leaves(delivery):
        for new in ("\ud800", f"{json.dumps(delivery)[:8]}\udfff", -1, 2**64, None, [], {}):
            body = replaced(delivery, path, new)
            if body == delivery:
                continue
            reply = await world.pusher.request(  # JSON escapes what UTF-8 cannot carry
                "POST", f"{world.b.url}/api/v3/tokens/receive",
                body=json.dumps(body).encode(), signed=True)
            if not 400 <= reply.status < 500 or not reply.headers["Content-Type"].startswith(
                    "application/problem+json"):
                failures.append((path, new, reply.status))
    assert failures == [], "\n".join(map(repr, failures))
    assert world.b.services.store.head.size == size
    assert (await push(world, world.b, delivery)).status == 200


Captured = tuple[str, bytes, dict[str, str]]


async def captured_push(directory: Directory, node_url: str, body: Any) -> Captured:
    """A push as the directory signs it (URL, body, headers), kept to be sent again."""
    url, data = f"{node_url}/api/v3/tokens/receive", json.dumps(body).encode()

    async def sign(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    signed = await sign_request(HttpRequest("POST", url, {"Content-Type": "application/json"},
                                            data),
                                keyid="directory", sign_base=sign, now=now(), nonce=new_nonce())
    return url, data, dict(signed.headers)


async def send_again(captured: Captured) -> tuple[int, dict[str, Any]]:
    url, data, headers = captured
    async with aiohttp.ClientSession() as session, session.post(
            url, data=data, headers=headers) as reply:
        return reply.status, await reply.json(content_type=None)


async def test_a_push_captured_before_a_restart_is_refused_after_it(world: World) -> None:
    """The node's nonce cache started empty, so a push signed and answered just before a
    restart verified again after it, inside the signature window. A clean stop saves the live
    nonces and the next start knows them again (a crash: see tests/node/test_crash.py)."""
    _, _, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    captured = await captured_push(world.directory, world.b.url, for_b)
    assert (await send_again(captured))[0] == 200
    status, answer = await send_again(captured)
    assert status == 401 and "replayed" in answer["detail"], answer
    port = int(world.b.url.rsplit(":", 1)[1])
    await world.b_server.aclose()
    async with serve_node("b", world.jails[1], world.b.data, world.directory.key,
                          world.directory_url, port=port) as b2:
        status, answer = await send_again(captured)
        assert status == 401, answer
        assert answer["type"] == "urn:openred:problem:bad-signature"
        assert "replayed" in answer["detail"]
        # The same delivery signed again is the directory's own retry: a duplicate.
        reply = await push(world, b2, for_b)
        assert reply.status == 200 and reply.json()["status"] == "duplicate", reply.body


async def test_a_grant_naming_another_record_of_this_node_is_refused(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    """A compromised directory can name any record a node ever signed (an old URL someone else
    now answers at, a box key rotated away after a leak) in the grant it pushes to both
    parties; the peer, if it holds no newer record, takes it. The node itself refuses its half
    unless the grant names its current record, so no session is opened on that grant."""
    current = world.b.record
    world.b.record = await signed_by(world, "b", "http://127.0.0.1:9/moved-away",
                                     current.record.version)
    _, _, stale = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    size = world.b.services.store.head.size
    with caplog.at_level(logging.WARNING, logger="openred.node"):
        reply = await push(world, world.b, stale)
    problem(reply, 409, "outdated-record")
    assert world.b.services.store.head.size == size
    assert stale["grant"]["grant_id"] in caplog.text
    world.b.record = current
    _, _, fresh = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, fresh)).status == 200


async def test_a_node_restarted_with_a_new_record_refuses_grants_for_the_one_before(
    world: World,
) -> None:
    """The honest race (docs/decisions.md): B restarts with other settings, so it signs a new
    record before it serves; a grant the directory minted for B's previous record (before
    B registered the new one) is refused like a hostile one, and the initiator asks again."""
    before = world.b.record
    port = int(world.b.url.rsplit(":", 1)[1])
    await world.b_server.aclose()
    async with serve_node("b", world.jails[1], world.b.data, world.directory.key,
                          world.directory_url, port=port, modules=("messaging",)) as b2:
        assert b2.record.record.version == before.record.version + 1
        world.b = b2
        b2.record = before  # what the directory still holds
        _, _, late = await world.directory.pair(world.a, b2,  # type: ignore[arg-type]
                                                issued_at=now())
        problem(await push(world, b2, late), 409, "outdated-record")
        b2.record = b2.services.own_record.signed
        _, _, again = await world.directory.pair(world.a, b2,  # type: ignore[arg-type]
                                                 issued_at=now())
        assert (await push(world, b2, again)).status == 200


async def test_a_503_tells_the_client_nothing_of_the_node_s_insides(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A jail or store failure was answered with its own text (a socket path, a database
    name, an exception's words); the operator reads it in the log, the client gets a generic
    detail."""
    _, _, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    gone = JailClient(tmp_path / "jail-gone.sock", timeout=2, reconnect_timeout=0.2)  # down
    monkeypatch.setattr(world.b.services.tokens, "jail", gone)
    with caplog.at_level(logging.WARNING, logger="openred.web"):
        reply = await push(world, world.b, for_b)
    await gone.close()
    problem(reply, 503, "signer-unavailable")
    assert "jail-gone" not in reply.body.decode() and str(tmp_path) not in reply.body.decode()
    assert "jail-gone.sock" in caplog.text


async def test_a_grant_for_another_peer_does_not_connect_the_operator_elsewhere(
    world: World,
) -> None:
    """``openred connect C``: the node asks the directory for a grant to C and shakes hands on
    the grant id the directory answers. A compromised directory answered the id of a grant
    this node holds with another node (B, pushed to both), and the node opened a session with
    B for the operator who asked for C (201, ``peer`` B). The grant is now checked to be this
    node's, as initiator, with the peer asked for (502 otherwise, the grant left unused)."""
    from openred.node.admin import create_admin_app

    grant_id = await granted(world)  # A → B, both halves delivered
    asked = "C" * 32
    hostile = Quart("hostile-directory")

    @hostile.post("/api/v3/tokens/request-connection")
    async def request_connection() -> Any:
        return Response(json.dumps({"grant_id": grant_id, "status": "delivered"}), 201,
                        content_type="application/json")

    settings = world.a.services.settings
    honest_url = settings.directory_url
    admin = create_admin_app(world.a.app, "k" * 43)
    async with serve_in_loop(hostile) as url:
        object.__setattr__(settings, "directory_url", url)  # the node's settings are frozen
        try:
            reply = await admin.test_client().post(
                "/admin/v1/connect", json={"peer": asked},
                headers={"Authorization": "Bearer " + "k" * 43})
        finally:
            object.__setattr__(settings, "directory_url", honest_url)
    body = await reply.get_json()
    assert reply.status_code == 502, body
    assert body["type"].endswith(":wrong-grant")
    assert await world.a.services.book.sessions() == []
    assert (await world.a.services.book.token_state(grant_id)).status.value == "received"


async def test_fork_evidence_is_kept_once_per_pair_of_checkpoints_and_bounded(
    world: World,
) -> None:
    """A forking directory pushing the same forked delivery again, or forked deliveries
    without end, grew the node's log by an event carrying two notes per push (tattack).
    Each pair of checkpoints is kept once and at most MAX_FORK_EVIDENCE in all; every such
    push is still refused, and the node takes an honest grant afterwards."""
    from openred.node.token_service import MAX_FORK_EVIDENCE

    directory = world.directory
    _, _, honest = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                        issued_at=now())
    assert (await push(world, world.b, honest)).status == 200
    directory.serving = directory.fork  # its proofs are of the fork too
    try:
        _, _, forked = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                            issued_at=now(), log=directory.fork)
        for _ in range(3):
            problem(await push(world, world.b, forked), 409, "directory-fork")
        store = world.b.services.store
        assert len(await store.read_stream("directory")) == 1
        for _ in range(MAX_FORK_EVIDENCE + 3):
            _, _, other = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                               issued_at=now(), log=directory.fork)
            problem(await push(world, world.b, other), 409, "directory-fork")
        evidence = await store.read_stream("directory")
        assert len(evidence) == MAX_FORK_EVIDENCE
        assert len({e.payload["received_checkpoint"] for e in evidence}) == MAX_FORK_EVIDENCE
    finally:
        directory.serving = directory.store
    # The honest log moves on; the node still takes its grants.
    _, _, later = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                       issued_at=now())
    assert (await push(world, world.b, later)).status == 200


async def test_the_checkpoint_held_never_goes_back_when_two_deliveries_log_out_of_order(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two grants pushed at once, with checkpoints X < Y (both newer than the one held): X's
    delivery decided first (so its TokenReceived carries X), Y's checked against X (carries
    Y), and Y's appended first. The projection kept the last one logged: X, so the node held
    an older checkpoint than one it had accepted a grant on — after a restart it took a
    history without Y's grant (tattack)."""
    directory, tokens = world.directory, world.b.services.tokens
    _, _, first = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                       issued_at=now())
    assert (await push(world, world.b, first)).status == 200
    gx, _, x = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                    issued_at=now())
    gy, _, y = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                    issued_at=now())
    x_size, y_size = x["inclusion_proof"]["tree_size"], y["inclusion_proof"]["tree_size"]
    assert x_size < y_size
    verify, append = tokens.checks.verify, tokens.store.append
    y_logged = asyncio.Event()

    async def x_decides_first(delivery: Any, grant: Any, peer: Any, held: Any) -> Any:
        if grant.grant_id == gy.grant_id and (held is None or held.size < x_size):
            async def x_held() -> None:
                while tokens._held is None or tokens._held.size != x_size:
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(x_held(), 5)
        return await verify(delivery, grant, peer, held)

    async def y_logged_first(events: Any, *args: Any, **kw: Any) -> Any:
        streams = {e.stream for e in events}
        if ev.grant_stream(gx.grant_id) in streams:
            await asyncio.wait_for(y_logged.wait(), 5)
        done = await append(events, *args, **kw)
        if ev.grant_stream(gy.grant_id) in streams:
            y_logged.set()
        return done

    monkeypatch.setattr(tokens.checks, "verify", x_decides_first)
    monkeypatch.setattr(tokens.store, "append", y_logged_first)
    replies = await asyncio.gather(push(world, world.b, x), push(world, world.b, y))
    assert [r.status for r in replies] == [200, 200], [r.body for r in replies]
    held = await world.b.services.book.directory_checkpoint()
    assert held is not None and held.size == y_size, (held, x_size, y_size)


async def test_a_grant_accepted_after_an_unlogged_newer_checkpoint_still_pins_its_own(
    world: World,
) -> None:
    """A directory re-pushes a grant the node already holds with a newer checkpoint X (a
    duplicate: nothing logged, X held in memory only), then pushes a grant on checkpoint Y,
    older than X, newer than the one logged. Y's TokenReceived did not carry Y (it did not
    advance past X), so after a restart the node held the checkpoint before Y and would take
    a history hiding the grant it accepted on Y (tattack)."""
    directory, book = world.directory, world.b.services.book
    _, _, first = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                       issued_at=now())
    assert (await push(world, world.b, first)).status == 200
    logged = await book.directory_checkpoint()
    assert logged is not None
    _, _, on_y = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                      issued_at=now())
    await directory.pair(world.a, world.b, issued_at=now())  # type: ignore[arg-type]
    # The first grant again, proven in the directory's newest checkpoint X.
    seq = first["entry"]["seq"]
    size, hashes = await directory.store.inclusion_proof(seq)
    again = {**first, "checkpoint": (await directory.store.checkpoint()).decode(),
             "inclusion_proof": InclusionProof(seq - 1, size, tuple(hashes)).to_wire()}
    reply = await push(world, world.b, again)
    assert reply.status == 200 and reply.json()["status"] == "duplicate", reply.body
    y_size = on_y["inclusion_proof"]["tree_size"]
    assert logged.size < y_size < size
    assert (await push(world, world.b, on_y)).status == 200
    held = await book.directory_checkpoint()
    assert held is not None and held.size == y_size, (held, y_size)


async def test_a_node_pinned_to_a_new_directory_key_takes_its_grants(
    world: World, tmp_path: Path,
) -> None:
    """The way out of a compromised directory is a new one, under a new key, that nodes pin
    instead. The node kept comparing every delivery with the largest checkpoint it held of
    any origin — the old directory's, which does not verify under the new key — so it
    refused every grant of the new directory, for good (tattack)."""
    _, _, old = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                           issued_at=now())
    assert (await push(world, world.b, old)).status == 200
    new = await Directory.open(tmp_path / "new-directory")
    port = int(world.b.url.rsplit(":", 1)[1])
    await world.b_server.aclose()

    async def sign_base(base: bytes) -> bytes:
        return bytes(new.signing.sign(base).signature)

    pusher = HttpClient(signer=Signer("directory", sign_base), allow_private=True, attempts=1)
    try:
        async with serve_in_loop(directory_app(new)) as new_url, serve_node(
                "b", world.jails[1], world.b.data, new.key, new_url, port=port) as b2:
            for _ in range(2):  # the first is taken on trust, the second checked against it
                _, _, fresh = await new.pair(world.a, b2,  # type: ignore[arg-type]
                                             issued_at=now())
                reply = await pusher.request("POST", f"{b2.url}/api/v3/tokens/receive",
                                             json_body=fresh, signed=True)
                assert reply.status == 200, reply.body
            held = await b2.services.tokens._held_checkpoint()
            assert held is not None and held.origin == f"openred/{new.key.node_id}"
    finally:
        await pusher.close()
        await new.close()
