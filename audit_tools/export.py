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

With ``pseudonymize`` every peer's node id and public key (anywhere in streams and payloads) is
replaced by a keyed hash of the same shape, consistently across the bundle. The log owner's
identity stays: its key must remain to check signatures, and the key names the owner anyway.
Pseudonymized payloads no longer hash to the signed entry hashes, so ``verify`` of such a bundle
checks sequence, links, signatures and checkpoints, and says it could not recompute the hashes.
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
from openred.crypto.identity import b64url
from openred.store.codec import canonical_json, decode_payload
from openred.store.events import LOG_STREAM, StoredEvent

_NODE_ID = re.compile(r"[a-z2-7]{32}")
_ID_FIELDS = frozenset({"node_id", "peer", "initiator", "responder", "target"})
_KEY_FIELDS = frozenset({"sign_key", "box_key"})


class Pseudonymizer:
    """Keyed, consistent replacement of node ids and public keys."""

    def __init__(self, key: bytes, keep: set[str]) -> None:
        self._key = key
        self._keep = keep
        self._ids: set[str] = set()
        self._keys: set[str] = set()

    def learn(self, entry: StoredEvent) -> None:
        """Collect the node ids and keys that ``entry`` mentions (first pass)."""
        if ":" in entry.stream:
            suffix = entry.stream.split(":", 1)[1]
            if _NODE_ID.fullmatch(suffix):
                self._ids.add(suffix)
        if entry.stream == LOG_STREAM:
            return
        try:
            payload = decode_payload(entry.payload)
        except ValueError:
            return
        self._walk(payload)

    def _walk(self, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str) and k in _ID_FIELDS and _NODE_ID.fullmatch(v):
                    self._ids.add(v)
                elif isinstance(v, str) and k in _KEY_FIELDS:
                    self._keys.add(v)
                else:
                    self._walk(v)
        elif isinstance(value, list):
            for v in value:
                self._walk(v)

    def _hash(self, label: bytes, text: str) -> bytes:
        return hmac.new(self._key, label + text.encode(), hashlib.sha256).digest()

    def replace(self, text: str) -> str:
        if text in self._keep:
            return text
        if text in self._ids:
            raw = self._hash(b"node:", text)[:20]
            return base64.b32encode(raw).decode().lower()
        if text in self._keys:
            return b64url(self._hash(b"key:", text))
        return text

    def stream(self, stream: str) -> str:
        prefix, sep, rest = stream.partition(":")
        return f"{prefix}{sep}{self.replace(rest)}" if sep else stream

    def payload(self, payload: bytes) -> bytes:
        try:
            value = decode_payload(payload)
        except ValueError:
            return payload
        return canonical_json(self._rewrite(value))

    def _rewrite(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._rewrite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._rewrite(v) for v in value]
        if isinstance(value, str):
            return self.replace(value)
        return value


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
    tmp = out.with_name(out.name + ".partial")
    written = 0
    with tmp.open("wb") as f:
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
