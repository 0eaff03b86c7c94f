"""Recognizers for the only structures the jail agrees to sign (stdlib only).

The jail signs with one Ed25519 key for several purposes, so it must never sign bytes an
attacker chose freely: each ``sign`` kind accepts exactly one shape, and the shapes are
pairwise disjoint, so a signature made for one purpose can never be valid for another:

* entry hash — exactly 32 bytes (every other shape is longer than 32 bytes);
* checkpoint body — ends with a newline and has at least three lines;
* canonical grant — one JSON object line, starts with ``{`` and has no newline, with exactly
  the grant's keys;
* canonical node record — one JSON object line with exactly the node record's keys (DESIGN §2),
  so it is never a grant (and a grant never a record): the two key sets differ;
* HTTP signature base — starts with ``"@method": `` and has no trailing newline;
* peer challenge — starts with the line ``OpenRed peer challenge v1`` and has no trailing
  newline (so it is never a checkpoint body, never JSON, never a signature base, and longer
  than an entry hash).

The HTTP signature base is OpenRed's RFC 9421 profile (DESIGN §3), four lines joined by
``\\n`` with no trailing newline, exactly as ``openred.crypto.httpsig`` builds it::

    "@method": POST
    "@target-uri": https://dir.example/api/v3/nodes/register
    "content-digest": sha-256=:<base64 of 32 bytes>:
    "@signature-params": ("@method" "@target-uri" "content-digest");created=1700000000;\
keyid="<node id or directory>";alg="ed25519";nonce="<16-128 base64url chars>"

(the last line is one line). Only that component list, in that order, and only those four
parameters, in that order, are accepted (RFC 9421 §2.3 and §2.5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping

from crypto_jail.tokens import check_canonical_grant, check_canonical_object

__all__ = [
    "MAX_CHECKPOINT_BODY",
    "MAX_SIGNATURE_BASE",
    "check_canonical_node_record",
    "check_node_record_fields",
    "is_canonical_grant",
    "is_checkpoint_body",
    "is_entry_hash",
    "is_http_signature_base",
    "is_node_record",
    "is_peer_challenge",
]

MAX_SIGNATURE_BASE = 8192
MAX_CHECKPOINT_BODY = 8192

# RFC 9110 §5.6.2 token characters, uppercase only (the signer refuses lowercase methods).
_METHOD = r"[!#$%&'*+.^_`|~0-9A-Z-]+"
# Visible ASCII only: no spaces, no controls (RFC 9421 §2.5 forbids newlines in values).
_TARGET_URI = r"https?://[!-~]+"
_DIGEST = r"sha-256=:[A-Za-z0-9+/]{43}=:"
_KEYID = r"(?:[a-z2-7]{32}|directory)"
_NONCE = r"[A-Za-z0-9_-]{16,128}"
_CREATED = r"(?:0|[1-9][0-9]{0,15})"
_SIGNATURE_BASE = re.compile(
    rf'"@method": {_METHOD}\n'
    rf'"@target-uri": {_TARGET_URI}\n'
    rf'"content-digest": {_DIGEST}\n'
    rf'"@signature-params": \("@method" "@target-uri" "content-digest"\)'
    rf';created={_CREATED};keyid="{_KEYID}";alg="ed25519";nonce="{_NONCE}"'
)

# C2SP tlog-checkpoint: decimal tree size without leading zeros.
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")
_ROOT = re.compile(r"[A-Za-z0-9+/]{43}=")


def is_entry_hash(data: bytes) -> bool:
    """Whether ``data`` can be a log entry hash: exactly 32 bytes (DESIGN §8)."""
    return isinstance(data, bytes) and len(data) == 32


def is_http_signature_base(data: bytes) -> bool:
    """Whether ``data`` is an RFC 9421 signature base in OpenRed's profile (see module doc)."""
    if not isinstance(data, bytes) or len(data) > MAX_SIGNATURE_BASE:
        return False
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return _SIGNATURE_BASE.fullmatch(text) is not None


def is_checkpoint_body(data: bytes, *, origin: str | None = None) -> bool:
    """Whether ``data`` is a C2SP tlog-checkpoint body (optionally with this origin line).

    Per C2SP tlog-checkpoint and signed-note: UTF-8 text ending in a newline, without ASCII
    control characters other than newline and without empty lines; line 1 the origin (no
    spaces, no ``+``, since it is also the note's key name), line 2 the tree size in decimal
    without leading zeros, line 3 the standard-base64 32-byte root hash, then optional
    non-empty extension lines.
    """
    if not isinstance(data, bytes) or len(data) > MAX_CHECKPOINT_BODY:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text.endswith("\n") or any(ch < " " and ch != "\n" for ch in text):
        return False
    lines = text[:-1].split("\n")
    if len(lines) < 3 or any(line == "" for line in lines):
        return False
    first, size, root = lines[0], lines[1], lines[2]
    if any(ch.isspace() or ch == "+" for ch in first):
        return False
    if origin is not None and first != origin:
        return False
    if not _SIZE.fullmatch(size) or not _ROOT.fullmatch(root):
        return False
    try:
        raw = base64.b64decode(root, validate=True)
    except (binascii.Error, ValueError):
        return False
    # One root has one spelling: reject non-zero trailing bits.
    return len(raw) == 32 and base64.b64encode(raw).decode("ascii") == root


