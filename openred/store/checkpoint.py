"""C2SP tlog-checkpoint bodies, signed as C2SP signed notes with Ed25519 (DESIGN §8).

A checkpoint body (https://c2sp.org/tlog-checkpoint) is exactly::

    <origin>\\n<decimal tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]

and a signed note (https://c2sp.org/signed-note) is the body, one blank line, then one or more
signature lines ``— <key name> <base64(4-byte key id ‖ signature)>\\n``. For Ed25519 (signature
type 0x01) the key id is SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte public key)[:4] and the
signature covers the body bytes, final newline included. A verifier key ("vkey") is written
``<name>+<8 hex key id>+<base64(0x01 ‖ public key)>``, as golang.org/x/mod/sumdb/note does.

OpenRed's origin is ``openred/<node_id>`` and its key name is the origin. Any standard
signed-note verifier (Go's sumdb/note, transparency-dev, sigsum) accepts what this module emits.

Strictness, written down: base64 must be canonical standard base64 with padding; notes must be
UTF-8 without control characters other than newline; at most 100 signature lines (the spec says
verifiers MUST accept at least 16); signatures from unknown keys are ignored (spec), but *every*
signature carrying the expected key's name and id must verify, or the note is rejected (the spec
says SHOULD; Go checks only the first of identical duplicates).

Pure code: no I/O, no clock, no randomness; the private key stays with the :class:`Signer`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from openred.crypto.identity import NodeId, SignKey
from openred.errors import CheckpointError, InvalidSignature
from openred.store.signer import Signer

MAX_SIGNATURES = 100
MAX_TREE_SIZE = 2**64 - 1
ED25519_SIGNATURE_TYPE = 0x01
ROOT_HASH_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

_SIG_PREFIX = "\u2014 "  # EM DASH, SPACE (signed-note "Format")
_SIZE_RE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX8_RE = re.compile(r"[0-9a-fA-F]{8}", re.ASCII)
_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every C0 control except newline


def node_origin(node_id: NodeId) -> str:
    """The checkpoint origin (and signing key name) of a node's log: ``openred/<node_id>``."""
    return f"openred/{NodeId(node_id)}"


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes:
    """Canonical RFC 4648 §4 base64 with padding; ValueError for anything else."""
    if not _B64_RE.fullmatch(text):
        raise ValueError("not canonical base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not canonical base64") from exc
    if _b64encode(raw) != text:  # non-zero padding bits: another encoding of the same bytes
        raise ValueError("not canonical base64")
    return raw


def _is_valid_key_name(name: str) -> bool:
    """signed-note: non-empty, no Unicode spaces, no plus (and here: no control characters)."""
    return (
        bool(name)
        and "+" not in name
        and not any(ch.isspace() for ch in name)
        and not _CONTROL_RE.search(name)
    )


def _check_key_name(name: str) -> None:
    if not isinstance(name, str) or not _is_valid_key_name(name):
        raise CheckpointError(f"invalid key name {name!r}: it must be non-empty, without spaces "
                              "or '+'")


def _decode_note_text(data: bytes, what: str) -> str:
    """UTF-8 with no control characters but newline (signed-note "Format")."""
    if not isinstance(data, bytes):
        raise CheckpointError(f"{what} must be bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} is not valid UTF-8") from exc
    if _CONTROL_RE.search(text):
        raise CheckpointError(f"{what} contains a control character")
    return text


# --- checkpoint body (c2sp.org/tlog-checkpoint "Note text") --------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: origin, tree size and RFC 6962 root hash (plus opaque extensions)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise CheckpointError("malformed checkpoint: origin is empty")
        if "\n" in self.origin or _CONTROL_RE.search(self.origin):
            raise CheckpointError("malformed checkpoint: origin contains a control character")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError("malformed checkpoint: tree size is not an integer")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"malformed checkpoint: tree size {self.size} is out of range")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != ROOT_HASH_SIZE:
            got = len(self.root_hash) if isinstance(self.root_hash, bytes) else "not bytes"
            raise CheckpointError(f"malformed checkpoint: root hash must be {ROOT_HASH_SIZE} "
                                  f"bytes, got {got}")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("malformed checkpoint: extensions must be a tuple of lines")
        for i, line in enumerate(self.extensions, start=1):
            if not isinstance(line, str) or not line:
                raise CheckpointError(f"malformed checkpoint: extension line {i} is empty")
            if "\n" in line or _CONTROL_RE.search(line):
                raise CheckpointError(
                    f"malformed checkpoint: extension line {i} contains a control character")

    def body(self) -> bytes:
        """The note text: origin, size, base64 root, extension lines, each ending in newline."""
        lines = [self.origin, str(self.size), _b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines).encode("utf-8")


