"""Event-store figures: batched and single appends, against raw primitives and eventsourcing.

What each figure compares (every baseline is measured in the same run, on the same disk, with
``journal_mode=WAL`` and ``synchronous=FULL``; appends are interleaved batch by batch with their
baselines so load from other processes hits both sides alike):

* ``store_append_batch_1000`` — ``SQLiteEventStore.append`` of 1000 ``PeerDiscovered`` events on
  1000 new streams: stream-version lookup, RFC 8785 payloads, the entry-hash chain, one
  ``InProcessSigner`` call signing 1000 hashes, one transaction inserting the rows and updating
  the ``peers`` projection, the Merkle frontier, and the checkpoint that becomes due (every 100
  entries by default, so one signed checkpoint per batch). Baseline
  ``raw_canonical_sha256_sign_insert``: for the same payloads, per event ``canonical_json`` +
  SHA-256 + PyNaCl Ed25519 sign, then one ``executemany`` INSERT of 1000 rows into a bare table
  and COMMIT — the floor any signed, durable log in Python pays.
* ``store_append_1000_streams`` / ``store_append_1_stream`` vs ``eventsourcing_sqlite_*`` — the
  same store path, but with no projection registered (eventsourcing's ``save`` maintains no read
  model either, so this is log against log), against eventsourcing 9.5.6's ``Application``
  with its SQLite persistence
  module (``PERSISTENCE_MODULE=eventsourcing.sqlite``, a file database, every other setting its
  default: WAL which it switches on itself, SQLite's default ``synchronous=FULL`` (both read
  back from its connection and printed), its ``SQLiteApplicationRecorder``, which INSERTs one row
  per ``execute`` to collect notification ids, UUID originator ids, JSON transcoder, no
  compression, no cipher, no snapshots, no repository cache). Their side times
  ``app.save(...)``: collecting the pending events, its mapper (``vars(event)`` → JSON
  transcoder → ``StoredEvent``), one transaction with the inserts, COMMIT. Building the
  aggregates (and triggering their events, which also applies them to the aggregates) happens
  before the clock starts, as building our ``NewEvent`` objects does. Shape (a): 1000 new
  aggregates in one ``save`` call vs 1000 new streams in one ``append``; shape (b): one aggregate
  with 1000 new events saved once vs 1000 events on one stream in one ``append``. Our side does
  more (chain, signatures, Merkle frontier, checkpoint); theirs has no integrity at all.
* ``store_append_one_p50``/``_p99`` — latency of ``append_one`` over 1000 calls (one event on a
  new stream: the stream-version lookup and the commit are one thread hand-off each, then the
  signature and the fsync of the commit; every 100th call also signs and stores the checkpoint
  that falls due, i.e. 1 % of calls, right at the p99 boundary) vs a bare ``INSERT`` + ``COMMIT``
  of a row with a payload of the same size. A latency ratio is ours / baseline: LOWER is better.
* ``store_rebuild_projections`` — ``rebuild_projections()`` with every node projection over a log
  of N entries (N = min(``OPENRED_BENCH_VERIFY_ENTRIES``, 200000); a mix of peers, tokens,
  sessions and messages) vs reading the same rows with ``SELECT * FROM events`` and
  ``json.loads`` of each payload.

* ``store_group_commit_200`` — 200 concurrent ``append_one`` calls (``asyncio.gather``, one
  coroutine per call as one HTTP request each would be) vs one ``append`` of the same 200 events
  on another store: the rate of the first over the rate of the second. Group commit merges the
  200 calls into one chained, signed batch and one transaction, so the ratio shows what the
  per-caller bookkeeping costs (1.0 would be free).
* ``store_loop_stall_batch_5000`` — the longest the event loop is kept from running during an
  append of 5000 events (a coroutine sleeping 1 ms in a loop measures the gap between its
  wake-ups minus the 1 ms), median over 10 appends, vs the same probe on an idle loop for as
  long (the per-append maxima are printed too).
* ``store_loop_stall_proof_1m`` — the same probe during an inclusion and a consistency proof on a
  log of 1,000,000 entries, median over 20 pairs. That log is synthetic past its genesis entry
  (rows written directly with random entry hashes and no valid chain or signatures): a proof
  reads entry hashes only.

Rates are medians over batches (robust to the odd stall on a shared machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nacl.signing

from bench.common import percentiles, report
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import PeersProjection, node_projections
from openred.store.codec import canonical_json
from openred.store.events import NewEvent
from openred.store.projections import ProjectionRegistry
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.store.history import fake_id, peer_event, peer_payload, session_events

BATCH = 1000
BATCHES = 20
SINGLE_APPENDS = 1000
REPLAY_CAP = 200_000


class _Clock:
    """A strictly increasing clock (recorded_at never repeats, as on a real node)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


