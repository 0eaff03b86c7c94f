"""Token manager: receiving grants through real jails and stores, and the pure decisions."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from openred.crypto.grants import mint_tokens, seal_token
from openred.crypto.identity import BoxKey, b64url, from_b64url
from openred.errors import ConcurrencyConflict, NodeRefused
from openred.node import events as ev
from openred.node.tokens import (
    UNKNOWN,
    HeldCheckpoint,
    PeerInfo,
    ReceiveToken,
    Refusal,
    TokenState,
    TokenStatus,
    decide_expiry,
    decide_receive,
)
from tests.node.world import NOW, Directory, Node, transport_to


async def refused(coro: Any, status: int, reason: str) -> None:
    with pytest.raises(NodeRefused) as info:
        await coro
    assert (info.value.status, info.value.reason) == (status, reason)


async def test_both_parties_store_their_sealed_token_as_it_arrived(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant, for_a, for_b = await directory.pair(a, b)
    assert await a.tokens.receive(for_a, NOW) == {"grant_id": grant.grant_id,
                                                  "status": "received"}
    assert await b.tokens.receive(for_b, NOW) == {"grant_id": grant.grant_id,
                                                  "status": "received"}
    state = await b.book.token_state(grant.grant_id)
    assert state.status is TokenStatus.RECEIVED and state.token is not None
    assert b64url(state.token.sealed_token) == for_b["sealed_token"]
    assert state.token.role == "responder" and state.token.peer == a.id
    assert (await a.book.token_state(grant.grant_id)).token.role == "initiator"  # type: ignore[union-attr]
    assert await b.book.peer(str(a.id)) == a.info()
    held = await b.book.directory_checkpoint()
    assert held == HeldCheckpoint(f"openred/{directory.key.node_id}", 2, for_b["checkpoint"])
    assert await b.types() == ["LogOpened", ev.TOKEN_RECEIVED, ev.PEER_DISCOVERED]


async def test_a_delivery_is_idempotent_by_grant_id(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    _, _, for_b = await directory.pair(a, b)
    await b.tokens.receive(for_b, NOW)
    size = b.store.head.size
    assert (await b.tokens.receive(for_b, NOW + 1))["status"] == "duplicate"
    assert b.store.head.size == size
    # The same grant id with another token is a conflict, and changes nothing either.
    other = dict(for_b, sealed_token=b64url(bytes(seal_token(os.urandom(32),
                                                             BoxKey(b.keys.box_key.raw)))))
    await refused(b.tokens.receive(other, NOW), 409, "grant-conflict")
    assert b.store.head.size == size


@pytest.mark.parametrize(("mutate", "status", "reason"), [
    (lambda d: d.pop("entry"), 400, "malformed-delivery"),
    (lambda d: d.update(extra=1), 400, "malformed-delivery"),
    (lambda d: d.update(grant="x"), 400, "malformed-delivery"),
    (lambda d: d["grant"].update(v=2), 422, "invalid-grant"),
    (lambda d: d["grant"].pop("suite"), 422, "invalid-grant"),
    (lambda d: d.update(grant_signature="!!"), 400, "malformed-delivery"),
    (lambda d: d.update(grant_signature=b64url(bytes(64))), 401, "bad-grant-signature"),
    (lambda d: d["grant"].update(expires_at=d["grant"]["expires_at"] + 1), 401,
     "bad-grant-signature"),
    (lambda d: d.update(sealed_token=b64url(bytes(10))), 422, "invalid-sealed-token"),
])
async def test_malformed_tampered_and_forged_deliveries_are_refused_with_nothing_logged(
    nodes: tuple[Node, Node, Node], directory: Directory, mutate: Any, status: int,
    reason: str,
) -> None:
    a, b, _ = nodes
    _, _, for_b = await directory.pair(a, b)
    mutate(for_b)
    await refused(b.tokens.receive(for_b, NOW), status, reason)
    assert await b.types() == ["LogOpened"]


async def test_a_grant_for_other_nodes_is_refused(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, c = nodes
    _, for_a, _ = await directory.pair(a, b)
    await refused(c.tokens.receive(for_a, NOW), 403, "not-a-party")
    assert await c.types() == ["LogOpened"]


async def test_a_token_sealed_to_another_key_is_refused_by_the_jail(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, c = nodes
    grant, for_a, _ = await directory.pair(a, b)
    token_a, _ = mint_tokens(grant, os.urandom(32))
    wrong = dict(for_a, sealed_token=b64url(seal_token(token_a, BoxKey(c.keys.box_key.raw))))
    await refused(a.tokens.receive(wrong, NOW), 422, "invalid-sealed-token")
    assert await a.types() == ["LogOpened"]


async def test_an_expired_grant_is_refused(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    _, _, for_b = await directory.pair(a, b, issued_at=NOW - 400)
    await refused(b.tokens.receive(for_b, NOW), 410, "grant-expired")
    assert await b.types() == ["LogOpened"]


def flip(text: str) -> str:
    raw = bytearray(from_b64url(text))
    raw[0] ^= 1
    return b64url(bytes(raw))


@pytest.mark.parametrize(("attack", "detail"), [
    # The grant is not in the log: the entry delivered is another grant's.
    ("other_entry", "does not name exactly this grant"),
    # The entry was altered after the directory hashed it.
    ("entry_payload", "do not hash to its entry_hash"),
    # The inclusion proof does not lead to the checkpoint's root.
    ("proof_hash", "inclusion proof"),
    ("proof_size", "inclusion proof has wrong size"),
    # The checkpoint is not signed by the pinned directory key.
    ("checkpoint_key", "signature"),
    # The peer record is signed by a key other than the one its node id names.
    ("record_signature", "signature"),
    # The peer record is another node's, or not the version the grant was minted for.
    ("record_of_c", "not the other party's"),
    ("record_version", "not the one the grant was minted for"),
    ("record_malformed", "malformed"),
])
async def test_deliveries_whose_records_or_log_proofs_do_not_verify_are_refused(
    nodes: tuple[Node, Node, Node], directory: Directory, attack: str, detail: str,
) -> None:
    from openred.crypto.records import NodeRecord, sign_record

    a, b, c = nodes
    grant, _, for_b = await directory.pair(a, b)
    if attack == "other_entry":
        _, _, other = await directory.pair(a, b)
        for_b.update(entry=other["entry"], inclusion_proof=other["inclusion_proof"],
                     checkpoint=other["checkpoint"])
    elif attack == "entry_payload":
        payload = json.loads(from_b64url(for_b["entry"]["payload"]))
        payload["expires_at"] += 1
        for_b["entry"]["payload"] = b64url(json.dumps(payload).encode())
    elif attack == "proof_hash":
        await directory.pair(a, b)  # a larger tree, so the proof has hashes
        for_b.update(await directory.logged(grant))
        for_b["inclusion_proof"]["hashes"][0] = flip(for_b["inclusion_proof"]["hashes"][0])
    elif attack == "proof_size":
        for_b["inclusion_proof"]["tree_size"] += 1
    elif attack == "checkpoint_key":
        impostor = await Directory.open(directory.store.path.parent.parent / "impostor")
        try:
            for_b["checkpoint"] = (await impostor.store.checkpoint()).decode()
        finally:
            await impostor.close()
    elif attack == "record_signature":
        for_b["peer_record"]["signature"] = flip(for_b["peer_record"]["signature"])
    elif attack == "record_of_c":
        for_b["peer_record"] = c.record.to_wire()
    elif attack == "record_version":
        newer = await sign_record(NodeRecord.build(
            sign_key=a.keys.sign_key, box_key=a.keys.box_key, api_url="https://a.example:1",
            issued_at=NOW, version=2), a.jail.sign)
        for_b["peer_record"] = newer.to_wire()
    elif attack == "record_malformed":
        for_b["peer_record"] = {"record": {}, "signature": for_b["peer_record"]["signature"]}
    with pytest.raises(NodeRefused) as info:
        await b.tokens.receive(for_b, NOW)
    assert (info.value.status, info.value.reason) == (422, "unverifiable-delivery")
    assert detail in info.value.detail
    assert await b.types() == ["LogOpened"]


async def test_a_checkpoint_consistent_with_the_one_held_is_accepted_and_kept(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    _, _, first = await directory.pair(a, b)
    _, _, second = await directory.pair(a, b)
    _, _, third = await directory.pair(a, b)
    await b.tokens.receive(second, NOW)
    # An older checkpoint (proof from its size to the newest) and a newer one both verify.
    await b.tokens.receive(first, NOW)
    await b.tokens.receive(third, NOW)
    held = await b.book.directory_checkpoint()
    assert held is not None and held.note == third["checkpoint"]


async def test_a_directory_moving_on_during_the_check_does_not_fail_the_delivery(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    """Every grant a directory mints moves its newest checkpoint; a node's check of a delivery
    against the checkpoint it holds must not need it to stand still (a busy directory)."""
    a, b, c = nodes
    _, _, first = await directory.pair(a, b)
    await b.tokens.receive(first, NOW)
    _, _, second = await directory.pair(a, b)
    await directory.pair(a, c)  # the newest checkpoint is beyond the delivery's
    fetch = b.checks.fetch

    async def moving(*args: int) -> tuple[bytes, list[bytes]]:
        await directory.pair(a, c)  # another grant, minted while b checks
        return await fetch(*args)

    b.checks.fetch = moving
    await b.tokens.receive(second, NOW)
    held = await b.book.directory_checkpoint()
    assert held is not None and held.note == second["checkpoint"]
    assert (await b.book.token_state(second["grant"]["grant_id"])).status is TokenStatus.RECEIVED


async def test_a_fork_is_refused_and_kept_as_evidence(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    _, _, for_b = await directory.pair(a, b)
    await b.tokens.receive(for_b, NOW)
    size = b.store.head.size
    # The same key signs another history of the same size: two roots for one size.
    _, _, forked = await directory.pair(a, b, log=directory.fork)
    await refused(b.tokens.receive(forked, NOW), 409, "directory-fork")
    assert b.store.head.size == size + 1
    [evidence] = await b.store.read_stream("directory")
    assert evidence.type == ev.DIRECTORY_FORK_DETECTED
    assert evidence.payload["held_checkpoint"] == for_b["checkpoint"]
    assert evidence.payload["received_checkpoint"] == forked["checkpoint"]
    assert (await b.book.token_state(forked["grant"]["grant_id"])).status is TokenStatus.UNKNOWN


async def test_a_longer_fork_is_found_through_the_consistency_proof(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    _, _, for_b = await directory.pair(a, b)
    await b.tokens.receive(for_b, NOW)
    for _ in range(3):
        await directory.pair(a, b, log=directory.fork)
    _, _, forked = await directory.pair(a, b, log=directory.fork)
    directory.serving = directory.fork  # it answers checkpoint requests from the fork too
    await refused(b.tokens.receive(forked, NOW), 409, "directory-fork")
    assert (await b.store.read_stream("directory"))[0].type == ev.DIRECTORY_FORK_DETECTED


async def test_unused_tokens_expire_and_stay_told_apart_from_unknown_and_used(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    grant, _, for_b = await directory.pair(a, b)
    await b.tokens.receive(for_b, NOW)
    assert await b.tokens.expire(NOW + 100) == 0
    assert await b.tokens.expire(NOW + 300) == 1
    state = await b.book.token_state(grant.grant_id)
    assert state.status is TokenStatus.EXPIRED
    assert await b.book.count_tokens() == 0  # cleaned from the tokens projection
    assert (await b.book.token_state(b64url(os.urandom(16)))).status is TokenStatus.UNKNOWN
    # A redelivery of an expired grant changes nothing.
    assert (await b.tokens.receive(for_b, NOW + 1))["status"] == "duplicate"


# -- the pure decisions --

def command(directory: Directory, a: Node, b: Node, size: int = 5) -> ReceiveToken:
    grant = directory.grant(a, b)
    return ReceiveToken(grant, bytes(64), bytes(80), a.info(),
                        HeldCheckpoint("o", size, f"note {size}"))


async def test_decide_receive_keeps_only_a_newer_checkpoint(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    cmd = command(directory, a, b, size=5)
    newer = decide_receive(UNKNOWN, cmd, me=b.id, known_peer=a.info(),
                           held=HeldCheckpoint("o", 4, "n4"), now=NOW)
    older = decide_receive(UNKNOWN, cmd, me=b.id, known_peer=None,
                           held=HeldCheckpoint("o", 9, "n9"), now=NOW)
    assert isinstance(newer, list) and isinstance(older, list)
    assert newer[0].payload["directory_checkpoint"]["size"] == 5
    assert [e.type for e in newer] == [ev.TOKEN_RECEIVED]  # peer already known
    assert "directory_checkpoint" not in older[0].payload
    assert [e.type for e in older] == [ev.TOKEN_RECEIVED, ev.PEER_DISCOVERED]
    assert decide_receive(UNKNOWN, cmd, me=b.id, known_peer=None, held=None,
                          now=cmd.grant.expires_at) == Refusal(
        410, "grant-expired", "the grant expired before it arrived")


async def test_decide_expiry_only_for_received_tokens_past_expiry(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    cmd = command(directory, a, b)
    from openred.node.tokens import HeldToken

    held = TokenState(TokenStatus.RECEIVED, HeldToken(cmd.grant, bytes(64), bytes(80),
                                                      "responder"), 1)
    assert decide_expiry([held], cmd.grant.expires_at - 1) == []
    [event] = decide_expiry([held, TokenState(TokenStatus.CONSUMED, version=2)],
                            cmd.grant.expires_at)
    assert event.type == ev.TOKEN_EXPIRED and event.expected_version == 1
    assert held.at(cmd.grant.expires_at) is TokenStatus.EXPIRED


async def test_a_token_consumed_while_expiry_runs_stays_consumed(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    from openred.node.tokens import decide_expiry

    a, b, _ = nodes
    grant, for_a, for_b = await directory.pair(a, b)
    await a.tokens.receive(for_a, NOW)
    await b.tokens.receive(for_b, NOW)
    stale = await b.book.received_tokens()  # what an expiry run read before the handshake
    await a.handshakes.connect(grant.grant_id, transport_to(b, NOW), NOW)
    [late] = decide_expiry(stale, grant.expires_at)
    with pytest.raises(ConcurrencyConflict):
        await b.store.append_one(late)
    assert await b.tokens.expire(grant.expires_at) == 0
    assert (await b.book.token_state(grant.grant_id)).status is TokenStatus.CONSUMED


async def test_decide_receive_never_replaces_a_record_by_an_older_one(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    from dataclasses import replace

    a, b, _ = nodes
    cmd = command(directory, a, b)
    held = replace(a.info(), api_url="https://a.example/now", version=5)

    def decided(record: PeerInfo) -> list[str]:
        events = decide_receive(UNKNOWN, replace(cmd, peer=record), me=b.id, known_peer=held,
                                held=None, now=NOW, peer_stream_version=3)
        assert isinstance(events, list)
        assert all(e.expected_version == 3 for e in events if e.type == ev.PEER_DISCOVERED)
        return [e.type for e in events]

    assert decided(replace(a.info(), version=4)) == [ev.TOKEN_RECEIVED]  # older: kept out
    assert decided(replace(a.info(), version=5)) == [ev.TOKEN_RECEIVED]  # same version
    assert decided(replace(held, version=9)) == [ev.TOKEN_RECEIVED]  # says the same
    assert decided(replace(a.info(), version=6)) == [ev.TOKEN_RECEIVED, ev.PEER_DISCOVERED]
