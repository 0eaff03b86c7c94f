"""Signed node records (DESIGN §2): how a node describes itself, in its own signature.

A record is the JSON object ``{node_id, api_url, sign_key, box_key, modules, issued_at,
version}`` (keys base64url of 32 bytes, ``modules`` a sorted list of names, ``issued_at`` Unix
seconds, ``version`` a positive integer the node increases on every change). Its signature is
Ed25519 by the node's identity key over the record's RFC 8785 canonical bytes, made in the
node's jail (signable kind ``node_record``, recognized by
``crypto_jail.structures.is_node_record``). Wire form everywhere::

    {"record": {...}, "signature": "<base64url of 64 bytes>"}

Whoever receives a record takes the node's X25519 key and URL only from a record that
:func:`verify_signed_record` accepts — never from a directory's word.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crypto_jail import structures as _jail
from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url, from_b64url
from openred.errors import CryptoError, InvalidSignature
from openred.store.codec import canonical_json

__all__ = [
    "NodeRecord",
    "SignedNodeRecord",
    "record_hash",
    "sign_record",
    "verify_signed_record",
]

SIGNATURE_LEN = 64
_FIELDS = ("node_id", "api_url", "sign_key", "box_key", "modules", "issued_at", "version")
"""The record's fields in the order its dict form lists them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """What a node says about itself: its id, URL, keys, modules, when, and which version."""

    node_id: NodeId
    api_url: str
    sign_key: SignKey
    box_key: BoxKey
    modules: tuple[str, ...] = ()
    issued_at: int
    version: int
    _canonical: bytes = field(init=False, repr=False, compare=False)
    _dict: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modules", tuple(self.modules))
        obj = self._build_dict()
        try:
            _jail.check_node_record_fields(obj)
            object.__setattr__(self, "node_id", NodeId(self.node_id))
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"node record is malformed: {exc}") from exc
        object.__setattr__(self, "_dict", obj)
        object.__setattr__(self, "_canonical", canonical_json(obj))

    @classmethod
    def build(
        cls, *, sign_key: SignKey, box_key: BoxKey, api_url: str, modules: Iterable[str] = (),
        issued_at: int, version: int,
    ) -> NodeRecord:
        """A record for ``sign_key``'s node (node_id derived, modules sorted)."""
        return cls(node_id=sign_key.node_id, api_url=api_url, sign_key=sign_key,
                   box_key=box_key, modules=tuple(sorted(set(modules))), issued_at=issued_at,
                   version=version)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object (what is signed, in canonical form); a fresh copy."""
        obj = dict(self._dict)
        obj["modules"] = list(obj["modules"])
        return obj

    def _build_dict(self) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id),
            "api_url": self.api_url,
            "sign_key": self.sign_key.b64url() if isinstance(self.sign_key, SignKey)
            else self.sign_key,
            "box_key": self.box_key.b64url() if isinstance(self.box_key, BoxKey)
            else self.box_key,
            "modules": list(self.modules),
            "issued_at": self.issued_at,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> NodeRecord:
        """A record from a received JSON object; CryptoError unless it is exactly a record."""
        try:
            _jail.check_node_record_fields(obj)
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"node record is malformed: {exc}") from exc
        # ``obj`` is now exactly a record in its canonical form (canonical unpadded base64url
        # keys, sorted modules, safe integers, node_id = id(sign_key)): the checked constructor
        # would rebuild this very dict and check it again. Set the fields from it directly
        # (tested equal to the constructor's record, field by field and byte for byte).
        own = {name: obj[name] for name in _FIELDS}
        own["modules"] = list(own["modules"])
        record = object.__new__(cls)
        for name, value in (
            ("node_id", NodeId(own["node_id"])), ("api_url", own["api_url"]),
            ("sign_key", SignKey(_key_bytes(own["sign_key"]))),
            ("box_key", BoxKey(_key_bytes(own["box_key"]))), ("modules", tuple(own["modules"])),
            ("issued_at", own["issued_at"]), ("version", own["version"]), ("_dict", own),
            ("_canonical", canonical_json(own)),
        ):
            object.__setattr__(record, name, value)
        return record

    def canonical_bytes(self) -> bytes:
        """The RFC 8785 bytes the node signs."""
        return self._canonical

    @property
    def hash(self) -> bytes:
        """SHA-256 of the canonical bytes (what a grant names)."""
        return hashlib.sha256(self._canonical).digest()


@dataclass(frozen=True, slots=True)
class SignedNodeRecord:
    """A record with the node's signature over its canonical bytes."""

    record: NodeRecord
    signature: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"record": self.record.to_dict(), "signature": b64url(self.signature)}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> SignedNodeRecord:
        """Parse ``{record, signature}``; CryptoError if malformed (signature not checked)."""
        if not isinstance(obj, Mapping) or set(obj) != {"record", "signature"}:
            raise CryptoError("a signed node record is exactly {record, signature}")
        signature = obj["signature"]
        try:
            raw = from_b64url(signature)
        except ValueError as exc:
            raise CryptoError("node record signature is not base64url") from exc
        if len(raw) != SIGNATURE_LEN:
            raise CryptoError("node record signature must be 64 bytes")
        record = obj["record"]
        if not isinstance(record, Mapping):
            raise CryptoError("node record is not a JSON object")
        return cls(NodeRecord.from_dict(record), raw)

    @property
    def hash(self) -> bytes:
        return self.record.hash


