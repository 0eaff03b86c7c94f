"""``audit_tools verify``: prove a log is intact, in numbered steps (DESIGN §9).

1. Read the log: open it read-only, check SQLite's own structure (``PRAGMA quick_check``: a
   damaged page can alias, hide or duplicate rows the later steps would read as intact), count
   its entries (zero entries is never "valid").
2. Genesis and signer key history: the first entry is ``LogOpened`` naming the expected key;
   every ``KeyRotated`` hands over from the key in force.
3. Sequence, entry hashes and links: seq runs 1..n without a gap; each entry_hash matches the
   entry's fields; each prev_hash is the previous entry's hash.
4. Signatures: every entry is signed by the key in force at its position (rotations by both).
   Steps 3 and 4 run in one pass split over every core; the first failure by seq is reported.
5. Checkpoints: each stored checkpoint is signed by the key in force at its size and its root
   equals the Merkle root of the log's first ``size`` entries; a log shorter than its own newest
   checkpoint was truncated.
6. Consistency with a given checkpoint: the log is an extension of the tree that checkpoint
   commits to (truncation, rollback to a backup and forks all fail here).
7. Projections: the stored projection tables equal the ones a replay of the log builds.

Any failure stops at that step and names the first bad seq and the reason.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_tools.source import (
    BundleSource,
    CorruptLog,
    LogSource,
    MalformedRow,
    SQLiteSource,
    open_source,
)
from openred.crypto.identity import NodeId, SignKey, from_b64url
from openred.errors import CheckpointError, InvalidKey, TamperedLog
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import merkle
from openred.store.chain import ChainChecker, origin_for
from openred.store.checkpoint import (
    parse_checkpoint_body,
    parse_signed_note,
    verify_checkpoint,
)
from openred.store.codec import GENESIS_PREV_HASH, decode_payload
from openred.store.events import KEY_ROTATED, LOG_OPENED, StoredEvent
from openred.store.projection_sql import project_events
from openred.store.projections import ProjectionRegistry
from openred.store.sqlite import read_events

PARALLEL_THRESHOLD = 20_000
RANGE_SIZE = 16_384

Progress = Callable[[int, int], None]


@dataclass
class Step:
    number: int
    title: str
    status: str = "pending"  # ok | failed | skipped
    detail: str = ""


@dataclass
class Report:
    """What a verification found; ``ok`` only when entries were checked and nothing failed."""

    path: str
    steps: list[Step] = field(default_factory=list)
    entries: int = 0
    head: str = ""
    root: str = ""
    origin: str = ""
    keys: list[tuple[int, str]] = field(default_factory=list)
    checkpoints_checked: int = 0
    failed_seq: int | None = None
    reason: str = ""
    workers: int = 1
    pseudonymized: bool = False

    @property
    def ok(self) -> bool:
        return self.entries > 0 and not self.reason

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "valid": self.ok,
            "entries": self.entries,
            "head": self.head,
            "root": self.root,
            "origin": self.origin,
            "keys": [{"from_seq": s, "sign_key": k} for s, k in self.keys],
            "checkpoints_checked": self.checkpoints_checked,
            "failed_seq": self.failed_seq,
            "reason": self.reason or None,
            "workers": self.workers,
            "pseudonymized": self.pseudonymized,
            "steps": [
                {"step": s.number, "title": s.title, "status": s.status, "detail": s.detail}
                for s in self.steps
            ],
        }


class StepFailed(Exception):
    """A step failed: which step, why, and the first bad seq when there is one."""

    def __init__(self, step: int, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.seq = seq


TITLES = {
    1: "read the log",
    2: "genesis and signer key history",
    3: "sequence, entry hashes and links",
    4: "signatures",
    5: "stored checkpoints",
    6: "consistency with the given checkpoint",
    7: "projections equal a replay",
}


# -- the parallel chain pass (steps 3 and 4) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeResult:
    first: int
    last: int
    first_prev_hash: bytes | None
    hashes: bytes  # the entry hashes of the range, concatenated, for the Merkle tree
    failure: tuple[int, str] | None
    rotations: tuple[tuple[int, bytes], ...]  # (first seq signed by new key, key) seen


def check_entries(
    entries: Iterable[StoredEvent | MalformedRow],
    first: int,
    last: int,
    key: SignKey | None,
    *,
    recompute_hashes: bool = True,
) -> RangeResult:
    """Check entries ``first``..``last`` in order, from the key in force at ``first``."""
    checker = (
        ChainChecker(recompute_hashes=recompute_hashes) if first == 1
        else ChainChecker.resume(after_seq=first - 1, key=key, recompute_hashes=recompute_hashes)
    )
    hashes = bytearray()
    first_prev: bytes | None = None
    failure: tuple[int, str] | None = None
    try:
        for entry in entries:
            if isinstance(entry, MalformedRow):
                raise TamperedLog(entry.seq, entry.reason)
            if first_prev is None:
                first_prev = entry.prev_hash
            checker.check(entry)
            hashes += entry.entry_hash
        if checker.count != last:
            raise TamperedLog(checker.count + 1, f"entry {checker.count + 1} is missing")
    except TamperedLog as exc:
        failure = (exc.seq, exc.reason)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        failure = (checker.count + 1, f"malformed entry: {exc}")
    rotations = tuple(
        (epoch.from_seq, epoch.key.raw) for epoch in checker.key_history if epoch.from_seq > 1
    )
    return RangeResult(first, last, first_prev, bytes(hashes), failure, rotations)


def _check_sqlite_range(args: tuple[str, int, int, bytes | None]) -> RangeResult:
    path, first, last, key_raw = args
    source = SQLiteSource(Path(path))
    try:
        key = SignKey(key_raw) if key_raw else None
        try:
            return check_entries(source.rows(first, last), first, last, key)
        except CorruptLog as exc:
            return RangeResult(first, last, None, b"", (first, str(exc)), ())
    finally:
        source.close()


# -- key history ------------------------------------------------------------------------------


def declared_keys(source: LogSource, size: int) -> list[tuple[int, SignKey]]:
    """(first seq, key) for each signer key, from LogOpened/KeyRotated payloads.

    These come from entries not yet verified; the chain pass verifies those very entries (and
    their signatures by both keys), so a forged rotation fails there and is reported first.
    """
    if isinstance(source, SQLiteSource):
        try:
            rows = source.conn.execute(
                "SELECT seq, type, payload FROM events WHERE type IN (?, ?) ORDER BY seq",
                (LOG_OPENED, KEY_ROTATED),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptLog(f"the events table cannot be read: {exc}") from exc
        items = [(r[0], r[1], r[2]) for r in rows]
    else:
        items = [
            (e.seq, e.type, e.payload) for e in source.rows(1, size)
            if isinstance(e, StoredEvent) and e.type in (LOG_OPENED, KEY_ROTATED)
        ]
    keys: list[tuple[int, SignKey]] = []
    for seq, type_, payload in items:
        if not isinstance(seq, int):
            continue  # a malformed seq: the chain pass names the position it is missing from
        try:
            data = decode_payload(bytes(payload))
            if type_ == LOG_OPENED:
                if seq != 1 and not keys:
                    break  # no LogOpened at seq 1: reported below as a missing genesis
                if seq != 1:
                    raise StepFailed(2, "LogOpened may only be the first entry", seq)
                keys.append((1, SignKey(from_b64url(data["sign_key"]))))
            else:
                keys.append((seq + 1, SignKey(from_b64url(data["new_key"]))))
        except (ValueError, KeyError, TypeError, InvalidKey):
            raise StepFailed(2, f"{type_} names no valid key", seq) from None
    if not keys or keys[0][0] != 1:
        raise StepFailed(2, "the first entry is not LogOpened: the log has no genesis", 1)
    return keys


def key_at(keys: Sequence[tuple[int, SignKey]], seq: int) -> SignKey:
    """The key in force for entry ``seq``."""
    current = keys[0][1]
    for first, key in keys:
        if first <= seq:
            current = key
    return current


# -- the verifier -----------------------------------------------------------------------------


def verify(
    path: Path,
    *,
    key: SignKey | None = None,
    node_id: NodeId | None = None,
    checkpoint: bytes | None = None,
    jobs: int | None = None,
    projections: bool = True,
    progress: Progress | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> Report:
    """Verify the log at ``path`` (data dir, database file or bundle); never raises for bad data.

    Raises only :class:`audit_tools.source.SourceError` when the path cannot be read at all.
    """
    report = Report(path=str(path))
    current = 0

    def done(number: int, detail: str, status: str = "ok") -> None:
        step = Step(number, TITLES[number], status, detail)
        report.steps.append(step)
        if on_step:
            on_step(step)

    try:
        source = open_source(path)
    except CorruptLog as exc:
        report.reason = str(exc)
        done(1, str(exc), "failed")
        return report
    try:
        try:
            # 1. Read the log.
            current = 1
            if isinstance(source, SQLiteSource):
                source.check_structure()
            # Entries 1..count are read: a seq past the count (a gap, or one row renumbered to
            # 2**40) shows up as the missing entry it leaves, and never sizes the work to do.
            count, _top = source.size()
            n = count
            if count == 0:
                raise StepFailed(1, "the log has no entries: nothing to verify")
            done(1, f"{count} entries" + (" (pseudonymized bundle)" if source.pseudonymized
                                          else ""))

            # 2. Genesis and signer key history.
            current = 2
            keys = declared_keys(source, n)
            genesis_key = keys[0][1]
            if key is not None and genesis_key != key:
                raise StepFailed(2, f"genesis key {genesis_key.b64url()} is not the expected "
                                 f"key {key.b64url()}", 1)
            if node_id is not None and genesis_key.node_id != node_id:
                raise StepFailed(2, f"the log belongs to node {genesis_key.node_id}, "
                                 f"not {node_id}", 1)
            report.origin = origin_for(genesis_key.node_id)
            if source.origin_hint is not None and source.origin_hint != report.origin:
                raise StepFailed(2, f"the bundle names origin {source.origin_hint} but its "
                                    f"genesis key belongs to {report.origin}", 1)
            report.pseudonymized = source.pseudonymized
            report.keys = [(s, k.b64url()) for s, k in keys]
            done(2, f"genesis key {genesis_key.b64url()} (node {genesis_key.node_id}), "
                    f"{len(keys) - 1} rotation(s)")

            # 3 and 4. The chain pass.
            current = 3
            tree, roots, head = _chain_pass(source, n, keys, jobs, progress, report,
                                            sizes={s for s, _ in source.checkpoints()})
            done(3, f"{n} entries in sequence, every link matches; entry hashes not "
                    "recomputable (payloads pseudonymized)" if source.pseudonymized
                    else f"{n} entries in sequence, every hash and link matches")
            done(4, f"{n} signatures verify ({report.workers} worker"
                    f"{'s' if report.workers > 1 else ''})")
            report.entries = n
            report.root = tree.root().hex()
            report.head = head.hex()

            # 5. Stored checkpoints.
            current = 5
            done(5, *_check_stored_checkpoints(source, n, keys, roots, report))

            # 6. Consistency with the given checkpoint.
            current = 6
            if checkpoint is None:
                done(6, "no checkpoint given", "skipped")
            else:
                done(6, _check_given_checkpoint(source, checkpoint, n, keys, report))

            # 7. Projections equal a replay.
            current = 7
            if not projections:
                done(7, "not requested", "skipped")
            elif not isinstance(source, SQLiteSource):
                done(7, "a bundle holds no projections", "skipped")
            else:
                done(7, *_check_projections(source, n))
        except StepFailed as exc:
            report.failed_seq = exc.seq
            report.reason = exc.reason
            done(exc.step, exc.reason, "failed")
        except CorruptLog as exc:
            report.reason = str(exc)
            done(current, str(exc), "failed")
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            # Damaged storage met where no step expected it: fail closed, never raise.
            report.reason = f"the database cannot be read: {exc}"
            done(current, report.reason, "failed")
    finally:
        source.close()
    return report


def _ranges(n: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + RANGE_SIZE - 1)) for a in range(1, n + 1, RANGE_SIZE)]


def _chain_pass(
    source: LogSource,
    n: int,
    keys: list[tuple[int, SignKey]],
    jobs: int | None,
    progress: Progress | None,
    report: Report,
    sizes: set[int],
) -> tuple[merkle.CompactRange, dict[int, bytes], bytes]:
    """Steps 3 and 4; returns the Merkle frontier and the roots at the requested ``sizes``."""
    tree = merkle.CompactRange()
    roots: dict[int, bytes] = {}
    wanted = sorted(s for s in sizes if 0 < s <= n)
    workers = max(1, jobs or os.cpu_count() or 1)
    parallel = isinstance(source, SQLiteSource) and workers > 1 and n >= PARALLEL_THRESHOLD
    ranges = _ranges(n)
    results: Iterable[RangeResult]
    pool: ProcessPoolExecutor | None = None
    if parallel:
        assert isinstance(source, SQLiteSource)
        report.workers = workers
        # fork is cheap and safe while this process runs one thread; otherwise spawn.
        method = "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        results = pool.map(
            _check_sqlite_range,
            [(str(source.path), a, b, key_at(keys, a).raw) for a, b in ranges],
        )
    else:
        recompute = not source.pseudonymized
        results = (
            check_entries(source.rows(a, b), a, b, key_at(keys, a), recompute_hashes=recompute)
            for a, b in ranges
        )
    prev_last: bytes = GENESIS_PREV_HASH
    failure: tuple[int, str] | None = None
    try:
        for result in results:
            if failure is None and result.first > 1 and result.first_prev_hash is not None \
                    and result.first_prev_hash != prev_last:
                failure = (result.first, "prev_hash does not match the previous entry's hash")
            if failure is None and result.failure is not None:
                failure = result.failure
            if failure is not None:
                break
            for seq, raw in result.rotations:
                if (seq, SignKey(raw)) not in keys:
                    failure = (seq - 1, "key rotation does not match the declared key history")
            hashes = result.hashes
            start = result.first
            while wanted and wanted[0] <= result.last:
                cut = wanted.pop(0)
                tree.extend(_split(hashes[: (cut - start + 1) * 32]))
                hashes = hashes[(cut - start + 1) * 32:]
                start = cut + 1
                roots[cut] = tree.root()
            tree.extend(_split(hashes))
            prev_last = result.hashes[-32:]
            if progress:
                progress(result.last, n)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        seq, reason = failure
        step = 4 if "signature" in reason else 3
        raise StepFailed(step, reason, seq)
    return tree, roots, prev_last


def check_chain_parallel(
    source: SQLiteSource, n: int, *, jobs: int | None = None, progress: Progress | None = None
) -> None:
    """Steps 2-4 for entries 1..``n`` on every core; TamperedLog names the first bad entry."""
    try:
        keys = declared_keys(source, n)
        _chain_pass(source, n, keys, jobs, progress, Report(path=str(source.path)), sizes=set())
    except StepFailed as exc:
        raise TamperedLog(exc.seq or 1, exc.reason) from None


def _split(blob: bytes) -> list[bytes]:
    return [blob[i:i + 32] for i in range(0, len(blob), 32)]


def _check_stored_checkpoints(
    source: LogSource, n: int, keys: list[tuple[int, SignKey]], roots: dict[int, bytes],
    report: Report,
) -> tuple[str, str]:
    stored = source.checkpoints()
    if not stored:
        return "the log holds no checkpoint", "skipped"
    root_column = source.checkpoint_roots() if isinstance(source, SQLiteSource) else {}
    for size, note in stored:
        if size > n:
            raise StepFailed(5, f"the log has {n} entries but its own checkpoint covers {size}: "
                             "entries were removed", n + 1)
        try:
            cp = verify_checkpoint(note, report.origin, key_at(keys, size + 1))
        except CheckpointError as exc:
            raise StepFailed(5, f"stored checkpoint at size {size}: {exc}") from None
        if cp.size != size:
            raise StepFailed(5, f"stored checkpoint row says size {size}, its note says {cp.size}")
        if cp.root_hash != roots.get(size):
            raise StepFailed(5, f"the log's first {size} entries do not have the root the "
                             f"checkpoint at size {size} signed", size)
        # The row's root_hash column is a copy of what the note signs; readers may use it.
        if size in root_column and root_column[size] != cp.root_hash:
            raise StepFailed(5, f"stored checkpoint row at size {size} holds another root_hash "
                             "than its note signs")
        report.checkpoints_checked += 1
    newest = stored[-1][0]
    behind = f", {n - newest} entries after it" if newest < n else ""
    return f"{len(stored)} checkpoints verify; newest at size {newest}{behind}", "ok"


def _check_given_checkpoint(
    source: LogSource, note: bytes, n: int, keys: list[tuple[int, SignKey]], report: Report
) -> str:
    try:
        claimed = parse_checkpoint_body(parse_signed_note(note).body)
    except CheckpointError as exc:
        raise StepFailed(6, f"the given checkpoint is malformed: {exc}") from None
    if claimed.origin != report.origin:
        raise StepFailed(6, f"the given checkpoint is for {claimed.origin}, "
                         f"this log is {report.origin}")
    if claimed.size > n:
        raise StepFailed(6, f"the log has {n} entries but the given checkpoint covers "
                         f"{claimed.size}: truncated or rolled back", n + 1)
    try:
        verify_checkpoint(note, report.origin, key_at(keys, claimed.size + 1))
    except CheckpointError as exc:
        raise StepFailed(
            6, f"the given checkpoint is not signed by this log's key: {exc}"
        ) from None
    # Holding every leaf, the verifier recomputes the old tree's root directly: equal roots are
    # exactly what a consistency proof would establish (RFC 9162 §2.1.4), without trusting one.
    if merkle.root_from_entry_hashes(_entry_hashes(source, claimed.size)) != claimed.root_hash:
        raise StepFailed(6, f"the log's first {claimed.size} entries differ from the tree the "
                         "given checkpoint signed: the log was rewritten or forked")
    return f"the log ({n} entries) extends the checkpoint at size {claimed.size}"


def _entry_hashes(source: LogSource, size: int) -> list[bytes]:
    return [e.entry_hash for e in source.rows(1, size) if isinstance(e, StoredEvent)]


def _check_projections(source: SQLiteSource, n: int) -> tuple[str]:
    projections = node_projections()
    tables = projections.tables()
    missing = [t for t in tables if t not in source.tables]
    if len(missing) == len(tables) or "projection_positions" not in source.tables:
        return (f"no node projections in this database ({', '.join(missing)} missing)",)
    if missing:
        # The migrations create every node table at once: losing some is damage, not a choice.
        raise StepFailed(7, f"projection table(s) {', '.join(missing)} missing")
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        try:
            source.conn.backup(mem)
            stored_positions = {r[0]: r[1] for r in _dump(mem, "projection_positions")}
            stored = {t: _dump(mem, t) for t in tables}
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptLog(f"the projection tables cannot be read: {exc}") from exc
        kept = [p for p in projections if p.name in stored_positions]
        for projection in projections:
            if projection.name not in stored_positions and any(
                stored[t] for t in projection.tables
            ):
                raise StepFailed(7, f"projection {projection.name} has rows but no recorded "
                                    "position")
        if not kept:
            return ("this log keeps no node projections",)  # e.g. a directory's log
        # A node keeps every node projection: one without a position lost its row.
        for projection in projections:
            if projection.name not in stored_positions:
                raise StepFailed(7, f"projection {projection.name} has no recorded position")
        for projection in kept:
            if stored_positions[projection.name] != n:
                raise StepFailed(7, f"projection {projection.name} is at position "
                                 f"{stored_positions[projection.name]}, the log at {n}")
        projections = ProjectionRegistry(kept)
        tables = projections.tables()
        try:
            mem.execute("BEGIN")
            for table in tables:
                mem.execute(f"DELETE FROM {table}")  # noqa: S608 - names from the registry
            project_events(mem, projections, node_registry(), read_events(mem))
        except (ValueError, KeyError, TypeError, sqlite3.DatabaseError) as exc:
            raise StepFailed(7, f"replaying the log into projections failed: {exc}") from None
        try:
            replayed = {t: _dump(mem, t) for t in tables}
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptLog(f"the projection tables cannot be replayed: {exc}") from exc
        for table in tables:
            if replayed[table] != stored[table]:
                raise StepFailed(7, f"projection table {table} differs from a replay of the log")
    finally:
        mem.close()
    return (f"{len(tables)} tables equal a replay of {n} entries",)


def _dump(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    """Every row of ``table``, read from the table itself, in a stable order.

    NOT INDEXED: an ORDER BY on the key column may read that column from its index, which a
    damaged file can hold out of step with the table (the rows would then look unchanged).
    """
    rows = [tuple(r) for r in conn.execute(f"SELECT * FROM {table} NOT INDEXED")]  # noqa: S608
    return sorted(rows, key=_row_key)


def _row_key(row: tuple[object, ...]) -> tuple[tuple[str, Any], ...]:
    # Values are compared only with values of the same type, so NULLs and stray types sort too.
    return tuple((type(v).__name__, 0 if v is None else v) for v in row)


__all__ = [
    "BundleSource", "Report", "Step", "StepFailed", "check_chain_parallel", "check_entries",
    "declared_keys", "key_at", "verify",
]