def is_canonical_grant(data: bytes) -> bool:
    """Whether ``data`` is a well-formed grant in its exact RFC 8785 canonical bytes."""
    try:
        check_canonical_grant(data)
    except ValueError:
        return False
    return True


# --- signed node records (DESIGN §2) ------------------------------------------------------------

NODE_RECORD_FIELDS = frozenset(
    {"node_id", "api_url", "sign_key", "box_key", "modules", "issued_at", "version"}
)
MAX_NODE_RECORD = 4096
MAX_API_URL = 512
MAX_MODULES = 32
_NODE_ID = re.compile(r"[a-z2-7]{32}")
_KEY_B64URL = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")  # 32 bytes, canonical
# Printable ASCII without space, quote or backslash: the JSON form needs no escapes at all.
_API_URL = re.compile(r"https?://[!#-\[\]-~]{1,500}")
_MODULE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_MAX_SAFE_INT = 2**53 - 1


def _safe_int(value: object, *, minimum: int) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool)
        and minimum <= value <= _MAX_SAFE_INT
    )


def check_node_record_fields(obj: Mapping[str, object]) -> None:
    """Raise ValueError unless ``obj`` has exactly the node record's fields, well formed."""
    if not isinstance(obj, Mapping):
        raise ValueError("a node record is a JSON object")
    keys = set(obj)
    if keys != NODE_RECORD_FIELDS:
        missing = sorted(NODE_RECORD_FIELDS - keys)
        extra = sorted(str(k) for k in keys - NODE_RECORD_FIELDS)
        raise ValueError(f"node record fields wrong: missing {missing}, unexpected {extra}")
    node_id = obj["node_id"]
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise ValueError("node_id is not a node id")
    url = obj["api_url"]
    if not isinstance(url, str) or len(url) > MAX_API_URL or not _API_URL.fullmatch(url):
        raise ValueError("api_url must be an http(s) URL of printable ASCII")
    for name in ("sign_key", "box_key"):
        key = obj[name]
        if not isinstance(key, str) or not _KEY_B64URL.fullmatch(key):
            raise ValueError(f"{name} must be 32 bytes in canonical unpadded base64url")
    modules = obj["modules"]
    if not isinstance(modules, list) or len(modules) > MAX_MODULES:
        raise ValueError(f"modules must be a list of at most {MAX_MODULES} names")
    for module in modules:
        if not isinstance(module, str) or not _MODULE.fullmatch(module):
            raise ValueError("a module name is 1-64 characters of [a-z0-9_.-]")
    if modules != sorted(set(modules)):
        raise ValueError("modules must be sorted and without repeats")
    if not _safe_int(obj["issued_at"], minimum=0):
        raise ValueError("issued_at must be an integer number of seconds in [0, 2**53)")
    if not _safe_int(obj["version"], minimum=1):
        raise ValueError("version must be a positive integer below 2**53")
    key_raw = base64.urlsafe_b64decode(str(obj["sign_key"]) + "=")
    expected = base64.b32encode(hashlib.sha256(key_raw).digest()[:20]).decode("ascii").lower()
    if node_id != expected:
        raise ValueError("node_id is not the id of sign_key")


def check_canonical_node_record(data: bytes) -> dict[str, object]:
    """Parse a node record; ValueError unless these are exactly its RFC 8785 canonical bytes.

    Every string in a valid record is ASCII needing no escape and every number a safe integer,
    so the grant's check (``crypto_jail.tokens.check_canonical_object``) applies as it is.
    """
    return check_canonical_object(
        data, what="node record", limit=MAX_NODE_RECORD, check_fields=check_node_record_fields,
    )


def is_node_record(data: bytes) -> bool:
    """Whether ``data`` is a well-formed node record in its exact canonical bytes."""
    try:
        check_canonical_node_record(data)
    except ValueError:
        return False
    return True


# --- peer challenges (issue 10: authentication) --------------------------------------------------

PEER_CHALLENGE_HEADER = "OpenRed peer challenge v1"
# Six lines joined by "\n", no trailing newline: a node proves to the challenger, on one
# session, for one purpose, that it holds its identity key (openred.modules.authentication).
_PEER_CHALLENGE = re.compile(
    PEER_CHALLENGE_HEADER + r"\n"
    r"purpose: [a-z0-9][a-z0-9_.:-]{0,63}\n"
    r"challenger: [a-z2-7]{32}\n"
    r"responder: [a-z2-7]{32}\n"
    r"session: [A-Za-z0-9_-]{21}[AQgw]\n"  # 16 bytes, canonical unpadded base64url
    r"nonce: [A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"  # 32 bytes, canonical unpadded base64url
)


def is_peer_challenge(data: bytes) -> bool:
    """Whether ``data`` is a peer challenge in its exact form (see the module doc)."""
    if not isinstance(data, bytes) or len(data) > 512:
        return False
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return _PEER_CHALLENGE.fullmatch(text) is not None