async def _open_store(path: Path, projections: ProjectionRegistry) -> SQLiteEventStore:
    return await SQLiteEventStore.open(
        path, InProcessSigner.from_seed(b"\x42" * 32), registry=node_registry(),
        projections=projections, clock=_Clock(), checkpoint_interval=0,
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


# -- the raw baseline ---------------------------------------------------------------------------


class _RawLog:
    """Canonical JSON + SHA-256 + Ed25519 + executemany into a bare table: the floor."""

    def __init__(self, path: Path) -> None:
        self.conn = _connect(path)
        self.conn.execute(
            "CREATE TABLE log (seq INTEGER PRIMARY KEY, payload BLOB, hash BLOB, sig BLOB)"
        )
        self.key = nacl.signing.SigningKey(b"\x43" * 32)
        self.seq = 0

    def append(self, payloads: list[dict[str, Any]]) -> None:
        sign, sha256 = self.key.sign, hashlib.sha256
        rows = []
        for payload in payloads:
            self.seq += 1
            data = canonical_json(payload)
            digest = sha256(data).digest()
            rows.append((self.seq, data, digest, sign(digest).signature))
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows)
        self.conn.execute("COMMIT")


# -- eventsourcing ------------------------------------------------------------------------------


def _eventsourcing_app(path: Path) -> Any:
    """An eventsourcing Application on a SQLite file, every other setting its default."""
    from eventsourcing.application import Application

    class PeerDirectory(Application[Any]):
        pass

    return PeerDirectory(env={
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
    })


def _peer_aggregate_class() -> Any:
    from eventsourcing.domain import Aggregate, event

    class Peer(Aggregate):
        @event("Discovered")
        def __init__(self, node_id: str, api_url: str, sign_key: str, box_key: str) -> None:
            self.node_id, self.api_url = node_id, api_url
            self.sign_key, self.box_key = sign_key, box_key

        @event("Rediscovered")
        def rediscover(self, node_id: str, api_url: str, sign_key: str, box_key: str) -> None:
            self.api_url, self.sign_key, self.box_key = api_url, sign_key, box_key

    return Peer


def _eventsourcing_settings(app: Any) -> str:
    """The journal mode and synchronous level eventsourcing's own connection uses."""
    datastore = app.recorder.datastore
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA journal_mode")
        journal = cursor.fetchone()[0]
        cursor.execute("PRAGMA synchronous")
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[cursor.fetchone()[0]]
    return f"journal_mode={journal} synchronous={sync}"


# -- runners ------------------------------------------------------------------------------------


def _median_rate(times: list[float], n: int = BATCH) -> float:
    return n / statistics.median(times)


async def _batches(root: Path) -> None:
    """Figures 1 and 2: batched appends, interleaved with their three baselines."""
    peers = ProjectionRegistry([PeersProjection()])
    many = await _open_store(root / "many.db", peers)
    # Against eventsourcing, whose save() maintains no read model, our store keeps none either:
    # log against log (chain, signatures and checkpoints still on our side only).
    many_bare = await _open_store(root / "many_bare.db", ProjectionRegistry())
    one = await _open_store(root / "one.db", ProjectionRegistry())
    raw = _RawLog(root / "raw.db")
    es_many = _eventsourcing_app(root / "es_many.db")
    es_one = _eventsourcing_app(root / "es_one.db")
    settings = _eventsourcing_settings(es_many)
    peer_cls = _peer_aggregate_class()
    single = peer_cls(**peer_payload(-1))
    es_one.save(single)
    one_stream = ev.node_stream(fake_id(-1))
    times: dict[str, list[float]] = {
        k: [] for k in ("many", "many_bare", "one", "raw", "es_many", "es_one")
    }
    clock = time.perf_counter
    try:
        for b in range(BATCHES):
            base = b * BATCH
            payloads = [peer_payload(i) for i in range(base, base + BATCH)]
            events = [NewEvent(ev.node_stream(p["node_id"]), ev.PEER_DISCOVERED, p)
                      for p in payloads]
            one_events = [NewEvent(one_stream, ev.PEER_DISCOVERED, p) for p in payloads]
            aggregates = [peer_cls(**p) for p in payloads]
            for p in payloads:
                single.rediscover(**p)

            t = clock()
            await many.append(events)
            times["many"].append(clock() - t)
            t = clock()
            raw.append(payloads)
            times["raw"].append(clock() - t)
            t = clock()
            await many_bare.append(events)
            times["many_bare"].append(clock() - t)
            t = clock()
            es_many.save(*aggregates)
            times["es_many"].append(clock() - t)
            t = clock()
            await one.append(one_events)
            times["one"].append(clock() - t)
            t = clock()
            es_one.save(single)
            times["es_one"].append(clock() - t)
    finally:
        await many.close()
        await many_bare.close()
        await one.close()
        raw.conn.close()
        es_many.close()
        es_one.close()
    rate = {k: _median_rate(v) for k, v in times.items()}
    report("store_append_batch_1000", rate["many"], "events/s",
           "raw_canonical_sha256_sign_insert", rate["raw"])
    print(f"# eventsourcing {_eventsourcing_version()} SQLite: {settings}", flush=True)
    report("store_append_1000_streams", rate["many_bare"], "events/s",
           "eventsourcing_sqlite_1000_streams", rate["es_many"])
    report("store_append_1_stream", rate["one"], "events/s",
           "eventsourcing_sqlite_1_stream", rate["es_one"])