def parse_checkpoint_body(body: bytes) -> Checkpoint:
    """Parse a checkpoint note text strictly; raise CheckpointError on any deviation."""
    text = _decode_note_text(body, "checkpoint")
    if not text.endswith("\n"):
        raise CheckpointError("malformed checkpoint: it does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"malformed checkpoint: expected at least 3 lines, got {len(lines)}")
    origin, size_text, root_text, *extensions = lines
    if not origin:
        raise CheckpointError("malformed checkpoint: origin is empty")
    if not _SIZE_RE.fullmatch(size_text):
        raise CheckpointError(f"malformed checkpoint: tree size {size_text!r} is not a decimal "
                              "number without leading zeros")
    size = int(size_text)
    if size > MAX_TREE_SIZE:
        raise CheckpointError(f"malformed checkpoint: tree size {size} is out of range")
    try:
        root_hash = _b64decode(root_text)
    except ValueError:
        raise CheckpointError("malformed checkpoint: root hash is not canonical base64") from None
    if len(root_hash) != ROOT_HASH_SIZE:
        raise CheckpointError(f"malformed checkpoint: root hash must be {ROOT_HASH_SIZE} bytes, "
                              f"got {len(root_hash)}")
    for i, line in enumerate(extensions, start=1):
        if not line:
            raise CheckpointError(f"malformed checkpoint: extension line {i} is empty")
    return Checkpoint(origin, size, root_hash, tuple(extensions))


# --- keys (c2sp.org/signed-note "Signatures", "Ed25519 signatures") ------------------------------


def key_id(key_name: str, sign_key: SignKey) -> bytes:
    """The 4-byte key id: SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ Ed25519 public key)[:4]."""
    _check_key_name(key_name)
    data = key_name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + sign_key.raw
    return hashlib.sha256(data).digest()[:4]


def vkey(key_name: str, sign_key: SignKey) -> str:
    """The verifier key text ``<name>+<hex key id>+<base64(0x01 ‖ key)>``."""
    encoded = _b64encode(bytes([ED25519_SIGNATURE_TYPE]) + sign_key.raw)
    return f"{key_name}+{key_id(key_name, sign_key).hex()}+{encoded}"


def parse_vkey(text: str) -> tuple[str, SignKey]:
    """Parse a verifier key into (key name, Ed25519 key); CheckpointError if anything is off."""
    if not isinstance(text, str):
        raise CheckpointError("malformed vkey: not text")
    name, plus1, rest = text.partition("+")
    id_hex, plus2, key_b64 = rest.partition("+")
    if not (plus1 and plus2):
        raise CheckpointError("malformed vkey: expected <name>+<key id>+<key>")
    if not _is_valid_key_name(name):
        raise CheckpointError(f"malformed vkey: invalid key name {name!r}")
    if not _HEX8_RE.fullmatch(id_hex):
        raise CheckpointError(f"malformed vkey: key id {id_hex!r} is not 8 hex digits")
    try:
        raw = _b64decode(key_b64)
    except ValueError:
        raise CheckpointError("malformed vkey: key is not canonical base64") from None
    if not raw:
        raise CheckpointError("malformed vkey: key is empty")
    if raw[0] != ED25519_SIGNATURE_TYPE:
        raise CheckpointError(f"malformed vkey: unknown signature type 0x{raw[0]:02x}")
    if len(raw) != 1 + 32:
        raise CheckpointError(f"malformed vkey: an Ed25519 key is 32 bytes, got {len(raw) - 1}")
    sign_key = SignKey(raw[1:])
    if key_id(name, sign_key) != bytes.fromhex(id_hex):
        raise CheckpointError("malformed vkey: key id does not match the name and key")
    return name, sign_key


# --- signed notes (c2sp.org/signed-note "Format") ------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: who claims to sign (name, 4-byte key id) and the signature bytes."""

    key_name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, newline included."""
        return f"{_SIG_PREFIX}{self.key_name} {_b64encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed (not yet verified) signed note: its text and its signature lines in order."""

    body: bytes
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        """The note bytes: body, blank line, signature lines."""
        return self.body + b"\n" + "".join(s.line() for s in self.signatures).encode("utf-8")


def _check_body(body: bytes) -> None:
    text = _decode_note_text(body, "note text")
    if not text.endswith("\n"):
        raise CheckpointError("malformed note: text does not end with a newline")


def format_signed_note(body: bytes, signatures: Sequence[tuple[str, SignKey, bytes]]) -> bytes:
    """Assemble a signed note from its text and (key name, key, 64-byte Ed25519 signature)s."""
    _check_body(body)
    if not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: expected 1 to {MAX_SIGNATURES} signatures, "
                              f"got {len(signatures)}")
    lines: list[NoteSignature] = []
    for name, sign_key, signature in signatures:
        if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_SIZE:
            raise CheckpointError(f"an Ed25519 signature is {ED25519_SIGNATURE_SIZE} bytes")
        lines.append(NoteSignature(name, key_id(name, sign_key), signature))
    return SignedNote(body, tuple(lines)).encode()


