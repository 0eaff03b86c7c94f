"""The directory service: gathers state, calls a ``decide_*``, appends, pushes (the shell).

Routes call these methods with plain values and serialize what they return; every refusal is a
:class:`~openred.errors.RequestRefused` raised by a decision (or by the rate limiter here).

Concurrent appends are committed as one group by the store (one transaction, one signing
call), so registrations under load share commits. Commands on one node are serialized by a
striped lock, so two concurrent requests for the same node never decide from the same stale
state.

Node rows are cached in memory (:class:`_NodeCache`): an append by this process drops the
entries of the nodes it touches, and any write by another process (``openred directory
revoke`` while the server runs) is seen before every lookup — the newest ``seq`` in the log,
read on a private read-only connection in microseconds, is ahead of what this process appended
and has in flight — and empties the cache (at the latest once this process's appends in flight
at that moment have returned). Concurrent grants share checkpoints: a grant waits for a checkpoint
that covers its entry instead of signing one of its own when one is already being signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import sqlite3
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
from sqlalchemy import func
from sqlmodel import col, select

from openred import __version__
from openred.crypto.checks import InlineChecker, ProcessChecker, SignatureChecker
from openred.crypto.client import GrantToSeal, JailClient, JailSigner, SignCoalescer
from openred.crypto.grants import new_grant
from openred.crypto.identity import EntryHash, NodeId, Signature, SignKey, b64url
from openred.crypto.methods import DEFAULT_REGISTRY, select_crypto_method
from openred.crypto.records import (
    SignedNodeRecord,
    record_signature_check,
    verify_signed_record,
)
from openred.crypto.transparency import (
    InclusionProof,
    connection_granted_payload,
    directory_origin,
    entry_to_wire,
    verify_directory_checkpoint,
)
from openred.directory import decisions as d
from openred.directory import events as ev
from openred.directory.events import directory_registry
from openred.directory.keys import jail_is_external
from openred.directory.models import DirectoryNode
from openred.directory.projections import directory_projections, node_row
from openred.directory.tree import ProofTree
from openred.errors import (
    CheckpointError,
    CryptoError,
    InvalidSignature,
    JailError,
    OpenRedError,
    RequestRefused,
    StoreError,
    TamperedLog,
)
from openred.modules.monitoring.health import SharedChecks
from openred.ratelimit import FairShare, Held, InFlight, RateLimiter, client_key
from openred.settings import DirectorySettings
from openred.store.chain import recompute_hash
from openred.store.checkpoint import (
    Checkpoint,
    parse_checkpoint_body,
    parse_signed_note,
    vkey,
)
from openred.store.events import NewEvent, StoredEvent
from openred.store.merkle import leaf_hash
from openred.store.readmodels import ReadModels
from openred.store.signer import Signer as LogSigner
from openred.store.sqlite import (
    DATABASE_NAME,
    EVENT_COLUMNS,
    SQLiteEventStore,
    readonly_uri,
    row_to_event,
)
from openred.web.client import HttpClient, Signer
from openred.web.signatures import InboundVerifier, restore_nonces, save_nonces
from openred.web.urls import check_url

__all__ = ["DirectoryService", "GrantOutcome", "push_bodies"]

logger = logging.getLogger("openred.directory")

RECEIVE_PATH = "/api/v3/tokens/receive"
PUSH_REPLY_BYTES = 16 * 1024
"""The most of a push's answer the directory reads: only its status counts, and a node's
acknowledgement or problem is a few hundred bytes; a receiver answering more fails its push
(with 256 pushes in flight, the client's 1 MiB limit would let receivers hold 256 MiB)."""
_STRIPES = 256
READ_POOL = 16
MAX_PAGE = 100
PUSHES_PER_GRANT = 2
SIGN_BATCH = 8
"""Most signatures one jail call carries for the grants in flight: the jail signs a batch on
one thread, one item after the other, so a larger batch would save little more per item and
make every grant in it wait for all of it."""


@dataclass(slots=True)
class _Note:
    """A signed checkpoint of the directory's log: its size, root and note text.

    ``checked``: the proof tree's root at ``size`` is known to be ``root`` (a note signed from
    the tree is; a note the store signed is compared once, before its first proof leaves).
    """

    size: int
    root: bytes
    text: bytes
    checked: bool


def _parsed_note(text: bytes) -> _Note:
    checkpoint = parse_checkpoint_body(parse_signed_note(text).body)
    return _Note(checkpoint.size, checkpoint.root_hash, text, checked=False)


@dataclass(frozen=True, slots=True)
class GrantOutcome:
    """What request-connection answers: the grant's public facts and what was delivered."""

    grant_id: str
    expires_at: int
    suite: str
    delivered: dict[str, bool]


_STREAM_SQL = (
    f"SELECT {EVENT_COLUMNS} FROM events "  # noqa: S608 (columns are constants)
    "WHERE stream = ? AND stream_version > ? ORDER BY stream_version")

_FOLD_FROM = 8
"""A node's stream of at least this many entries keeps its folded row in memory
(:class:`_Fold`): a miss of the node cache then reads only the entries after it."""

_FOLDS_MAX = 100_000


@dataclass(frozen=True, slots=True)
class _Fold:
    """A node's row folded from its stream up to ``version`` (entry ``seq``), every entry
    checked against the proof tree when it was read. Memory, not the file: an entry of it
    deleted or edited in the file later changes nothing here."""

    version: int
    seq: int
    row: dict[str, Any] | None


_NODE_STREAMS_SQL = (
    f"SELECT {EVENT_COLUMNS} FROM events "  # noqa: S608 (columns are constants)
    "WHERE stream >= 'node:' AND stream < 'node;' ORDER BY stream, stream_version")


class _NodeCache:
    """Node views by id (None cached too), valid while no other process wrote to the log."""

    MAX = 100_000

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(readonly_uri(path), uri=True, check_same_thread=False)
        self._conn.execute("PRAGMA query_only=1")
        self.known_size = 0
        self.inflight = 0
        self._ours: set[int] = set()  # seqs above known_size accounted for (ours or read)
        self.views: dict[str, d.NodeView | None] = {}
        # Bumped whenever a view may have been dropped: a read that spans a bump may hold
        # what the dropped view held (see DirectoryService.node), so it is not cached. Every
        # entry that can change a view (one on a ``node:`` stream, or any entry of another
        # writer not yet read) is accounted for by a drop and a bump — by appended() once its
        # append returned, or by check() once committed — always after it committed, so a
        # read that starts after a bump sees that entry, and one that spans no bump may be
        # cached: any entry it missed drops its view later.
        self.generation = 0
        self._version: int | None = None
        self._settled = False
        # The schema the store checked at open (SchemaError for any foreign object): the
        # directory never changes it while it serves, so a change is another program's — the
        # append-only triggers dropped, a trigger or view planted — and nothing read after it
        # is believed (check()).
        self._schema = self._schema_version()

    def check(self) -> None:
        """Drop every cached view a committed entry this process has not accounted for touches.

        ``PRAGMA data_version`` changes whenever another connection (this process's writer
        or another process) commits. When it has not changed since a check that found every
        committed entry accounted for (``size <= known_size``, which stays true as
        ``known_size`` only grows), nothing can have changed: the log's size is the same, so
        that check's conclusion holds and ``max(seq)`` need not be read again.

        More new entries than this process has in flight: some are another writer's, the
        whole cache goes. Otherwise they may all be this process's appends that committed but
        have not returned yet — or some may be another writer's (``openred directory revoke``
        while an append is in flight): their streams are read and the view of every node they
        touch is dropped, so no foreign entry is ever hidden by an append in flight (an own
        entry's view is dropped again when its append returns). Either way every committed
        entry is accounted for after the check.
        """
        conn = self._conn
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._version and self._settled:
            return
        if self._schema_version() != self._schema:
            raise StoreError(
                "the directory's database schema was changed by another program while it "
                "serves (a trigger, view, index or table dropped or added): it answers nothing "
                "from that file until restarted, and its start checks the schema")
        self._version = version
        row = conn.execute("SELECT max(seq) FROM events").fetchone()
        size = int(row[0] or 0)
        if size > self.known_size + self.inflight:
            self.views.clear()
            self.generation += 1
            self.known_size = size
            self._ours = {seq for seq in self._ours if seq > size}
        elif size > self.known_size:
            ours, views = self._ours, self.views
            for seq, stream in conn.execute(
                    "SELECT seq, stream FROM events WHERE seq > ? AND seq <= ?",
                    (self.known_size, size)):
                if seq in ours:
                    continue  # returned already: appended() dropped its view
                if stream.startswith("node:"):
                    views.pop(stream.removeprefix("node:"), None)
                    self.generation += 1
                ours.add(seq)  # accounted for (its view, if any, is gone)
            while self.known_size + 1 in ours:
                self.known_size += 1
                ours.discard(self.known_size)
        self._settled = size <= self.known_size

    def nodes_snapshot(self, columns: Sequence[str],
                       ) -> tuple[list[StoredEvent], list[tuple[Any, ...]]]:
        """Every entry of a ``node:`` stream (by stream, in order) and every row of
        ``directory_nodes`` (``columns``), read in one transaction."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            entries = [row_to_event(row) for row in conn.execute(_NODE_STREAMS_SQL)]
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM directory_nodes").fetchall()  # noqa: S608
        finally:
            conn.execute("COMMIT")
        return entries, rows

    def _schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA schema_version").fetchone()[0])

    def stream(self, node_id: str, after: int = 0) -> list[StoredEvent]:
        """The entries of ``node_id``'s stream in the log after stream version ``after``, in
        order (the stream's unique index: an unknown node is one probe, microseconds, as the
        projection's row was)."""
        return [row_to_event(row)
                for row in self._conn.execute(_STREAM_SQL, ("node:" + node_id, after))]

    def appended(self, stored: Sequence[StoredEvent]) -> None:
        for entry in stored:
            if entry.stream.startswith("node:"):
                self.views.pop(entry.stream.removeprefix("node:"), None)
                self.generation += 1
            if entry.seq > self.known_size:
                self._ours.add(entry.seq)
        while self.known_size + 1 in self._ours:
            self.known_size += 1
            self._ours.discard(self.known_size)

    def put(self, node_id: str, view: d.NodeView | None) -> None:
        if len(self.views) >= self.MAX:
            self.views.clear()
        self.views[node_id] = view

    def close(self) -> None:
        self._conn.close()


def _view(row: DirectoryNode) -> d.NodeView:
    return d.NodeView(row.node_id, row.status, row.version, row.record_hash, row.last_seen,
                      row.record, row.signature, row.sign_key)


def _discard(task: asyncio.Future[Any]) -> None:
    """Cancel ``task``, or take its outcome if it has one (so none is reported unretrieved)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


@functools.lru_cache(maxsize=4096)
def _sealable(box_key: bytes) -> bool:
    """Whether a token can be sealed to ``box_key``: libsodium's ``crypto_box_seal`` (in the
    jail) refuses a low-order point, whose X25519 product with any scalar is all zeros."""
    try:
        nacl.bindings.crypto_scalarmult(_PROBE_SCALAR, box_key)
    except nacl.exceptions.CryptoError:
        return False
    return True


_PROBE_SCALAR = bytes([1]) * 32


class DirectoryService:
    """The directory's state and commands, over its store, read models, jail and HTTP client."""

    def __init__(
        self, settings: DirectorySettings, store: SQLiteEventStore, reads: ReadModels,
        jail: JailClient, http: HttpClient, *, clock: Callable[[], float] = time.time,
        signer: LogSigner | None = None, signs: SignCoalescer | None = None,
        checks: SignatureChecker | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reads = reads
        self.jail = jail
        self.http = http
        self.clock = clock
        self.key = store.sign_key
        self.origin = directory_origin(self.key)
        # Ed25519 checks of requests and records (a worker process: ProcessChecker; or inline).
        self.checks: SignatureChecker = checks if checks is not None else InlineChecker()
        self.verifier = InboundVerifier(settings.base_url,
                                        window_seconds=settings.signature_window, clock=clock,
                                        checker=self.checks)
        self.tree = ProofTree()
        self._registry = directory_registry()
        self._arrived: dict[int, bytes] = {}
        # node id -> seq of the newest entry of its stream that this process appended or read
        # into the proof tree: a stream read from the file that lacks it (deleted, or hidden
        # by an edited index) is refused (_check_stream).
        self._stream_last: dict[str, int] = {}
        # node id -> its long stream folded so far (never evicted, so a read after one always
        # finds the fold it started from; at most _FOLDS_MAX, then no new ones)
        self._folds: dict[str, _Fold] = {}
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]
        self._last_seen: dict[str, int] = {}
        self._started = int(clock())
        self._cache = _NodeCache(settings.data_dir / DATABASE_NAME)
        self._note: _Note | None = None
        self.health_checks = SharedChecks()
        """The public health route's checks: one run at a time, shared (a burst of requests)."""
        # Signs checkpoints of the proof tree (the store's own signer, the jail): None → every
        # checkpoint is the store's.
        self._signer = signer
        # The grant's signature goes to the jail with the push signatures of this and other
        # grants in flight (one sign_many per turn of the loop; see SignCoalescer).
        self._signs = signs if signs is not None else SignCoalescer(jail, max_batch=SIGN_BATCH)
        self._records: dict[tuple[str, str], SignedNodeRecord] = {}
        self._keys: dict[str, tuple[SignKey, str]] = {}
        self._signing: asyncio.Task[None] | None = None
        window = settings.rate_window
        self.initiator_limit = RateLimiter(settings.rate_per_initiator, window)
        # A target's budget is shared by the client networks naming it (a sybil's node ids
        # are free, its networks are not), and pushes in flight are charged to the network
        # that asked for the grant: docs/decisions.md, "Fair grants under sybil nodes".
        self.target_limit = FairShare(settings.rate_per_target, window)
        self.client_limit = RateLimiter(settings.rate_per_client, window)
        self.pushes = InFlight(settings.pushes_per_network, settings.pushes_in_flight)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, settings: DirectorySettings, jail: JailClient, *,
        clock: Callable[[], float] = time.time,
    ) -> DirectoryService:
        """Open the directory's log (kind ``directory``) and everything that reads it."""
        signer = await JailSigner.create(jail)
        signs = SignCoalescer(jail, max_batch=SIGN_BATCH)
        try:
            store = await SQLiteEventStore.open(
                settings.data_dir, signer, kind="directory", registry=directory_registry(),
                projections=directory_projections(),
            )
        except TamperedLog as exc:
            advice = await _witness_advice(exc.reason, settings, jail,
                                           directory_origin(signer.sign_key))
            raise TamperedLog(exc.seq, advice) from None
        http = HttpClient(
            signer=Signer("directory", _jail_base_signer(signs)),
            allow_private=settings.allow_private_urls, attempts=settings.push_attempts,
            # No push waits for room in the pool (pushes in flight are bounded by its size).
            limit=settings.pushes_in_flight, total_timeout=settings.push_timeout,
            connect_timeout=min(3.0, settings.push_timeout), clock=clock,
        )
        # As many pooled connections as requests a loaded directory serves at once: a smaller
        # pool opens and closes an overflow connection (and its aiosqlite thread) per read.
        reads = ReadModels(settings.data_dir / DATABASE_NAME, pool_size=READ_POOL)
        # Started last (below): nothing before it can fail and leave its worker running.
        checks = ProcessChecker() if settings.signature_worker else InlineChecker()
        service = cls(settings, store, reads, jail, http, clock=clock, signer=signer,
                      signs=signs, checks=checks)
        await service._sync_tree(store.head.size)
        await service._check_nodes_table()
        # Checkpoints pushed with grants are signed from the proof tree and kept in memory
        # only (the entries they cover are durable; see _sign_from_tree). One stored checkpoint
        # of the whole durable log at start keeps GET /directory/checkpoint at or beyond every
        # checkpoint pushed before a restart.
        await store.checkpoint()
        if isinstance(checks, ProcessChecker):
            await checks.start()
        return service

    async def _check_nodes_table(self) -> None:
        """Compare ``directory_nodes`` with every node's stream in the log; rebuild the
        projections from the log when they differ (rows written by another program while the
        directory was stopped), with a warning naming the nodes.

        Decisions never read the table (:meth:`node`), but discovery pages and counts do.
        """
        columns = list(DirectoryNode.model_fields)
        # One snapshot for both (another process may be serving and appending meanwhile:
        # `openred directory revoke` opens this too), and the tree up to its last entry.
        entries, rows = self._cache.nodes_snapshot(columns)
        if entries:
            await self._sync_tree(max(e.seq for e in entries))
        self._check_entries(entries)
        truth: dict[str, dict[str, Any]] = {}
        start = 0
        for i in range(1, len(entries) + 1):
            if i == len(entries) or entries[i].stream != entries[start].stream:
                row = node_row(self._registry.decode(e) for e in entries[start:i])
                if row is not None:
                    truth[str(row["node_id"])] = row
                    last = entries[i - 1]
                    self._keep_fold(str(row["node_id"]),
                                    _Fold(last.stream_version, last.seq, row))
                start = i
        table = {str(r[0]): dict(zip(columns, r, strict=True)) for r in rows}
        wrong = sorted(n for n in truth.keys() | table.keys() if truth.get(n) != table.get(n))
        if not wrong:
            return
        logger.warning(
            "directory_nodes disagreed with the log for %d node(s) (%s%s): the database was "
            "written by another program while the directory was stopped; the projections are "
            "rebuilt from the log (run `audit_tools verify` on a copy taken before this start "
            "to see what was written)", len(wrong), ", ".join(wrong[:5]),
            ", …" if len(wrong) > 5 else "")
        await self.store.rebuild_projections()

    def restore_nonces(self) -> None:
        """Know again the nonces a cleanly stopped server saved (the serving process's start;
        :func:`~openred.web.signatures.restore_nonces`)."""
        restore_nonces(self.verifier, self.settings.data_dir)

    def save_nonces(self) -> None:
        """Save the live nonces for the next start (the serving process, when it stops)."""
        save_nonces(self.verifier, self.settings.data_dir)

    async def close(self) -> None:
        await self.checks.close()
        self._cache.close()
        await self.http.close()
        await self.reads.close()
        await self.store.close()

    def now(self) -> int:
        return int(self.clock())

    # -- the proof tree ----------------------------------------------------------------------

    def _track(self, stored: list[StoredEvent]) -> None:
        """Feed this process's appends to the cache and the tree, in seq order.

        Concurrent appends may return out of order: entries wait in ``_arrived`` until the ones
        before them are in. A gap left by another process is filled by :meth:`_sync_tree`.
        """
        self._cache.appended(stored)
        tree, arrived = self.tree, self._arrived
        for entry in stored:
            self._saw(entry.stream, entry.seq)
            if entry.seq > len(tree):
                arrived[entry.seq] = entry.entry_hash
        while (nxt := len(tree) + 1) in arrived:
            tree.append(arrived.pop(nxt))

    async def _sync_tree(self, size: int) -> None:
        if len(self.tree) >= size:
            return
        rows = await self.store.query(
            "SELECT seq, entry_hash, stream FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
            (len(self.tree), size),
        )
        for seq, digest, stream in rows:
            if seq == len(self.tree) + 1:
                self.tree.append(bytes(digest))
                self._arrived.pop(seq, None)
                self._saw(str(stream), seq)
        while (nxt := len(self.tree) + 1) in self._arrived:
            self.tree.append(self._arrived.pop(nxt))

    def _saw(self, stream: str, seq: int) -> None:
        if stream.startswith("node:"):
            node_id = stream[5:]
            if seq > self._stream_last.get(node_id, 0):
                self._stream_last[node_id] = seq

    def _check_stream(self, node_id: str, entries: Sequence[StoredEvent],
                      last: int | None, fold: _Fold | None) -> None:
        """StoreError unless ``entries`` (the stream as read after ``fold``) is whole:
        versions on from the fold's with no gap, holding ``last`` (what :meth:`_saw` knew
        before the read) unless the fold does. The entries left after one is deleted all still
        hash to their leaves; the schema check does not see a writer that puts the append-only
        triggers and ``PRAGMA schema_version`` back afterwards."""
        after, folded = (0, 0) if fold is None else (fold.version, fold.seq)
        whole = all(e.stream_version == after + i for i, e in enumerate(entries, 1))
        if whole and (last is None or last <= folded or any(e.seq == last for e in entries)):
            return
        raise StoreError(
            f"node:{node_id}'s stream in the log lacks an entry the directory appended or read "
            f"(seq {last}) or has a gap: its database was written by another program (run "
            "`audit_tools verify` on it)")

    # -- reading -----------------------------------------------------------------------------

    async def node(self, node_id: str) -> d.NodeView | None:
        cache = self._cache
        cache.check()
        if node_id in cache.views:
            return cache.views[node_id]
        generation = cache.generation
        # The node's view comes from its stream in the signed log, not from its row in the
        # ``directory_nodes`` projection: the row is a table any writer of the file can edit
        # (un-revoke a node, delete the row of a revoked one so it registers anew, put back
        # an older record of its own). Each entry read is the one the proof tree holds — the
        # tree every checkpoint the directory signs covers, checked against the jail's witness
        # at open — so an entry edited in the file is refused, not believed.
        view = self._view_from_log(node_id, await self._node_entries(node_id))
        # Only cache what was read while no view was dropped (see _NodeCache.generation): an
        # entry on a node's stream that landed during the read may be missing from what it
        # returned, and its drop has run already. Entries on other streams (grants) change no
        # view and drop none, so a read they land during is cached: a loaded directory always
        # has grants landing, and it used to read the same nodes through SQLModel again and
        # again until one read happened to see no append at all.
        if cache.generation == generation and node_id not in cache.views:
            cache.put(node_id, view)
        return view

    async def _node_entries(self, node_id: str) -> list[StoredEvent]:
        """``node_id``'s stream in the log, whole, with the proof tree holding all of it."""
        # Read with no await in between: every seq known here had committed before the read.
        last = self._stream_last.get(node_id)
        fold = self._folds.get(node_id)
        entries = self._cache.stream(node_id, 0 if fold is None else fold.version)
        self._check_stream(node_id, entries, last, fold)
        if entries and entries[-1].seq > len(self.tree):
            await self._sync_tree(entries[-1].seq)
        return entries

    def _check_entries(self, entries: Sequence[StoredEvent]) -> None:
        """Each entry read from the file is the one the proof tree holds (StoreError if not)."""
        tree = self.tree
        for entry in entries:
            if entry.seq > len(tree) or leaf_hash(recompute_hash(entry)) != tree.leaf(
                    entry.seq - 1):
                raise StoreError(
                    f"the log's entry {entry.seq} ({entry.stream}) is not the one the "
                    "directory's checkpoints cover: its database was written by another "
                    "program (run `audit_tools verify` on it)")

    def _view_from_log(self, node_id: str, entries: Sequence[StoredEvent]) -> d.NodeView | None:
        """The view of ``node_id`` from its fold and ``entries`` (its stream as read after the
        fold it had then; a fold stored meanwhile is newer and only ever grows)."""
        self._check_entries(entries)
        fold = self._folds.get(node_id)
        if fold is not None:
            entries = [e for e in entries if e.stream_version > fold.version]
        row = node_row((self._registry.decode(entry) for entry in entries),
                       None if fold is None else fold.row)
        if entries:
            self._keep_fold(node_id, _Fold(entries[-1].stream_version, entries[-1].seq, row))
        if row is None:
            return None
        return d.NodeView(node_id, str(row["status"]), int(row["version"] or 0),
                          str(row["record_hash"]), int(row["last_seen"] or 0),
                          str(row["record"]), str(row["signature"]), str(row["sign_key"]))

    def _keep_fold(self, node_id: str, fold: _Fold) -> None:
        held = self._folds.get(node_id)
        if fold.version >= _FOLD_FROM and (
                held.version < fold.version if held is not None
                else len(self._folds) < _FOLDS_MAX):
            self._folds[node_id] = fold

    async def resolve_key(self, keyid: str) -> SignKey | None:
        """The key of a node the directory knows (revoked included: they get 403, not 401)."""
        try:
            NodeId(keyid)
        except ValueError:
            return None
        node = await self.node(keyid)
        if node is None or node.status == d.DEREGISTERED:
            return None
        # The projection copied sign_key from the record the node signed (and whose id it
        # is) — but the projection is a table, not the signed log: a key written into it by
        # anyone who can write the database file would sign for the node. A node id is its
        # key's hash, so only the key whose id it is resolves (one string comparison: the id
        # is computed once per key, with its decoding).
        key, key_id = self._sign_key(node.sign_key)
        return key if key_id == keyid else None

    def _signed_record(self, node: d.NodeView) -> SignedNodeRecord:
        """``node.signed_record()``, parsed and verified once per record (bounded memo).

        The nodes table is a projection, not the signed log: a record written into it (a URL
        and box key of someone else's, under the node's old signature) would have the grant
        sealed to that box key and pushed to that URL. So a record is used only once it
        verifies as its node's own (``verify_signed_record``, and its id is the row's): one
        Ed25519 verification per record not seen before — none for a record registered
        through this process, which :meth:`_remember_record` puts here verified already.
        Otherwise ``StoreError`` (503; ``audit_tools verify`` names the row).
        """
        memo = self._records
        key = (node.record_json, node.signature)
        signed = memo.get(key)
        if signed is None:
            try:
                signed = node.signed_record()
                verify_signed_record(signed)
            except (CryptoError, InvalidSignature, ValueError) as exc:
                raise StoreError(f"the nodes table's record of {node.node_id} is not one it "
                                 f"signed: {exc}") from exc
            if signed.record.node_id != node.node_id:
                raise StoreError(f"the nodes table's row of {node.node_id} holds the record "
                                 f"of {signed.record.node_id}")
            self._remember_record(key, signed)
        return signed

    def _remember_record(self, key: tuple[str, str], signed: SignedNodeRecord) -> None:
        memo = self._records
        if len(memo) >= _NodeCache.MAX:
            memo.clear()
        memo[key] = signed

    def _sign_key(self, b64: str) -> tuple[SignKey, str]:
        """``SignKey.from_b64url`` and the key's node id, computed once per key (bounded memo)."""
        memo = self._keys
        found = memo.get(b64)
        if found is None:
            if len(memo) >= _NodeCache.MAX:
                memo.clear()
            key = SignKey.from_b64url(b64)
            found = memo[b64] = (key, str(NodeId.for_key(key)))
        return found

    def last_seen(self, node: d.NodeView) -> int:
        return max(self._last_seen.get(node.node_id, 0), node.last_seen)

    def item(self, node: d.NodeView) -> dict[str, Any]:
        """A discovery item: the signed record verbatim plus status and last_seen."""
        return {"record": json.loads(node.record_json), "signature": node.signature,
                "status": node.status, "last_seen": self.last_seen(node)}

    async def discover_one(self, signer: str, node_id: str) -> dict[str, Any]:
        d.decide_discovery_access(await self.node(signer), signer=signer)
        node = await self.node(node_id)
        if node is None or node.status == d.DEREGISTERED:
            raise RequestRefused(404, "unknown-node", f"node {node_id} is not registered")
        return {"items": [self.item(node)], "next_cursor": None}

    async def discover_page(self, signer: str, *, status: str | None, limit: int,
                            cursor: str | None) -> dict[str, Any]:
        d.decide_discovery_access(await self.node(signer), signer=signer)
        statuses = [status] if status else list(d.LISTED_STATUSES)
        query = select(DirectoryNode).where(col(DirectoryNode.status).in_(statuses))
        if cursor:
            query = query.where(col(DirectoryNode.node_id) > cursor)
        query = query.order_by(col(DirectoryNode.node_id)).limit(limit + 1)
        async with self.reads.session() as session:
            rows = list((await session.exec(query)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [self.item(_view(r)) for r in rows],
                "next_cursor": rows[-1].node_id if more else None}

    async def counts(self) -> dict[str, int]:
        query = select(DirectoryNode.status, func.count()).group_by(col(DirectoryNode.status))
        async with self.reads.session() as session:
            rows = (await session.exec(query)).all()
        found = {str(status): int(count) for status, count in rows}
        return {s: found.get(s, 0) for s in (d.ACTIVE, d.STALE, d.EXPIRED, d.REVOKED)}

    # -- writing -----------------------------------------------------------------------------

    def _lock(self, node_id: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(node_id.encode()) % _STRIPES]

    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        if not events:
            return []
        self._cache.inflight += len(events)
        try:
            stored = await self.store.append(events)
        finally:
            self._cache.inflight -= len(events)
        self._track(stored)
        return stored

    def limit_client(self, key: str) -> None:
        """Per-client limit on signed requests (429 with Retry-After): check, then count."""
        self.check_client(key)
        self.hit_client(key)

    def check_client(self, key: str) -> None:
        """RequestRefused 429 (with Retry-After) if ``key`` is at its limit now."""
        wait = self.client_limit.retry_after(key, self.clock())
        if wait is not None:
            raise RequestRefused(429, "rate-limited", "too many requests from this client",
                                 retry_after=int(wait) + 1)

    def hit_client(self, key: str) -> None:
        """Count one request of ``key`` against its limit."""
        self.client_limit.hit(key, self.clock())

    async def register(
        self, signed: SignedNodeRecord, *, signer: str
    ) -> tuple[int, dict[str, Any]]:
        """Register or update a node's signed record; (status code, discovery item)."""
        record = signed.record
        valid = None
        if signer == record.node_id:
            await check_url(record.api_url, allow_private=self.settings.allow_private_urls)
            # Off the event loop (ProcessChecker); the decision takes a "valid". A "not valid"
            # is verified again inline by the decision (as a request's signature is by the
            # general path): a worker wrong in form-perfect bytes never refuses a good record.
            valid = True if await self.checks.check(*record_signature_check(signed)) else None
        async with self._lock(record.node_id):
            now = self.now()
            existing = await self.node(record.node_id)
            status, events = d.decide_registration(
                existing, signed, signer=signer, now=now, window=self.settings.signature_window,
                signature_valid=valid)
            await self.append(events)
            self._last_seen[record.node_id] = now
        # Whatever the decision, the node is now active with this record.
        wire = signed.to_wire()
        # Verified by the decision: its grants need not verify it again (_signed_record).
        self._remember_record((record.canonical_bytes().decode("utf-8"), wire["signature"]),
                              signed)
        return status, {"record": wire["record"], "signature": wire["signature"],
                        "status": d.ACTIVE, "last_seen": now}

    async def heartbeat(self, *, signer: str) -> dict[str, Any]:
        async with self._lock(signer):
            now = self.now()
            node = await self.node(signer)
            events = d.decide_heartbeat(node, signer=signer, now=now)
            await self.append(events)
            self._last_seen[signer] = now
            if events:
                node = await self.node(signer)
        assert node is not None
        return {"node_id": signer, "status": node.status, "last_seen": now,
                "heartbeat_interval": self.settings.heartbeat_interval}

    async def deregister(self, node_id: str, *, signer: str) -> dict[str, Any]:
        async with self._lock(node_id):
            events = d.decide_deregistration(await self.node(node_id), node_id=node_id,
                                             signer=signer, now=self.now())
            await self.append(events)
        self._last_seen.pop(node_id, None)
        return {"node_id": node_id, "status": d.DEREGISTERED}

    async def revoke(self, node_id: str, reason: str) -> None:
        async with self._lock(node_id):
            events = d.decide_revocation(await self.node(node_id), node_id=node_id,
                                         reason=reason, now=self.now())
            await self.append(events)

    async def sweep_statuses(self) -> int:
        """Move silent nodes active → stale → expired; the number of transitions logged."""
        now = self.now()
        stale_after, expire_after = self.settings.stale_after, self.settings.expire_after
        # Only rows silent long enough in the projection can be due: its last_seen is never
        # newer than the one heartbeats keep in memory, so this is a superset of the due nodes
        # (and a loaded directory does not load every row every few seconds).
        status, last_seen = col(DirectoryNode.status), col(DirectoryNode.last_seen)
        active_due = stale_after if expire_after is None else min(stale_after, expire_after)
        due = (status == d.ACTIVE) & (last_seen <= now - active_due)
        if expire_after is not None:
            due = due | ((status == d.STALE) & (last_seen <= now - expire_after))
        query = select(DirectoryNode).where(due)
        async with self.reads.session() as session:
            rows = list((await session.exec(query)).all())
        changed = 0
        for row in rows:
            node = _view(row)
            # A node is not blamed for the directory's own downtime: silence counts from start.
            seen = max(self.last_seen(node), self._started)
            if not d.decide_status(node, last_seen=seen, now=now, stale_after=stale_after,
                                   expire_after=expire_after):
                continue  # heard from since (its fresh state is at least as recent)
            async with self._lock(node.node_id):
                fresh = await self.node(node.node_id)
                if fresh is None:
                    continue
                events = d.decide_status(
                    fresh, last_seen=max(seen, self.last_seen(fresh)), now=now,
                    stale_after=self.settings.stale_after,
                    expire_after=self.settings.expire_after)
                await self.append(events)
                changed += len(events)
        return changed

    async def run_status_task(self) -> None:
        """The background task: sweep every ``status_check_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.status_check_interval)
            try:
                await self.sweep_statuses()
            except OpenRedError as exc:
                logger.warning("status sweep failed, will retry: %s", exc)

    # -- grants ------------------------------------------------------------------------------

    def _admit(self, initiator: str, target: str, network: str) -> Held:
        """Check the grant's limits, then count it and hold its pushes (no await in between).

        429 (with Retry-After) for an initiator over its limit or a client network over its
        share of the target's budget; 503 ``busy`` when the network asking (or everyone) has as
        many pushes in flight as it may, at once and before anything is minted, instead of
        queueing behind pushes to slow receivers. Nothing is counted for a refused grant.
        """
        now = self.clock()
        wait = self.initiator_limit.retry_after(initiator, now)
        who = "this initiator"
        if wait is None:
            wait = self.target_limit.retry_after(target, network, now)
            who = "this target from this client network"
        if wait is not None:
            raise RequestRefused(429, "rate-limited", f"too many grants for {who}",
                                 retry_after=int(wait) + 1)
        blocked = self.pushes.blocked(network, PUSHES_PER_GRANT)
        if blocked is not None:
            whose = " asked from this client network" if blocked == "key" else ""
            raise RequestRefused(
                503, "busy", f"too many grants{whose} are being delivered; try again when "
                "one is", retry_after=int(self.settings.push_timeout))
        self.initiator_limit.hit(initiator, now)
        self.target_limit.hit(target, network, now)
        return self.pushes.enter(network, PUSHES_PER_GRANT)

    async def request_connection(self, *, signer: str, target: str,
                                 client: str | None = None) -> GrantOutcome:
        """Mint a grant from ``signer`` to ``target``, log it, push both halves (DESIGN §5).

        ``client``: the address the request came from (its network is charged for the grant's
        share of the target's budget and for its pushes in flight).
        """
        self._cache.check()
        generation = self._cache.generation  # before the decision's reads: see _still_grantable
        initiator_view, target_view = await self.node(signer), await self.node(target)
        d.decide_grant(initiator_view, target_view, signer=signer, target_id=target)
        assert initiator_view is not None and target_view is not None
        held = self._admit(signer, target, client_key(client))
        try:
            return await self._grant(initiator_view, target_view, held, generation)
        finally:
            held.release_all()

    async def _grant(self, initiator_view: d.NodeView, target_view: d.NodeView,
                     held: Held, generation: int) -> GrantOutcome:
        a_record = self._signed_record(initiator_view)
        b_record = self._signed_record(target_view)
        for role, record in (("initiator", a_record), ("target", b_record)):
            # The jail refuses to seal a token to such a key, which would answer 503
            # signer-unavailable for what the node chose: refused here, nothing logged.
            if not _sealable(record.record.box_key.raw):
                raise RequestRefused(422, "invalid-key", (
                    f"the {role}'s box key is a low-order X25519 point: no token can be "
                    f"sealed to it (node {record.record.node_id} must register another)"))
        now = self.now()
        when = datetime.fromtimestamp(now, UTC)
        method = select_crypto_method(when, self.settings.suite_mode,
                                      seed=self.settings.suite_seed)
        # 1. The grant (DESIGN §5).
        grant = new_grant(
            a_record.record.node_id, b_record.record.node_id,
            grant_id=secrets.token_bytes(16), issued_at=now, ttl=self.settings.grant_ttl,
            suite=DEFAULT_REGISTRY.suite(method), initiator_record=a_record.hash,
            responder_record=b_record.hash,
        )
        # 2. The jail signs it, draws its fresh secret, derives the two tokens and seals each
        #    to its node's X25519 key: this process never holds a token it could read. It
        #    does so while the grant's entry is appended (3.): the entry holds the grant's
        #    fields, neither its signature nor a token, and nothing leaves before both are done.
        signing = asyncio.ensure_future(self._signs.sign_grant(GrantToSeal(
            grant.canonical_bytes(), a_record.record.box_key, b_record.record.box_key)))
        try:
            # 3. ConnectionGranted in the log (no secret), a checkpoint covering it, its proof.
            (entry,) = await self.append([NewEvent(ev.grant_stream(grant.grant_id),
                                                   ev.CONNECTION_GRANTED,
                                                   connection_granted_payload(grant))])
        except BaseException:
            _discard(signing)  # not logged: its signature must not outlive it
            raise
        # 3b. The decision read both nodes before the grant was logged, without their locks
        #     (a grant holds no node lock across the append: grants to one busy target would
        #     queue behind each other). Anything logged on their streams before the grant —
        #     the target deregistered or revoked, a node gone stale, a record moved — makes
        #     the grant one the decision would have refused: it is marked undeliverable and
        #     refused for that reason, never pushed. (An entry logged after the grant is a
        #     later fact: the grant was minted while both could have it.)
        try:
            await self._still_grantable(initiator_view, target_view, generation)
        except RequestRefused as exc:
            _discard(signing)
            await self._undeliverable(grant.grant_id, f"no longer grantable: {exc.detail}")
            raise
        # Logged but not deliverable (the jail did not sign it, or no checkpoint): say so in
        # the log too, then answer the refusal.
        try:
            sealed = await signing
        except OpenRedError as exc:
            await self._undeliverable(grant.grant_id, f"not signed: {exc}")
            raise
        try:
            note, proof = await self._proof_for(entry)
        except OpenRedError as exc:
            await self._undeliverable(grant.grant_id, f"no checkpoint: {exc}")
            raise
        common = {"grant": grant.to_dict(), "grant_signature": b64url(sealed.signature),
                  "entry": entry_to_wire(entry), "checkpoint": note.decode("utf-8"),
                  "inclusion_proof": proof.to_wire()}
        body_a, body_b = push_bodies(
            common,
            {"sealed_token": b64url(sealed.sealed_initiator), "peer_record": b_record.to_wire()},
            {"sealed_token": b64url(sealed.sealed_responder), "peer_record": a_record.to_wire()})
        # 4. Push both halves at once over the pooled client.
        delivered_a, delivered_b = await asyncio.gather(
            self._push(a_record, body_a, held), self._push(b_record, body_b, held))
        delivered = {"initiator": delivered_a[0], "responder": delivered_b[0]}
        if not all(delivered.values()):
            undelivered = [role for role, ok in delivered.items() if not ok]
            reason = "; ".join(r for ok, r in (delivered_a, delivered_b) if not ok)
            await self.append([ev.grant_failed_event(grant.grant_id, undelivered, reason,
                                                      self.now())])
            raise RequestRefused(
                502, "push-failed", f"the grant could not be delivered to {undelivered}: "
                f"{reason}", extra={"grant_id": grant.grant_id, "delivered": delivered})
        return GrantOutcome(grant.grant_id, grant.expires_at, grant.suite, delivered)

    async def _still_grantable(self, initiator_view: d.NodeView, target_view: d.NodeView,
                               generation: int) -> None:
        """RequestRefused unless both nodes are as the grant's decision read them.

        Called after the grant's entry was appended, so the node cache's check accounts for
        every entry logged before it (:meth:`_NodeCache.check`). ``generation`` is the cache's
        generation taken, after a check, before the decision read both views. Every entry that
        can change a view bumps the generation once it is accounted for, always after it
        committed: if none was bumped since, every such entry logged before the grant had been
        accounted for before the decision's reads began, so those reads saw it, and the views
        the decision used are those of now — nothing to read again (the common case under a
        grant load: grants change no view). Otherwise both views are read again and decided
        again. Heartbeats log nothing, so an honest busy node is unchanged.
        """
        cache = self._cache
        cache.check()
        if cache.generation == generation:
            return
        initiator = await self.node(initiator_view.node_id)
        target = await self.node(target_view.node_id)
        d.decide_grant(initiator, target, signer=initiator_view.node_id,
                       target_id=target_view.node_id)
        assert initiator is not None and target is not None
        for before, now in ((initiator_view, initiator), (target_view, target)):
            if now.record_hash != before.record_hash:
                raise RequestRefused(409, "record-changed",
                                     f"node {before.node_id} registered a new record while the "
                                     "grant was minted; ask again")

    async def _undeliverable(self, grant_id: str, reason: str) -> None:
        """Log that a logged grant was delivered to neither node (``ConnectionGrantFailed``)."""
        with contextlib.suppress(OpenRedError):
            await self.append([ev.grant_failed_event(
                grant_id, ["initiator", "responder"], reason, self.now())])

    async def _note_covering(self, seq: int) -> _Note:
        """A signed checkpoint whose tree contains entry ``seq`` (shared by concurrent grants)."""
        while self._note is None or self._note.size < seq:
            task = self._signing
            if task is None:
                task = self._signing = asyncio.ensure_future(self._sign_note())
            # A checkpoint being signed may have started before seq was appended: look again.
            await asyncio.shield(task)
        return self._note

    async def _sign_note(self) -> None:
        try:
            note = await self._sign_from_tree()
            if note is None:
                note = _parsed_note(await self.store.checkpoint())
            if self._note is None or note.size > self._note.size:
                self._note = note
        finally:
            self._signing = None

    async def _sign_from_tree(self) -> _Note | None:
        """A checkpoint of the log's head signed from the proof tree, or None (use the store's).

        Only when the tree provably is the log: it holds exactly the store's head and its root
        equals the root of the store's own Merkle frontier (built by the store from the rows it
        committed, not from this tree). Equal RFC 6962 roots mean equal leaves, barring a
        SHA-256 collision, so a match is the log itself; a commit landing while this runs (the
        writer thread replaces the frontier) can only show as a mismatch, and a mismatch lets
        the store sign. The note is signed by the store's signer (the jail), and
        ``sign_checkpoint`` verifies it under the log's key before it is used.

        The jail witnesses the directory's log (``--witness-file``): the checkpoint goes
        through the store's :meth:`~openred.store.sqlite.SQLiteEventStore.sign_checkpoint_of`,
        one at a time with the store's own, with a consistency proof from the one the jail
        signed last, taken from this tree (a few cached block roots). When the store or another
        process had a larger one signed meanwhile, that one is signed again and returned
        instead (it covers the entries waiting for it).

        It is not written to the ``checkpoints`` table: it needs no write lock, no transaction
        and no fsync of its own, and a grant waits for neither. The entries it covers are
        durable already (each append returned after its commit), so nothing it attests can be
        lost; the store still stores its own checkpoints (every 100 entries, every 60 s, at
        close), ``open`` stores one of the whole log, and GET /directory/checkpoint answers the
        newest of the stored one and this one (docs/decisions.md, "Directory speed").
        """
        store, signer = self.store, self._signer
        if signer is None or signer.sign_key != store.sign_key:
            return None
        head = store.head.size
        if len(self.tree) < head:
            await self._sync_tree(head)
        size = len(self.tree)
        if size == 0 or size != store.head.size:
            return None
        tree = self.tree
        root = tree.root(size)
        if await store.root() != root or store.head.size != size:
            return None

        async def prove(old: int) -> list[bytes]:
            return tree.consistency_proof(old, size)

        async def newer(at: int) -> bytes | None:
            await self._sync_tree(at)
            return tree.root(at) if len(tree) >= at else None

        signed, text = await store.sign_checkpoint_of(
            Checkpoint(origin=store.origin, size=size, root_hash=root),
            self._checkpoint_signer(signer), prove, newer=newer)
        return _Note(signed.size, signed.root_hash, text, checked=True)

    def _checkpoint_signer(self, signer: LogSigner) -> LogSigner:
        """``signer``, or the same jail through the coalescer when ``signer`` is that jail's.

        The jail's ``sign`` of kind ``checkpoint`` runs the same checks as ``sign_checkpoint``
        (a C2SP body of the jail's own log's origin); ``sign_checkpoint`` still verifies the
        note under ``signer.sign_key`` before it is used.
        """
        if isinstance(signer, JailSigner) and signer.client is self.jail:
            return _CoalescedCheckpoints(signer, self._signs)
        return signer

    async def _proof_for(self, entry: StoredEvent) -> tuple[bytes, InclusionProof]:
        note = await self._note_covering(entry.seq)
        if not note.checked:
            await self._sync_tree(note.size)
            if len(self.tree) < note.size or self.tree.root(note.size) != note.root:
                raise StoreError("the proof cache disagrees with the signed checkpoint")
            note.checked = True
        hashes = self.tree.inclusion_proof(entry.seq - 1, note.size)
        return note.text, InclusionProof(entry.seq - 1, note.size, tuple(hashes))

    async def _push(self, to: SignedNodeRecord, body: bytes, held: Held) -> tuple[bool, str]:
        """POST one half to its node; its unit of ``held`` is given back when it ends."""
        url = to.record.api_url.rstrip("/") + RECEIVE_PATH
        try:
            reply = await self.http.request("POST", url, body=body, signed=True,
                                            max_reply=PUSH_REPLY_BYTES)
        except Exception as exc:  # any failure to deliver is reported, never a 500
            return False, f"{to.record.node_id}: {type(exc).__name__}: {exc}"
        finally:
            held.release()
        if reply.ok:
            return True, ""
        return False, f"{to.record.node_id} answered {reply.status}"

    # -- log facts ---------------------------------------------------------------------------

    async def checkpoint(self, from_size: int | None,
                         to_size: int | None = None) -> dict[str, Any]:
        """The newest signed checkpoint, with a consistency proof from ``from_size``.

        The newest of the store's stored checkpoints and the one last pushed with a grant
        (those are kept in memory only): never older than a checkpoint a node was sent.
        The proof ends at the newest checkpoint's size, or at ``to_size`` when given (at most
        that size): a node holding signed checkpoints of both sizes checks them against each
        other in one request, however far the directory has moved on meanwhile.
        """
        row = await self.store.latest_checkpoint_row()
        note = None if row is None else row[1]
        if row is not None and not await self._own_checkpoint(*row):
            # A row inserted into the table (INSERT passes its append-only triggers): the
            # newest one this directory signed is signed again from the tree instead.
            logger.warning("the newest row of the checkpoints table is not a checkpoint this "
                           "directory signed of its log: ignored (its database was written "
                           "by another program; run `audit_tools verify` on it)")
            note = (await self._note_covering(self.store.head.size)).text
        if note is None:
            note = await self.store.checkpoint()
        checkpoint = parse_checkpoint_body(parse_signed_note(note).body)
        mine = self._note
        if mine is not None and mine.size > checkpoint.size:
            note = mine.text
            checkpoint = parse_checkpoint_body(parse_signed_note(note).body)
        proof: list[str] | None = None
        if to_size is not None and from_size is None:
            raise RequestRefused(422, "invalid-field", "to= needs from=")
        if from_size is not None:
            end = checkpoint.size if to_size is None else to_size
            if end > checkpoint.size:
                raise RequestRefused(
                    422, "invalid-field",
                    f"to={end} is beyond the checkpoint's size {checkpoint.size}")
            if from_size > end:
                raise RequestRefused(
                    422, "invalid-field",
                    f"from={from_size} is beyond the {'checkpoint' if to_size is None else 'to'}"
                    f" size {end}")
            await self._sync_tree(checkpoint.size)
            proof = [b64url(h) for h in self.tree.consistency_proof(from_size, end)]
        return {"checkpoint": note.decode("utf-8"), "consistency_proof": proof}

    async def _own_checkpoint(self, size: int, note: bytes) -> bool:
        """Whether ``note`` (stored as of ``size``) is signed by this directory's key over its
        log at that size as the proof tree holds it (one Ed25519 verification and a root from
        cached block roots)."""
        try:
            checkpoint = verify_directory_checkpoint(note, self.key)
        except CheckpointError:
            return False
        await self._sync_tree(checkpoint.size)
        return (checkpoint.size == size <= len(self.tree)
                and self.tree.root(checkpoint.size) == checkpoint.root_hash)

    async def health(self) -> dict[str, Any]:
        # StoreError (503) once the schema changed while serving, as every decision answers
        # until restarted: a supervisor probing /health restarts it (its open checks the file).
        self._cache.check()
        head = self.store.head
        root = await self.store.root()
        return {"status": "ok", "version": __version__, "nodes": await self.counts(),
                "log": {"size": head.size, "root": b64url(root)}}

    def key_info(self) -> dict[str, str]:
        return {"key": self.key.b64url(), "id": str(self.key.node_id), "origin": self.origin,
                "vkey": vkey(self.origin, self.key)}


class _CoalescedCheckpoints:
    """A :class:`JailSigner` whose checkpoint signatures join the grants' coalesced jail calls
    (a :class:`~openred.store.signer.WitnessedSigner`: its proofs travel in the same calls)."""

    def __init__(self, signer: JailSigner, signs: SignCoalescer) -> None:
        self._signer = signer
        self._signs = signs

    @property
    def sign_key(self) -> SignKey:
        return self._signer.sign_key

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        return await self._signer.sign_entry_hashes(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return await self._signs.sign("checkpoint", note_body)

    async def witnessed_checkpoint(self, origin: str) -> bytes | None:
        return await self._signer.witnessed_checkpoint(origin)

    async def sign_checkpoint_extending(
        self, note_body: bytes, consistency_proof: Sequence[bytes]
    ) -> Signature:
        return await self._signs.sign_checkpoint(note_body, consistency_proof)


async def _witness_advice(
    reason: str, settings: DirectorySettings, jail: JailClient, origin: str,
) -> str:
    """``reason`` for a log that is not what the jail witnessed, with what the operator does.

    The witness file is the one the jail names (its ``--witness-file``): for a jail the service
    manager runs as its own user (:func:`~openred.directory.keys.jail_is_external`) that is a
    file of the jail's user, which the jail holds open, so it is stopped before the file is
    moved aside; a jail the directory starts stops and starts with it.
    """
    external = jail_is_external(settings)
    try:
        named: str | Path | None = await jail.witness_file(origin)
    except JailError:
        named = None
    witness = named or (None if external else settings.jail_witness_path)
    where = (f"the jail's witness {witness}" if witness is not None
             else "the jail's witness file (its --witness-file)")
    if external:
        how = (f"stop the jail serving {settings.socket_path} (run by the service manager, "
               f"e.g. openred-directory-jail.service), move {where} aside as the jail's "
               "user, start the jail, then the directory")
    else:
        how = f"move {where} aside (as the jail's user) and start again"
    return (f"{reason}. The directory does not start on it. If you restored this log from a "
            f"backup on purpose, {how}: the jail then witnesses the restored log. Otherwise "
            "keep the files as they are and check the log (audit_tools verify)")


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def push_bodies(common: dict[str, Any], *own: dict[str, Any]) -> list[bytes]:
    """The JSON bodies ``{**common, **own[i]}`` as the HTTP client would encode them, byte for byte.

    The shared part (grant, entry, checkpoint, proof: most of a push) is encoded once for both
    nodes. ``own`` must not repeat a key of ``common`` (each key appears once in the body).
    """
    head = _compact_json(common)
    if not head.endswith("}") or head == "{}":
        raise ValueError("common is a non-empty JSON object")
    bodies = []
    for extra in own:
        if not extra or extra.keys() & common.keys():
            raise ValueError("each body adds keys of its own to common")
        bodies.append((head[:-1] + "," + _compact_json(extra)[1:]).encode("utf-8"))
    return bodies


def _jail_base_signer(signs: SignCoalescer) -> Callable[[bytes], Any]:
    async def sign_base(base: bytes) -> bytes:
        return bytes(await signs.sign("http_signature_base", base))

    return sign_base