def _eventsourcing_version() -> str:
    from importlib.metadata import version

    return version("eventsourcing")


async def _single(root: Path) -> None:
    """Figure 3: ``append_one`` latency vs a bare INSERT + COMMIT, interleaved."""
    store = await _open_store(root / "single.db", ProjectionRegistry([PeersProjection()]))
    conn = _connect(root / "bare.db")
    conn.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, payload BLOB)")
    ours: list[float] = []
    bare: list[float] = []
    clock = time.perf_counter
    try:
        for i in range(SINGLE_APPENDS):
            event = peer_event(1_000_000 + i)
            payload = canonical_json(dict(event.payload))
            t = clock()
            await store.append_one(event)
            ours.append(clock() - t)
            t = clock()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO log VALUES (?, ?)", (i + 1, payload))
            conn.execute("COMMIT")
            bare.append(clock() - t)
    finally:
        await store.close()
        conn.close()
    ours_p50, ours_p99 = percentiles(ours)
    bare_p50, bare_p99 = percentiles(bare)
    # Latencies: ratio = ours / baseline, so LOWER is better.
    report("store_append_one_p50", ours_p50 * 1e6, "us", "sqlite_insert_commit_p50",
           bare_p50 * 1e6)
    report("store_append_one_p99", ours_p99 * 1e6, "us", "sqlite_insert_commit_p99",
           bare_p99 * 1e6)


def _history(n: int) -> Iterator[list[NewEvent]]:
    """Batches of a node history: per unit i, one peer and its session (5 events)."""
    batch: list[NewEvent] = []
    i = 0
    while n > 0:
        unit = [peer_event(i), *session_events(i)][:n]
        batch.extend(unit)
        n -= len(unit)
        i += 1
        if len(batch) >= 5 * BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def _replay(root: Path) -> None:
    """Figure 4: rebuilding every node projection vs a plain SELECT + json.loads."""
    entries = min(int(os.environ.get("OPENRED_BENCH_VERIFY_ENTRIES", "1000000")), REPLAY_CAP)
    path = root / "replay.db"
    store = await _open_store(path, node_projections())
    try:
        for batch in _history(entries - 1):  # the genesis entry is the first of N
            await store.append(batch)
        t = time.perf_counter()
        count = await store.rebuild_projections()
        ours = count / (time.perf_counter() - t)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        t = time.perf_counter()
        loads = json.loads
        n = 0
        for row in conn.execute("SELECT * FROM events"):
            loads(row[6])
            n += 1
        baseline = n / (time.perf_counter() - t)
    finally:
        conn.close()
    print(f"# replay log: {count} entries", flush=True)
    report("store_rebuild_projections", ours, "events/s", "select_json_loads", baseline)


GROUP = 200
GROUP_ROUNDS = 20
STALL_BATCH = 5000
STALL_BATCHES = 10
PROOF_LOG = 1_000_000
PROOFS = 20
TICK = 0.001


async def _group_commit(root: Path) -> None:
    """200 concurrent append_one vs one append of the same 200 events, interleaved."""
    peers = ProjectionRegistry([PeersProjection()])
    concurrent = await _open_store(root / "group.db", peers)
    batched = await _open_store(root / "group_batch.db", ProjectionRegistry([PeersProjection()]))
    ours: list[float] = []
    base: list[float] = []
    clock = time.perf_counter
    try:
        for r in range(GROUP_ROUNDS):
            events = [peer_event(5_000_000 + r * GROUP + i) for i in range(GROUP)]
            t = clock()
            await asyncio.gather(*(concurrent.append_one(e) for e in events))
            ours.append(clock() - t)
            t = clock()
            await batched.append(events)
            base.append(clock() - t)
    finally:
        await concurrent.close()
        await batched.close()
    report("store_group_commit_200", _median_rate(ours, GROUP), "events/s",
           "one_append_of_200", _median_rate(base, GROUP))


