"""A node's checks on a pushed grant: in the directory's log, and that log never forked."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from openred.crypto.grants import Grant, new_grant
from openred.crypto.identity import NodeId, SignKey
from openred.crypto.transparency import (
    CONNECTION_GRANTED,
    InclusionProof,
    connection_granted_payload,
    entry_from_wire,
    entry_to_wire,
    verify_directory_checkpoint,
    verify_grant_delivery,
)
from openred.errors import CheckpointError, ForkDetected, TransparencyError
from openred.store.codec import canonical_json
from openred.store.events import EventRegistry, NewEvent, StoredEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore

A = NodeId("a" * 32)
B = NodeId("b" * 32)


def make_grant(issued_at: int = 1_700_000_000) -> Grant:
    return new_grant(A, B, grant_id=secrets.token_bytes(16), issued_at=issued_at,
                     suite="25519_ChaChaPoly_SHA256", initiator_record=b"\x01" * 32,
                     responder_record=b"\x02" * 32)


@dataclass
class Delivery:
    grant: Grant
    entry: StoredEvent
    note: bytes
    proof: InclusionProof


async def open_log(path: Path, signer: InProcessSigner) -> SQLiteEventStore:
    registry = EventRegistry()
    registry.register(CONNECTION_GRANTED)
    registry.register("Filler")
    return await SQLiteEventStore.open(path, signer, registry=registry, checkpoint_every=10**6,
                                       checkpoint_interval=0)


async def grant_in(store: SQLiteEventStore, grant: Grant | None = None) -> Delivery:
    grant = grant or make_grant()
    entry = await store.append_one(NewEvent(f"grant:{grant.grant_id}", CONNECTION_GRANTED,
                                            connection_granted_payload(grant)))
    note = await store.checkpoint()
    size, hashes = await store.inclusion_proof(entry.seq)
    return Delivery(grant, entry, note, InclusionProof(entry.seq - 1, size, tuple(hashes)))


async def filler(store: SQLiteEventStore, n: int) -> None:
    await store.append([NewEvent(f"f:{i}", "Filler", {"i": i}) for i in range(n)])


@pytest.fixture
def signer() -> InProcessSigner:
    return InProcessSigner.generate()


def check(d: Delivery, key: SignKey, **kw: object) -> None:
    verify_grant_delivery(grant=d.grant, entry=d.entry, checkpoint_note=d.note,
                          inclusion_proof=d.proof, directory_key=key, **kw)  # type: ignore[arg-type]


async def test_an_honest_delivery_verifies_and_wire_forms_roundtrip(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    store = await open_log(tmp_path, signer)
    try:
        await filler(store, 5)
        first = await grant_in(store)
        check(first, signer.sign_key)
        await filler(store, 7)
        second = await grant_in(store)
        _, consistency = await store.consistency_proof(first.proof.tree_size)
        # The node holds the first checkpoint; the second extends it.
        check(second, signer.sign_key, held_note=first.note, consistency_proof=consistency)
        entry = entry_from_wire(entry_to_wire(second.entry))
        assert entry == second.entry
        proof = InclusionProof.from_wire(second.proof.to_wire())
        assert proof == second.proof
    finally:
        await store.close()


async def test_a_grant_missing_from_the_log_is_refused(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    store = await open_log(tmp_path, signer)
    try:
        d = await grant_in(store)
        # Another grant presented with this entry: the payload does not name it.
        with pytest.raises(TransparencyError, match="does not name exactly this grant"):
            check(replace(d, grant=make_grant()), signer.sign_key)
        # The entry altered to name the other grant: its hash no longer matches.
        other = make_grant()
        forged = d.entry._replace(payload=canonical_json(connection_granted_payload(other)))
        with pytest.raises(TransparencyError, match="do not hash"):
            check(replace(d, grant=other, entry=forged), signer.sign_key)
        # A wrong inclusion proof.
        bad = replace(d.proof, hashes=(b"\x00" * 32, *d.proof.hashes[1:]))
        if d.proof.hashes:
            with pytest.raises(TransparencyError, match="inclusion proof"):
                check(replace(d, proof=bad), signer.sign_key)
        with pytest.raises(TransparencyError, match="is seq"):
            check(replace(d, proof=replace(d.proof, leaf_index=0)), signer.sign_key)
    finally:
        await store.close()


async def test_a_checkpoint_under_another_key_is_refused(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    store = await open_log(tmp_path, signer)
    try:
        d = await grant_in(store)
        with pytest.raises(CheckpointError):
            check(d, InProcessSigner.generate().sign_key)
        with pytest.raises(CheckpointError):
            verify_directory_checkpoint(d.note.replace(b"\n\n", b"\nx\n\n", 1), signer.sign_key)
    finally:
        await store.close()


async def test_a_directory_that_forks_its_log_is_caught(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    """The directory shows one log to one node and a fork with a secret grant to another."""
    public_dir, secret_dir = tmp_path / "public", tmp_path / "secret"
    public_dir.mkdir()
    store = await open_log(public_dir, signer)
    await filler(store, 4)
    await store.close()
    shutil.copytree(public_dir, secret_dir, dirs_exist_ok=True)
    public = await open_log(public_dir, signer)
    secret = await open_log(secret_dir, signer)
    try:
        # The node saw the public log at a larger size than the fork's.
        await filler(public, 3)
        seen = await grant_in(public)
        # The fork holds a grant the public log never shows.
        hidden = await grant_in(secret)
        assert hidden.proof.tree_size < seen.proof.tree_size
        check(hidden, signer.sign_key)  # alone, the fork's delivery looks fine...
        # ...but it cannot be proven consistent with what the node holds.
        _, proof = await secret.consistency_proof(hidden.proof.tree_size)
        with pytest.raises(ForkDetected) as info:
            check(hidden, signer.sign_key, held_note=seen.note, consistency_proof=proof)
        assert info.value.held == seen.note and info.value.received == hidden.note
        # Same size, two roots: a fork without needing any proof.
        await filler(secret, seen.proof.tree_size - hidden.proof.tree_size - 1)
        same = await grant_in(secret)
        assert same.proof.tree_size == seen.proof.tree_size
        with pytest.raises(ForkDetected, match="two different roots"):
            check(same, signer.sign_key, held_note=seen.note)
        # A missing consistency proof is not silently accepted.
        await filler(public, 2)
        later = await grant_in(public)
        with pytest.raises(TransparencyError, match="consistency proof"):
            check(later, signer.sign_key, held_note=seen.note)
    finally:
        await public.close()
        await secret.close()


@pytest.mark.parametrize("obj", [
    {}, {"leaf_index": -1, "tree_size": 1, "hashes": []},
    {"leaf_index": 0, "tree_size": True, "hashes": []},
    {"leaf_index": 0, "tree_size": 1, "hashes": ["AAAA"]},
    {"leaf_index": 0, "tree_size": 1, "hashes": "x"},
    {"leaf_index": 0, "tree_size": 1, "hashes": [], "extra": 1},
])
def test_malformed_inclusion_proofs_are_refused(obj: dict[str, object]) -> None:
    with pytest.raises(TransparencyError):
        InclusionProof.from_wire(obj)


def test_malformed_entries_are_refused() -> None:
    good = entry_to_wire(StoredEvent(1, "s", 1, "T", 1, "t", b"{}", b"\0" * 32, b"\1" * 32,
                                     b"\2" * 64))
    assert entry_from_wire(good).seq == 1
    for bad in (good | {"seq": "1"}, good | {"payload": "!"}, {"seq": 1},
                good | {"stream": 3}, good | {"x": 1}):
        with pytest.raises(TransparencyError):
            entry_from_wire(bad)
