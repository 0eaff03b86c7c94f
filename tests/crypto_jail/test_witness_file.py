"""The witness file: two slots, a torn write leaves the older one, damage stops the jail."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from crypto_jail.errors import BAD_REQUEST, OpRefused
from crypto_jail.keystore import Keystore
from crypto_jail.ops import JailState, dispatch
from crypto_jail.protocol import b64e
from crypto_jail.witness import SLOT_SIZE, Witness, WitnessError, verify_consistency
from openred.store import merkle

ORIGIN = "openred/" + "a" * 32


def body(hashes: list[bytes]) -> bytes:
    root = base64.b64encode(merkle.root_from_entry_hashes(hashes)).decode()
    return f"{ORIGIN}\n{len(hashes)}\n{root}\n".encode()


def sign(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


LOG = [hashlib.sha256(bytes([i])).digest() for i in range(40)]


def test_the_witness_survives_a_torn_write_of_its_newest_slot(tmp_path: Path) -> None:
    path = tmp_path / "w"
    witness = Witness(path)
    witness.sign(body(LOG[:3]), None, sign)
    witness.sign(body(LOG[:9]), merkle.consistency_proof(3, LOG[:9]), sign)
    witness.close()
    data = bytearray(path.read_bytes())
    assert len(data) == 2 * SLOT_SIZE
    newest = 0  # counter 2 went to slot 0
    data[newest * SLOT_SIZE + 100] ^= 0xFF  # torn
    path.write_bytes(bytes(data))
    again = Witness(path)
    try:
        assert again.witnessed(ORIGIN) == body(LOG[:3])  # one checkpoint older, never none
        with pytest.raises(OpRefused, match="never shrinks"):
            again.sign(body(LOG[:2]), None, sign)
    finally:
        again.close()


def test_a_witness_file_with_no_intact_slot_stops_the_jail(tmp_path: Path) -> None:
    path = tmp_path / "w"
    path.write_bytes(b"\x01" * (2 * SLOT_SIZE))
    with pytest.raises(WitnessError, match="damaged"):
        Witness(path)


def test_consistency_matches_the_stores_merkle_code() -> None:
    for old in range(1, 20):
        for new in range(old + 1, 40):
            proof = merkle.consistency_proof(old, LOG[:new])
            old_root = merkle.root_from_entry_hashes(LOG[:old])
            new_root = merkle.root_from_entry_hashes(LOG[:new])
            assert verify_consistency(old, new, old_root, new_root, proof)
            assert not verify_consistency(old, new, new_root, new_root, proof)
            if proof:
                assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
                assert not verify_consistency(old, new, old_root, new_root, [*proof, proof[0]])


def _state(path: Path) -> JailState:
    return JailState(Keystore.generate(), wall_clock=lambda: 1_700_000_000,
                     witness=Witness(path))


def _item(origin: str, hashes: list[bytes], proof: list[bytes] | None = None) -> dict[str, Any]:
    root = base64.b64encode(merkle.root_from_entry_hashes(hashes)).decode()
    item: dict[str, Any] = {"kind": "checkpoint",
                            "data": b64e(f"{origin}\n{len(hashes)}\n{root}\n".encode())}
    if proof is not None:
        item["consistency_proof"] = [b64e(h) for h in proof]
    return item


def test_sign_many_carries_the_consistency_proof_the_witness_needs(tmp_path: Path) -> None:
    state = _state(tmp_path / "w")
    origin = state.origin
    fork = [*LOG[:8], b"\xee" * 32, *LOG[9:12]]
    results = dispatch(state, "sign_many", {"items": [
        _item(origin, LOG[:3]),
        _item(origin, LOG[:9], merkle.consistency_proof(3, LOG[:9])),
        _item(origin, LOG[:12]),  # no proof
        _item(origin, fork, merkle.consistency_proof(9, fork)),  # a proof, of a fork
        _item(origin, LOG[:5], merkle.consistency_proof(3, LOG[:5])),  # behind
    ]})["results"]
    assert [set(r) for r in results] == [{"signature"}] * 2 + [{"error", "detail"}] * 3
    assert "no valid consistency proof" in results[2]["detail"]
    assert "no valid consistency proof" in results[3]["detail"]
    assert "never shrinks" in results[4]["detail"]
    assert state.witness is not None
    assert state.witness.witnessed(origin) == _b64d(_item(origin, LOG[:9])["data"])
    # A proof on another kind, or a malformed one, refuses the whole call.
    for item in ({"kind": "entry_hash", "data": b64e(LOG[0]), "consistency_proof": []},
                 {**_item(origin, LOG[:12]), "consistency_proof": "no"},
                 {**_item(origin, LOG[:12]), "consistency_proof": [b64e(b"short")]},
                 {**_item(origin, LOG[:12]), "consistency_proof": [b64e(LOG[0])] * 65}):
        with pytest.raises(OpRefused) as info:
            dispatch(state, "sign_many", {"items": [_item(origin, LOG[:9]), item]})
        assert info.value.code == BAD_REQUEST


def test_a_checkpoint_signed_in_sign_many_is_written_at_once_and_synced_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The directory's per-grant checkpoints: in the file before the signature leaves (any
    process may die), synced with the next ``sign_checkpoint`` or at close; the slot of the
    newest synced one is never overwritten meanwhile, so a power loss leaves an older
    witness, never a damaged one."""
    path = tmp_path / "w"
    state = _state(path)
    origin = state.origin
    syncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real(fd))
    dispatch(state, "sign_checkpoint", {"body": _item(origin, LOG[:3])["data"]})
    assert len(syncs) == 1
    synced = path.read_bytes()
    for size in (5, 9, 14):
        old = 3 if size == 5 else {9: 5, 14: 9}[size]
        dispatch(state, "sign_many", {"items": [
            _item(origin, LOG[:size], merkle.consistency_proof(old, LOG[:size]))]})
    assert len(syncs) == 1  # written, not synced
    data = path.read_bytes()
    durable = 1  # the first checkpoint went to slot 1 (slot 0 holds the empty start)
    assert data[durable * SLOT_SIZE:(durable + 1) * SLOT_SIZE] == \
        synced[durable * SLOT_SIZE:(durable + 1) * SLOT_SIZE]
    newest = _item(origin, LOG[:14])["data"]
    reread = Witness(path)  # what a jail started after this one died would see
    assert reread.witnessed(origin) == _b64d(newest)
    reread.close()
    # The unsynced slot torn by a power loss: the synced checkpoint, older, comes back.
    torn = bytearray(data)
    torn[(1 - durable) * SLOT_SIZE + 100] ^= 0xFF
    (tmp_path / "torn").write_bytes(bytes(torn))
    older = Witness(tmp_path / "torn")
    assert older.witnessed(origin) == _b64d(_item(origin, LOG[:3])["data"])
    older.close()
    # Signing the same checkpoint through sign_checkpoint syncs it; so does close.
    syncs.clear()
    dispatch(state, "sign_checkpoint", {"body": newest})
    assert len(syncs) == 1
    dispatch(state, "sign_many", {"items": [
        _item(origin, LOG[:20], merkle.consistency_proof(14, LOG[:20]))]})
    assert len(syncs) == 1
    assert state.witness is not None
    state.witness.close()
    assert len(syncs) == 2


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