class _StallProbe:
    """Measures the longest gap between 1 ms timer ticks of the running loop, minus the tick."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - TICK)
            last = now

    async def __aenter__(self) -> _StallProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(TICK)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _idle_stalls(windows: int, seconds: float) -> list[float]:
    """The same probe on an idle loop: the longest gap in each of ``windows`` windows."""
    out = []
    async with _StallProbe() as probe:
        for _ in range(windows):
            probe.worst = 0.0
            await asyncio.sleep(seconds)
            out.append(probe.worst)
    return out


def _report_stalls(name: str, ours: list[float], idle: list[float]) -> None:
    """Median over operations of the longest stall during each one, against the idle loop.

    The median, not the maximum over all operations: on a machine shared with other work the
    operating system alone preempts the process for tens of milliseconds now and then (the idle
    baseline shows it), which says nothing about the store. The maximum is printed as well.
    """
    print(f"# {name}: longest stall per operation, ms: "
          f"{' '.join(f'{x * 1e3:.1f}' for x in ours)}; idle windows: "
          f"{' '.join(f'{x * 1e3:.1f}' for x in idle)}", flush=True)
    report(name, statistics.median(ours) * 1e3, "ms", "idle_loop_1ms_tick",
           statistics.median(idle) * 1e3)


async def _loop_stall_batch(root: Path) -> None:
    store = await _open_store(root / "stall.db", ProjectionRegistry([PeersProjection()]))
    ours: list[float] = []
    try:
        batches = [[peer_event(7_000_000 + b * STALL_BATCH + i) for i in range(STALL_BATCH)]
                   for b in range(STALL_BATCHES)]
        # The benchmark's own prepared events go to the collector's permanent generation: a
        # service does not hold such a heap, and every full collection the store's
        # allocations trigger would otherwise scan them all while holding the GIL.
        gc.collect()
        gc.freeze()
        t = time.perf_counter()
        try:
            async with _StallProbe() as probe:
                for batch in batches:
                    probe.worst = 0.0
                    await store.append(batch)
                    await asyncio.sleep(2 * TICK)  # the probe's tick after the append counts
                    ours.append(probe.worst)
        finally:
            gc.unfreeze()
        busy = time.perf_counter() - t
    finally:
        await store.close()
    idle = await _idle_stalls(len(ours), busy / len(ours))
    _report_stalls("store_loop_stall_batch_5000", ours, idle)


def _synthetic_log(path: Path, size: int) -> None:
    """Rows 2..size with random entry hashes after the store's genesis entry (see above)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        seq = 1
        while seq < size:
            n = min(50_000, size - seq)
            rows = [(s, f"x:{s}", 1, "Synthetic", 1, "2026-11-25T12:00:00.000000Z", b"{}",
                     bytes(32), os.urandom(32), bytes(64))
                    for s in range(seq + 1, seq + n + 1)]
            conn.executemany(
                "INSERT INTO events (seq, stream, stream_version, type, schema_version, "
                "recorded_at, payload, prev_hash, entry_hash, signature) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            seq += n
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _loop_stall_proof(root: Path) -> None:
    path = root / "proof.db"
    store = await _open_store(path, ProjectionRegistry())
    await store.close()
    _synthetic_log(path, PROOF_LOG)
    store = await _open_store(path, ProjectionRegistry())
    try:
        assert store.head.size == PROOF_LOG
        ours: list[float] = []
        t = time.perf_counter()
        async with _StallProbe() as probe:
            for i in range(PROOFS):
                probe.worst = 0.0
                await store.inclusion_proof(1 + (i * 7_919_993) % PROOF_LOG)
                await store.consistency_proof(PROOF_LOG // 2 + i)
                await asyncio.sleep(2 * TICK)
                ours.append(probe.worst)
        busy = time.perf_counter() - t
    finally:
        await store.close()
    idle = await _idle_stalls(len(ours), busy / len(ours))
    print(f"# {PROOFS} inclusion + {PROOFS} consistency proofs on {PROOF_LOG} entries: "
          f"{busy * 1e3 / (2 * PROOFS):.2f} ms per proof", flush=True)
    _report_stalls("store_loop_stall_proof_1m", ours, idle)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="openred-bench-store-") as tmp:
        root = Path(tmp)
        asyncio.run(_batches(root))
        asyncio.run(_single(root))
        asyncio.run(_group_commit(root))
        asyncio.run(_loop_stall_batch(root))
        asyncio.run(_loop_stall_proof(root))
        asyncio.run(_replay(root))


if __name__ == "__main__":
    main()