def _key_bytes(text: str) -> bytes:
    """The 32 bytes of a key that check_node_record_fields found canonical (43 characters)."""
    return base64.urlsafe_b64decode(text + "=")


def record_hash(record: NodeRecord | SignedNodeRecord) -> bytes:
    """SHA-256 of a record's canonical bytes (what a grant's ``*_record`` fields name)."""
    if isinstance(record, SignedNodeRecord):
        record = record.record
    return record.hash


def verify_signed_record(signed: SignedNodeRecord, *,
                         signature_valid: bool | None = None) -> NodeRecord:
    """The record if its node signed it and node_id = id(sign_key); raise otherwise.

    1. node_id is the id of sign_key (CryptoError) — checked when the record was built;
    2. the Ed25519 signature verifies under sign_key over the canonical bytes (InvalidSignature).

    ``signature_valid``: the outcome of step 2 when the caller had it checked already (a
    :class:`~openred.crypto.checks.SignatureChecker` on exactly ``record_signature_check``'s
    arguments); None checks it here.
    """
    record = signed.record
    # 1. Self-certifying id (NodeRecord construction already refused a mismatch; keep it explicit).
    if NodeId.for_key(record.sign_key) != record.node_id:
        raise CryptoError("node_id is not the id of sign_key")
    # 2. The node's own signature over exactly these bytes.
    try:
        if signature_valid is None:
            record.sign_key.verify(signed.signature, record.canonical_bytes())
        elif not signature_valid:
            raise InvalidSignature("signature does not verify")
    except InvalidSignature as exc:
        raise InvalidSignature("node record signature does not verify under its sign_key") from exc
    return record


def record_signature_check(signed: SignedNodeRecord) -> tuple[SignKey, bytes, bytes]:
    """(key, signature, message) of step 2 of :func:`verify_signed_record`, to check ahead."""
    record = signed.record
    return record.sign_key, signed.signature, record.canonical_bytes()


async def sign_record(
    record: NodeRecord, sign: Callable[[str, bytes], Awaitable[bytes]]
) -> SignedNodeRecord:
    """Sign ``record`` through ``sign(kind, data)`` (a JailClient's ``sign``) and check it."""
    signature = bytes(await sign("node_record", record.canonical_bytes()))
    signed = SignedNodeRecord(record, signature)
    verify_signed_record(signed)
    return signed
