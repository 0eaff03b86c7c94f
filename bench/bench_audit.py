"""Audit benchmarks: `audit_tools verify` on a big log, and replaying it.

* ``audit_verify_<N>``: entries/s of a full ``verify`` (steps 1-6: chain, signatures on every
  core, checkpoints) against ``ed25519_verify_x<cores>``: the raw PyNaCl verify rate measured
  here on one core, times the cores verify uses. Target ratio >= 0.8.
* ``audit_verify_<N>_with_projections``: the same plus step 7 (replaying every projection and
  comparing tables), against the same baseline, to show what step 7 costs.
* ``audit_replay_<N>``: ``audit_tools replay`` (checks each entry, copies it, applies the node
  projections) in events/s, against reading the same rows with a plain ``SELECT`` and
  ``json.loads`` of each payload.

``OPENRED_BENCH_VERIFY_ENTRIES`` sets N (default 1,000,000). The log is built once, in a temp
dir, with the store's own batched append and an in-process signer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import nacl.bindings
import nacl.signing

from audit_tools.replay import replay
from audit_tools.source import open_source
from audit_tools.verify import verify
from bench.common import report
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore

ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def _node_id(i: int) -> str:
    digest = hashlib.sha256(b"peer%d" % i).digest()
    return "".join(ALPHABET[b % 32] for b in digest[:32])


def _events(start: int, count: int) -> list[NewEvent]:
    out = []
    for i in range(start, start + count):
        node_id = _node_id(i % 5000)
        if i % 4 == 3:
            session = f"s{i % 20000}"
            out.append(NewEvent(ev.session_stream(session), ev.MESSAGE_RECEIVED, {
                "message_id": f"m{i}", "session_id": session, "peer": node_id, "size": 120,
                "body": "A" * 160,
            }))
        else:
            out.append(NewEvent(ev.node_stream(node_id), ev.PEER_DISCOVERED, {
                "node_id": node_id, "api_url": f"https://peer{i % 5000}.example:8443",
                "sign_key": "k" * 43, "box_key": "b" * 43,
            }))
    return out


async def _build(path: Path, n: int) -> None:
    signer = InProcessSigner.from_seed(b"\x42" * 32)
    store = await SQLiteEventStore.open(path, signer, registry=node_registry(),
                                        projections=node_projections(), checkpoint_every=1000,
                                        checkpoint_interval=0)
    try:
        written = store.head.size
        while written < n:
            count = min(1000, n - written)
            await store.append(_events(written, count))
            written += count
    finally:
        await store.close()


def _raw_verify_rate() -> float:
    key = nacl.signing.SigningKey(b"\x01" * 32)
    pk = bytes(key.verify_key)
    messages = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(3000)]
    signed = [key.sign(m).signature + m for m in messages]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for sm in signed:
            nacl.bindings.crypto_sign_open(sm, pk)
        best = max(best, len(signed) / (time.perf_counter() - start))
    return best


def _select_json_rate(db: Path) -> float:
    conn = sqlite3.connect(db)
    start = time.perf_counter()
    count = 0
    for row in conn.execute("SELECT * FROM events ORDER BY seq"):
        json.loads(row[6])
        count += 1
    rate = count / (time.perf_counter() - start)
    conn.close()
    return rate


def main() -> None:
    n = int(os.environ.get("OPENRED_BENCH_VERIFY_ENTRIES", "1000000"))
    with tempfile.TemporaryDirectory(prefix="openred-bench-audit-") as tmp:
        data = Path(tmp)
        start = time.perf_counter()
        asyncio.run(_build(data, n))
        print(f"# built a {n}-entry log in {time.perf_counter() - start:.1f} s", flush=True)
        db = data / "openred.db"

        raw = _raw_verify_rate()
        for projections, suffix in ((False, ""), (True, "_with_projections")):
            start = time.perf_counter()
            result = verify(data, projections=projections)
            elapsed = time.perf_counter() - start
            assert result.ok, result.reason
            report(f"audit_verify_{n}{suffix}", result.entries / elapsed, "entries/s",
                   f"ed25519_verify_x{result.workers}", raw * result.workers, "verifies/s")

        baseline = _select_json_rate(db)
        source = open_source(data)
        start = time.perf_counter()
        state = replay(source, result.entries)
        elapsed = time.perf_counter() - start
        source.close()
        report(f"audit_replay_{n}", state.position / elapsed, "events/s",
               "select_json_loads", baseline)