def parse_signed_note(note: bytes) -> SignedNote:
    """Split a signed note into text and signature lines, strictly; nothing is verified here."""
    # Signed notes MUST be valid UTF-8 without control characters other than newline.
    _decode_note_text(note, "note")
    # The text ends at the last blank line; signature lines follow, each ending in newline.
    split = note.rfind(b"\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    body, block = note[: split + 1], note[split + 2:]
    if not block:
        raise CheckpointError("malformed note: no signature lines")
    if not block.endswith(b"\n"):
        raise CheckpointError("malformed note: it does not end with a newline")
    lines = block[:-1].decode("utf-8").split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    signatures: list[NoteSignature] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise CheckpointError(
                f"malformed note: signature line {number} does not start with an em dash")
        name, space, encoded = line[len(_SIG_PREFIX):].partition(" ")
        if not space or not _is_valid_key_name(name):
            raise CheckpointError(f"malformed note: signature line {number} has no valid key name")
        try:
            raw = _b64decode(encoded)
        except ValueError:
            raise CheckpointError(
                f"malformed note: signature line {number} is not canonical base64") from None
        if len(raw) < 5:
            raise CheckpointError(f"malformed note: signature line {number} is too short")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    return SignedNote(body, tuple(signatures))


# --- verification and signing --------------------------------------------------------------------


def _ed25519_valid(sign_key: SignKey, signature: bytes, message: bytes) -> bool:
    if len(signature) != ED25519_SIGNATURE_SIZE:
        return False
    try:
        sign_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verify_note(note: bytes, key_name: str, sign_key: SignKey) -> SignedNote:
    """Verify a signed note under one trusted Ed25519 key; return it parsed.

    Raises CheckpointError if the note is malformed, carries no signature by that key, or any
    signature by that key fails to verify. Signatures by other keys are ignored (signed-note).
    """
    # 1. Parse the note (any malformation rejects it).
    parsed = parse_signed_note(note)
    # 2. Find the signatures by the trusted key: same name and key id.
    wanted_id = key_id(key_name, sign_key)
    label = f"{key_name}+{wanted_id.hex()}"
    matching = [s for s in parsed.signatures if s.key_name == key_name and s.key_id == wanted_id]
    if not matching:
        raise CheckpointError(f"note has no signature by key {label}")
    # 3. Every signature by the trusted key must verify over the note text.
    for signature in matching:
        if not _ed25519_valid(sign_key, signature.signature, parsed.body):
            raise CheckpointError(f"invalid signature for key {label}")
    return parsed


def verify_checkpoint(
    note: bytes, key_name: str, sign_key: SignKey, *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint under one trusted key and return its parsed body.

    ``origin`` is the origin the checkpoint must carry; by default the key name (DESIGN §8:
    OpenRed's key name is its origin). Raises CheckpointError if anything fails.
    """
    # 1.-3. A well-formed note with a valid signature by the trusted key.
    parsed = verify_note(note, key_name, sign_key)
    # 4. The signed text must be a well-formed checkpoint of the expected origin.
    checkpoint = parse_checkpoint_body(parsed.body)
    expected_origin = key_name if origin is None else origin
    if checkpoint.origin != expected_origin:
        raise CheckpointError(
            f"checkpoint origin {checkpoint.origin!r} is not {expected_origin!r}")
    return checkpoint


async def sign_checkpoint(checkpoint: Checkpoint, key_name: str, signer: Signer) -> bytes:
    """Sign a checkpoint through the Signer port and return the full signed note.

    The fresh signature is verified before it is returned, so a faulty signer (or a jail
    answering for another key) is caught here, not by the next auditor.
    """
    body = checkpoint.body()
    signature = await signer.sign_checkpoint(body)
    note = format_signed_note(body, [(key_name, signer.sign_key, bytes(signature))])
    verify_checkpoint(note, key_name, signer.sign_key, origin=checkpoint.origin)
    return note
