"""Recognizers for the only structures the jail agrees to sign (stdlib only).

The jail signs with one Ed25519 key for several purposes, so it must never sign bytes an
attacker chose freely: each ``sign`` kind accepts exactly one shape, and the shapes are
pairwise disjoint, so a signature made for one purpose can never be valid for another:

* entry hash — exactly 32 bytes (every other shape is longer than 32 bytes);
* checkpoint body — ends with a newline and has at least three lines;
* canonical grant — one JSON object line, starts with ``{`` and has no newline;
* HTTP signature base — starts with ``"@method": `` and has no trailing newline.

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
import re

from crypto_jail.tokens import check_canonical_grant

__all__ = [
    "MAX_CHECKPOINT_BODY",
    "MAX_SIGNATURE_BASE",
    "is_canonical_grant",
    "is_checkpoint_body",
    "is_entry_hash",
    "is_http_signature_base",
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
