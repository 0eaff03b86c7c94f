"""``audit_tools export``: a self-contained bundle that ``verify`` checks offline.

A bundle is JSON Lines. The first line is a header::

    {"format": "openred-log-bundle/1", "origin": "openred/<node_id>", "count": n,
     "key_history": [{"from_seq": 1, "sign_key": "..."}, ...],
     "checkpoints": [{"size": s, "note": "<signed note text>"}, ...],
     "pseudonymized": false}

then one line per entry, every column, binary values base64url::

    {"seq": 1, "stream": "log", "stream_version": 1, "type": "LogOpened", "schema_version": 1,
     "recorded_at": "...", "payload": "...", "prev_hash": "...", "entry_hash": "...",
     "signature": "..."}

With ``pseudonymize`` everything in a peer's entry that names or locates a peer — node ids
(also inside embedded grants and records), public keys, record hashes, grant ids, URLs such as
``api_url``, and signatures that would confirm a guess — is replaced by a keyed hash of the same
shape, consistently across the bundle (:class:`Pseudonymizer`). The log's own stream (genesis,
key rotations) is never rewritten, and the owner's identity stays: its key must remain to check
signatures, and the key names the owner anyway.

A pseudonymized bundle proves what any bundle proves except the contents of the rewritten
entries: ``verify`` still checks order, links, every signature, the key history (whose entries
must hash exactly), sizes and checkpoints, and counts the entries whose contents no longer hash
to their signed entry hash. The header's ``pseudonymized`` flag is not signed, so it switches
nothing off: it only lets a rewritten peer entry differ from its hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audit_tools.source import BUNDLE_FORMAT, LogSource, MalformedRow
from audit_tools.verify import Report
from openred.crypto.identity import b64url, from_b64url
from openred.store.codec import canonical_json, decode_payload
from openred.store.events import LOG_STREAM, StoredEvent

_NODE_ID = re.compile(r"[a-z2-7]{32}")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_OPAQUE_FIELDS = frozenset({"grant_id"})  # values the directory's public log ties to peers


def _is_key_field(name: str) -> bool:
    return name.endswith(("_key", "_record"))


def _is_signature_field(name: str) -> bool:
    return name == "signature" or name.endswith("_signature")


def _embedded_json(text: str) -> Any:
    """The JSON object a base64url string carries (an embedded grant or record), else None."""
    if len(text) < 4 or not _B64URL.fullmatch(text):
        return None
    try:
        raw = from_b64url(text)
    except ValueError:
        return None
    if not raw.startswith(b"{"):
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class Pseudonymizer:
    """Keyed, consistent replacement of everything in a payload that names or locates a peer.

    Node ids (anywhere, also inside embedded grants and records), public keys and record
    hashes, grant ids, URLs (``api_url``) and the signatures that would let a reader confirm a
    guess of the original are replaced by keyed hashes of the same shape, the same way across
    the bundle. Base64url strings that carry a JSON object (a grant's canonical bytes) are
    decoded, rewritten and encoded again.
    """

    def __init__(self, key: bytes, keep: set[str]) -> None:
        self._key = key
        self._keep = keep
        self._ids: set[str] = set()
        self._opaque: set[str] = set()

    def learn(self, entry: StoredEvent) -> None:
        """Collect the node ids and other identifying values ``entry`` mentions (first pass)."""
        if entry.stream == LOG_STREAM:
            return
        for match in _NODE_ID.finditer(entry.stream):
            self._ids.add(match.group())
        try:
            payload = decode_payload(entry.payload)
        except (ValueError, RecursionError):
            return
        self._walk(payload)

    def _walk(self, value: Any, name: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                self._walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                self._walk(v, name)
        elif isinstance(value, str):
            if _NODE_ID.fullmatch(value):
                self._ids.add(value)
            elif name in _OPAQUE_FIELDS or _is_key_field(name):
                self._opaque.add(value)
            embedded = _embedded_json(value)
            if embedded is not None:
                self._walk(embedded, name)

    def _hash(self, label: bytes, text: str) -> bytes:
        return hmac.new(self._key, label + text.encode(), hashlib.sha256).digest()

    def _node_id(self, text: str) -> str:
        if text in self._keep or text not in self._ids:
            return text
        return base64.b32encode(self._hash(b"node:", text)[:20]).decode().lower()

    def replace(self, text: str, name: str = "") -> str:
        """The pseudonym of one string value (found under the field ``name``)."""
        if text in self._keep:
            return text
        if _NODE_ID.fullmatch(text):
            return self._node_id(text)
        if text in self._opaque:
            return b64url(self._hash(b"value:", text)[:max(1, len(_raw_or_text(text)))])
        if _is_signature_field(name):
            return b64url(self._hash(b"signature:", text) * 2)
        if _URL.match(text):
            return f"https://{self._node_id_like(text)}.invalid"
        embedded = _embedded_json(text)
        if embedded is not None:
            return b64url(canonical_json(self._rewrite(embedded)))
        # Ids inside longer strings (a stream name, a path) are replaced where they stand.
        return _NODE_ID.sub(lambda m: self._node_id(m.group()), text)

    def _node_id_like(self, text: str) -> str:
        return base64.b32encode(self._hash(b"url:", text)[:20]).decode().lower()

    def stream(self, stream: str) -> str:
        prefix, sep, rest = stream.partition(":")
        return f"{prefix}{sep}{self.replace(rest)}" if sep else self.replace(stream)

    def payload(self, payload: bytes) -> bytes:
        try:
            value = decode_payload(payload)
        except (ValueError, RecursionError):
            return payload
        return canonical_json(self._rewrite(value))

    def _rewrite(self, value: Any, name: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self._rewrite(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._rewrite(v, name) for v in value]
        if isinstance(value, str):
            return self.replace(value, name)
        return value


def _raw_or_text(text: str) -> bytes:
    """The bytes a base64url value stands for (or its text), to keep a pseudonym's length."""
    try:
        return from_b64url(text)
    except ValueError:
        return text.encode()


def _line(entry: StoredEvent) -> bytes:
    return json.dumps({
        "seq": entry.seq, "stream": entry.stream, "stream_version": entry.stream_version,
        "type": entry.type, "schema_version": entry.schema_version,
        "recorded_at": entry.recorded_at, "payload": b64url(entry.payload),
        "prev_hash": b64url(entry.prev_hash), "entry_hash": b64url(entry.entry_hash),
        "signature": b64url(entry.signature),
    }, separators=(",", ":")).encode() + b"\n"


def export_bundle(
    source: LogSource,
    report: Report,
    out: Path,
    *,
    pseudonym_key: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the verified log of ``report`` to ``out``; return the number of entries written.

    The caller verifies first: only a log that verified is exported.
    """
    n = report.entries
    pseudo: Pseudonymizer | None = None
    if pseudonym_key is not None:
        owner = {k for _, k in report.keys} | {report.origin.removeprefix("openred/")}
        pseudo = Pseudonymizer(pseudonym_key, owner)
        for entry in source.rows(1, n):
            if isinstance(entry, StoredEvent):
                pseudo.learn(entry)
    header = {
        "format": BUNDLE_FORMAT,
        "origin": report.origin,
        "count": n,
        "key_history": [{"from_seq": s, "sign_key": k} for s, k in report.keys],
        "checkpoints": [
            {"size": size, "note": note.decode("utf-8")}
            for size, note in source.checkpoints() if size <= n
        ],
        "pseudonymized": pseudo is not None,
    }
    # The bundle holds the whole log: written for this user only, through a temporary name
    # created exclusively (whatever was planted there, a link included, is removed first and
    # never followed), then renamed, as openred.files.write_private does.
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        for entry in source.rows(1, n):
            if isinstance(entry, MalformedRow):
                raise ValueError(f"entry {entry.seq} is malformed: {entry.reason}")
            if pseudo is not None and entry.stream != LOG_STREAM:
                entry = StoredEvent(
                    entry.seq, pseudo.stream(entry.stream), entry.stream_version, entry.type,
                    entry.schema_version, entry.recorded_at, pseudo.payload(entry.payload),
                    entry.prev_hash, entry.entry_hash, entry.signature,
                )
            f.write(_line(entry))
            written += 1
            if progress and written % 10_000 == 0:
                progress(written, n)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out)
    return written
