"""The witness file: two slots, a torn write leaves the older one, damage stops the jail."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from crypto_jail.errors import OpRefused
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
