"""``audit_tools verify``: prove a log is intact, in numbered steps (DESIGN §9).

1. Read the log: open it read-only (exactly the file named, never created), check SQLite's own
   structure (``PRAGMA quick_check``: a damaged page can alias, hide or duplicate rows the later
   steps would read as intact), read every row once (zero entries is never "valid"), and find
   the database's schema to be exactly the one the migrations of the log's kind build: any
   trigger, index, view or table definition that is not the store's own fails, named; then
   every index must hold exactly its table's rows (``PRAGMA integrity_check``: the store reads
   streams and projections through them).
2. Genesis and signer key history: the first entry is ``LogOpened`` naming the expected key
   and the log's kind; every ``KeyRotated`` hands over from the key in force.
3. Sequence, entry hashes and links: seq runs 1..n without a gap; each entry_hash matches the
   entry's fields; each prev_hash is the previous entry's hash.
4. Signatures: every entry is signed by the key in force at its position (rotations by both).
5. Checkpoints: each stored checkpoint is signed by the key in force at its size and its root
   equals the Merkle root of the log's first ``size`` entries; a log shorter than its own newest
   checkpoint was truncated; the entries no stored checkpoint covers are counted and reported.
6. Consistency with a given checkpoint: the log is an extension of the tree that checkpoint
   commits to (truncation, rollback to a backup and forks all fail here).
7. Projections: the stored projection tables equal the ones a replay of the log, streamed into
   a fresh database built by the kind's migrations, builds.

Steps 2-4 are one pass over the rows (split over every core for a big log), and every fact the
other steps use — the count, the genesis and its kind, the key history, the entry hashes — comes
from the rows that pass read, never from an index, a view or a second query. The schema is
compared once that pass has read the kind: a broken chain is reported at its first bad entry.
Any failure stops at that step and names the first bad seq and the reason.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_tools.schema import UnknownKind, expected_schema, fresh_database, schema_differences
from audit_tools.source import (
    BundleSource,
    CorruptLog,
    LogSource,
    MalformedRow,
    SQLiteSource,
    open_source,
)
from openred import kinds
from openred.crypto.identity import NodeId, SignKey, from_b64url
from openred.errors import CheckpointError, InvalidKey, TamperedLog
from openred.kinds import DEFAULT_KIND
from openred.store import merkle
from openred.store.chain import ChainChecker, origin_for, recompute_hash
from openred.store.checkpoint import (
    Checkpoint,
    parse_checkpoint_body,
    parse_signed_note,
    verify_checkpoint,
)
from openred.store.codec import GENESIS_PREV_HASH, HASH_SIZE, decode_payload
from openred.store.events import KEY_ROTATED, LOG_OPENED, LOG_STREAM, StoredEvent
from openred.store.projection_sql import project_events

PARALLEL_THRESHOLD = 20_000
RANGE_SIZE = 16_384

Progress = Callable[[int, int], None]


@dataclass
class Step:
    number: int
    title: str
    status: str = "pending"  # ok | warning | failed | skipped
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
    kind: str = ""
    rewritten: int = 0  # pseudonymized entries whose contents no longer hash to their entry
    uncovered: int | None = None  # entries no verified stored checkpoint covers

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
            "rewritten_entries": self.rewritten,
            "kind": self.kind or None,
            "entries_without_checkpoint": self.uncovered,
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


# -- the chain pass (steps 2, 3 and 4) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What checking one range of entries found, from the rows it read and nothing else."""

    first: int
    last: int | None  # None: the range reads every row from ``first`` on
    start_key: bytes | None  # the key the range's signatures were checked under at ``first``
    count: int  # entries checked (the range's last seq is first + count - 1)
    first_prev_hash: bytes | None
    hashes: bytes  # the entry hashes of the range, concatenated, for the Merkle tree
    failure: tuple[int, str] | None
    rotations: tuple[tuple[int, bytes], ...]  # (first seq signed by new key, key) seen
    genesis: bytes | None = None  # the payload of entry 1, when the range read it
    rewritten: int = 0  # pseudonymized entries whose contents do not hash to their entry_hash


_ALWAYS_HASHED = frozenset({LOG_OPENED, KEY_ROTATED})


def hash_check(entry: StoredEvent, checker: ChainChecker, pseudonymized: bool) -> bool:
    """Check ``entry``'s hash where the chain checker would; True if it is a rewritten entry.

    Runs only when the checker's own earlier checks (position, lengths, link) pass, so each
    entry's failure is the one the checker names first. In a pseudonymized bundle an entry of
    a peer's stream may differ from its hash (its payload was rewritten); the log's own stream
    and the key history never may, whatever the bundle says about itself.
    """
    if (entry.seq != checker.count + 1 or len(entry.prev_hash) != HASH_SIZE
            or len(entry.entry_hash) != HASH_SIZE
            or (checker.head_hash is not None and entry.prev_hash != checker.head_hash)):
        return False
    if recompute_hash(entry) == entry.entry_hash:
        return False
    if pseudonymized and entry.stream != LOG_STREAM and entry.type not in _ALWAYS_HASHED:
        return True
    raise TamperedLog(entry.seq, "entry_hash does not match the entry's contents")


def check_entries(
    entries: Iterable[StoredEvent | MalformedRow],
    first: int,
    last: int | None,
    key: SignKey | None,
    *,
    pseudonymized: bool = False,
) -> RangeResult:
    """Check entries from ``first`` in order (to ``last``, or all), from the key at ``first``.

    The entries given must be every row the source holds in the range (for the first range,
    also every row below 1; for an open range, every row above): a row out of place is a
    sequence break.
    """
    # The checker recomputes every hash itself, except in a pseudonymized bundle, where
    # hash_check does it first and lets only rewritten peer entries differ.
    recompute = not pseudonymized
    checker = (
        ChainChecker(recompute_hashes=recompute) if first == 1
        else ChainChecker.resume(after_seq=first - 1, key=key, recompute_hashes=recompute)
    )
    hashes = bytearray()
    first_prev: bytes | None = None
    failure: tuple[int, str] | None = None
    genesis: bytes | None = None
    rewritten = 0
    try:
        for entry in entries:
            if isinstance(entry, MalformedRow):
                raise TamperedLog(entry.seq, entry.reason)
            if first_prev is None and entry.seq == first:
                first_prev = entry.prev_hash
            if pseudonymized:
                rewritten += hash_check(entry, checker, pseudonymized)
            checker.check(entry)
            if genesis is None and entry.seq == 1:
                genesis = entry.payload
            hashes += entry.entry_hash
        if last is not None and checker.count != last:
            raise TamperedLog(checker.count + 1, f"entry {checker.count + 1} is missing")
    except TamperedLog as exc:
        failure = (exc.seq, exc.reason)
    except RecursionError:
        failure = (checker.count + 1, "malformed entry: JSON nested too deeply")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        failure = (checker.count + 1, f"malformed entry: {exc}")
    rotations = tuple(
        (epoch.from_seq, epoch.key.raw) for epoch in checker.key_history if epoch.from_seq > 1
    )
    return RangeResult(first, last, key.raw if key else None, checker.count - first + 1,
                       first_prev, bytes(hashes), failure, rotations, genesis, rewritten)


def _check_sqlite_range(args: tuple[str, int, int | None, bytes | None, bool]) -> RangeResult:
    path, first, last, key_raw, from_start = args
    source = SQLiteSource(Path(path))
    try:
        key = SignKey(key_raw) if key_raw else None
        try:
            return check_entries(source.rows(None if from_start else first, last), first, last,
                                 key)
        except CorruptLog as exc:
            return RangeResult(first, last, key_raw, 0, None, b"", (first, str(exc)), ())
    finally:
        source.close()


# -- key history ------------------------------------------------------------------------------


def declared_keys(source: LogSource, size: int) -> list[tuple[int, SignKey]]:
    """(first seq, key) for each signer key, from LogOpened/KeyRotated payloads.

    For commands that show a checkpoint or a proof, and as verify's guess of the key at the
    start of each parallel range. Verify itself uses only the key history its chain pass read.
    """
    items: list[tuple[Any, Any, Any]]
    if isinstance(source, SQLiteSource):
        try:
            items = source.conn.execute(
                "SELECT seq, type, payload FROM events NOT INDEXED WHERE type IN (?, ?) "
                "AND seq BETWEEN 1 AND ? ORDER BY seq", (LOG_OPENED, KEY_ROTATED, size),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptLog(f"the events table cannot be read: {exc}") from exc
    else:
        items = [
            (e.seq, e.type, e.payload) for e in source.rows(1, size)
            if isinstance(e, StoredEvent) and e.type in (LOG_OPENED, KEY_ROTATED)
        ]
    keys: list[tuple[int, SignKey]] = []
    for seq, type_, payload in items:
        if not isinstance(seq, int) or not isinstance(payload, bytes):
            continue  # a malformed row: the chain pass names the position it breaks
        try:
            data = decode_payload(payload)
            if type_ == LOG_OPENED:
                if seq != 1 and not keys:
                    break  # no LogOpened at seq 1: reported below as a missing genesis
                if seq != 1:
                    raise StepFailed(2, "LogOpened may only be the first entry", seq)
                keys.append((1, SignKey(from_b64url(data["sign_key"]))))
            else:
                keys.append((seq + 1, SignKey(from_b64url(data["new_key"]))))
        except (ValueError, KeyError, TypeError, InvalidKey, RecursionError):
            raise StepFailed(2, f"{type_} names no valid key", seq) from None
    if not keys or keys[0][0] != 1:
        raise StepFailed(2, "the first entry is not LogOpened: the log has no genesis", 1)
    return keys


def _key_guesses(source: SQLiteSource, n: int) -> list[tuple[int, SignKey]]:
    """The key history as the rows declare it, to start each parallel range (never trusted)."""
    try:
        return declared_keys(source, n)
    except (StepFailed, CorruptLog):
        return []


def key_at(keys: Sequence[tuple[int, SignKey]], seq: int) -> SignKey:
    """The key in force for entry ``seq``."""
    current = keys[0][1]
    for first, key in keys:
        if first <= seq:
            current = key
    return current


# -- the verifier -----------------------------------------------------------------------------


@dataclass
class ChainResult:
    """Steps 2-4 as read by the chain pass: every fact later steps rely on comes from here."""

    entries: int
    keys: list[tuple[int, SignKey]]
    genesis: dict[str, Any]
    tree: merkle.CompactRange
    roots: dict[int, bytes]
    head: bytes
    rewritten: int


def _genesis_facts(payload: bytes) -> dict[str, Any]:
    """The genesis payload (its signature and hash are checked by the chain pass)."""
    try:
        return decode_payload(payload)
    except RecursionError:
        raise StepFailed(2, "LogOpened payload is nested too deeply", 1) from None
    except ValueError as exc:
        raise StepFailed(2, f"LogOpened payload is malformed: {exc}", 1) from None


def log_kind(genesis: dict[str, Any]) -> str:
    """The kind a genesis payload names (a genesis without one is a node's, from before kinds)."""
    kind = genesis.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or kind not in kinds.KINDS:
        raise StepFailed(2, f"the genesis names log kind {kind!r}, which this verifier does not "
                            f"know (known: {', '.join(kinds.KINDS)})", 1)
    return kind


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
    report.pseudonymized = source.pseudonymized
    try:
        try:
            # 1. Read the log: the file's structure first (a damaged page can alias, hide or
            # duplicate rows), then every row, once, by the chain pass below; the schema is
            # compared once the genesis has said which kind of log this is.
            current = 1
            if isinstance(source, SQLiteSource):
                source.check_structure()
            hint, _top = source.size()
            if hint == 0:
                raise StepFailed(1, "the log has no entries: nothing to verify")

            # 2, 3 and 4. The chain pass: sequence, hashes, links and signatures, with the
            # genesis and the key history read from the very rows it checks.
            current = 3

            def pin(genesis_key: SignKey) -> None:
                if key is not None and genesis_key != key:
                    raise StepFailed(2, f"genesis key {genesis_key.b64url()} is not the "
                                        f"expected key {key.b64url()}", 1)
                if node_id is not None and genesis_key.node_id != node_id:
                    raise StepFailed(2, f"the log belongs to node {genesis_key.node_id}, "
                                        f"not {node_id}", 1)

            # The Merkle roots steps 5 and 6 compare are taken from the chain pass's own hashes.
            sizes = {s for s, _ in source.checkpoints()}
            if checkpoint is not None:
                with contextlib.suppress(CheckpointError):
                    sizes.add(parse_given_checkpoint(checkpoint).size)
            prepare = _prepare_schema(source) if isinstance(source, SQLiteSource) else None
            try:
                chain = _chain_pass(source, hint, jobs, progress, report, pin, sizes=sizes,
                                    meanwhile=prepare)
            except StepFailed as exc:
                if isinstance(source, SQLiteSource):
                    exc.reason += _schema_note(source)
                if exc.step > 1:
                    done(1, "file structure sound; rows read until the failure below"
                         if isinstance(source, SQLiteSource) else "bundle read")
                raise
            n = chain.entries
            genesis_key = chain.keys[0][1]
            kind = log_kind(chain.genesis)
            report.kind = kind
            report.origin = origin_for(genesis_key.node_id)
            report.keys = [(s, k.b64url()) for s, k in chain.keys]
            report.rewritten = chain.rewritten
            current = 1
            if isinstance(source, SQLiteSource):
                _check_schema(source, kind)
                source.check_indexes()
                done(1, f"{n} entries; file structure sound, every index matches its table; "
                        f"the schema is a {kind} log's own")
            else:
                done(1, f"{n} entries" + (" (pseudonymized bundle)" if source.pseudonymized
                                          else ""))
            current = 2
            _check_bundle_header(source, report)
            done(2, f"{kind} log; genesis key {genesis_key.b64url()} (node "
                    f"{genesis_key.node_id}), {len(chain.keys) - 1} rotation(s)")
            if chain.rewritten:
                done(3, f"{n} entries in sequence, every link matches; {chain.rewritten} "
                        "pseudonymized entries' contents differ from their signed hashes, "
                        f"the other {n - chain.rewritten} hash to theirs")
            else:
                done(3, f"{n} entries in sequence, every hash and link matches")
            done(4, f"{n} signatures verify ({report.workers} worker"
                    f"{'s' if report.workers > 1 else ''})")
            report.entries = n
            report.root = chain.tree.root().hex()
            report.head = chain.head.hex()

            # 5. Stored checkpoints.
            current = 5
            done(5, *_check_stored_checkpoints(source, n, chain.keys, chain.roots, report))

            # 6. Consistency with the given checkpoint.
            current = 6
            if checkpoint is None:
                done(6, "no checkpoint given", "skipped")
            else:
                done(6, _check_given_checkpoint(checkpoint, n, chain.keys, chain.roots, report))

            # 7. Projections equal a replay.
            current = 7
            if not projections:
                done(7, "not requested", "skipped")
            elif not isinstance(source, SQLiteSource):
                done(7, "a bundle holds no projections", "skipped")
            else:
                done(7, *_check_projections(source, n, kind))
        except StepFailed as exc:
            report.failed_seq = exc.seq
            report.reason = exc.reason
            report.entries = 0
            done(exc.step, exc.reason, "failed")
        except CorruptLog as exc:
            report.reason = str(exc)
            report.entries = 0
            done(current, str(exc), "failed")
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            # Damaged storage met where no step expected it: fail closed, never raise.
            report.reason = f"the database cannot be read: {exc}"
            report.entries = 0
            done(current, report.reason, "failed")
    finally:
        source.close()
    return report


def _check_schema(source: SQLiteSource, kind: str) -> None:
    try:
        differences = schema_differences(source.conn, kind)
    except UnknownKind as exc:
        raise StepFailed(1, str(exc)) from None
    if differences:
        more = f" (and {len(differences) - 1} more difference(s))" if len(differences) > 1 else ""
        raise StepFailed(1, f"schema: {differences[0]}{more}")


def _genesis_kind_hint(source: SQLiteSource) -> str:
    """The kind the genesis row names, unchecked: only to prepare or to explain, never to decide."""
    try:
        genesis = source.genesis()
        if isinstance(genesis, StoredEvent):
            named = decode_payload(genesis.payload).get("kind", DEFAULT_KIND)
            if isinstance(named, str) and named in kinds.KINDS:
                return named
    except (ValueError, RecursionError, CorruptLog):
        pass
    return DEFAULT_KIND


def _prepare_schema(source: SQLiteSource) -> Callable[[], object]:
    kind = _genesis_kind_hint(source)

    def prepare() -> None:
        with contextlib.suppress(Exception):  # a failure here is met again where it matters
            expected_schema(kind)

    return prepare


def _schema_note(source: SQLiteSource) -> str:
    """What else is wrong with a database whose chain failed: its schema, compared with the
    kind its genesis row names if that kind is known, else a node's (the genesis may be the
    entry that failed, so this only adds to a failure already found)."""
    kind = _genesis_kind_hint(source)
    try:
        differences = schema_differences(source.conn, kind)
    except (UnknownKind, sqlite3.Error):
        return ""
    return (f"; the database's schema is not the store's own either: {differences[0]}"
            if differences else "")


def _check_bundle_header(source: LogSource, report: Report) -> None:
    """The header's unsigned claims must agree with what the entries prove (or be absent)."""
    if not isinstance(source, BundleSource):
        return
    if source.origin_hint != report.origin:
        raise StepFailed(2, f"the bundle names origin {source.origin_hint} but its genesis key "
                            f"belongs to {report.origin}", 1)
    claimed = source.header.get("key_history")
    if claimed is not None and claimed != [
        {"from_seq": s, "sign_key": k} for s, k in report.keys
    ]:
        raise StepFailed(2, "the bundle header's key history is not the one its entries sign")


def _ranges(n: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + RANGE_SIZE - 1)) for a in range(1, n + 1, RANGE_SIZE)]


def _step_of(reason: str) -> int:
    if "signature" in reason:
        return 4
    if any(word in reason for word in ("LogOpened", "genesis", "no signer key")):
        return 2
    return 3


def _chain_pass(
    source: LogSource,
    hint: int,
    jobs: int | None,
    progress: Progress | None,
    report: Report,
    pin: Callable[[SignKey], None],
    sizes: set[int],
    *,
    until: int | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> ChainResult:
    """Steps 2-4 over every row (or rows 1..``until``); the Merkle frontier and the roots at
    the requested ``sizes``.

    Ranges are planned from ``hint`` (the row count), but what is checked is what is read: the
    first range reads every row below it too, the last every row above it. A parallel range is
    started from a guessed key; the stitch below follows the key history the ranges themselves
    read, and a range whose guess was not the key in force is checked again with that key, so
    no signature is ever accepted under a key the chain pass did not see handed over.
    """
    tree = merkle.CompactRange()
    roots: dict[int, bytes] = {}
    wanted = sorted(s for s in sizes if s > 0)
    workers = max(1, jobs or os.cpu_count() or 1)
    plan = min(hint, until) if until is not None else hint
    parallel = isinstance(source, SQLiteSource) and workers > 1 and plan >= PARALLEL_THRESHOLD
    ranges: list[tuple[int, int | None]] = list(_ranges(plan)) if parallel else [(1, until)]
    if ranges and until is None:
        ranges[-1] = (ranges[-1][0], None)
    results: Iterable[RangeResult]
    pool: ProcessPoolExecutor | None = None
    if parallel:
        assert isinstance(source, SQLiteSource)
        report.workers = workers
        guesses = _key_guesses(source, plan)
        # fork is cheap and safe while this process runs one thread; otherwise spawn.
        method = "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
        results = pool.map(
            _check_sqlite_range,
            [(str(source.path), a, b, key_at(guesses, a).raw if guesses and a > 1 else None,
              a == 1) for a, b in ranges],
        )
        if meanwhile is not None:
            # The workers are forked by now; this process waits on them, so it can build
            # what later steps need (the expected schema) in the meantime.
            helper = threading.Thread(target=meanwhile, name="openred-verify-prepare",
                                      daemon=True)
            helper.start()
    else:
        report.workers = 1
        results = (check_entries(source.rows(None, until), 1, until, None,
                                 pseudonymized=source.pseudonymized),)
    prev_last: bytes = GENESIS_PREV_HASH
    failure: tuple[int, str] | None = None
    keys: list[tuple[int, SignKey]] = []
    genesis: bytes | None = None
    count = 0
    rewritten = 0
    try:
        for result in results:
            if keys and result.first > 1 and result.start_key != keys[-1][1].raw:
                # Guessed wrong: check this range again under the key its predecessors handed
                # over (the first range reads the genesis itself and needs no guess).
                assert isinstance(source, SQLiteSource)
                result = check_entries(source.rows(result.first, result.last), result.first,
                                       result.last, keys[-1][1])
            if result.first > 1 and result.first_prev_hash is not None \
                    and result.first_prev_hash != prev_last:
                failure = (result.first, "prev_hash does not match the previous entry's hash")
            if failure is None and result.failure is not None:
                failure = result.failure
            if result.genesis is not None and genesis is None:
                genesis = result.genesis
                try:
                    first_key = SignKey(from_b64url(decode_payload(genesis)["sign_key"]))
                except (ValueError, KeyError, TypeError, InvalidKey, RecursionError):
                    first_key = None
                if first_key is not None:
                    keys.append((1, first_key))
                    pin(first_key)  # a log that is not the expected one fails here, first
            if failure is not None:
                break
            keys.extend((seq, SignKey(raw)) for seq, raw in result.rotations)
            count += result.count
            rewritten += result.rewritten
            hashes = result.hashes
            start = result.first
            last = result.first + result.count - 1
            while wanted and wanted[0] <= last:
                cut = wanted.pop(0)
                tree.extend(_split(hashes[: (cut - start + 1) * 32]))
                hashes = hashes[(cut - start + 1) * 32:]
                start = cut + 1
                roots[cut] = tree.root()
            tree.extend(_split(hashes))
            if result.count:
                prev_last = result.hashes[-32:]
            if progress:
                progress(last, plan)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        seq, reason = failure
        raise StepFailed(_step_of(reason), reason, seq)
    if count == 0:
        raise StepFailed(1, "the log has no entries: nothing to verify")
    assert genesis is not None and keys  # entry 1 passed the chain checker: a valid LogOpened
    return ChainResult(count, keys, _genesis_facts(genesis), tree, roots, prev_last, rewritten)


def check_chain_parallel(
    source: SQLiteSource, n: int, *, jobs: int | None = None, progress: Progress | None = None
) -> list[tuple[int, SignKey]]:
    """Steps 2-4 for entries 1..``n`` on every core; TamperedLog names the first bad entry."""
    try:
        chain = _chain_pass(source, n, jobs, progress, Report(path=str(source.path)),
                            lambda _key: None, sizes=set(), until=n)
    except StepFailed as exc:
        raise TamperedLog(exc.seq or 1, exc.reason) from None
    return chain.keys


def _split(blob: bytes) -> list[bytes]:
    return [blob[i:i + 32] for i in range(0, len(blob), 32)]


def _check_stored_checkpoints(
    source: LogSource, n: int, keys: list[tuple[int, SignKey]], roots: dict[int, bytes],
    report: Report,
) -> tuple[str, str]:
    stored = source.checkpoints()
    if isinstance(source, BundleSource) and not any(size > n for size, _ in stored) \
            and source.header.get("count") != n:
        raise StepFailed(5, f"the bundle header counts {source.header.get('count')!r} entries, "
                            f"the bundle holds {n}")
    if not stored:
        report.uncovered = n
        return (f"the log holds no checkpoint: none of its {n} entries is covered by a signed "
                "checkpoint (removed checkpoints look like this)", "warning")
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
    report.uncovered = n - newest
    if newest < n:
        # Normal between two checkpoints of a live log; stated, so a cut tail is visible.
        return (f"{len(stored)} checkpoints verify; newest at size {newest}; {n - newest} "
                "entries after it are covered by no stored checkpoint", "ok")
    return f"{len(stored)} checkpoints verify; newest at size {newest} covers every entry", "ok"


def parse_given_checkpoint(note: bytes) -> Checkpoint:
    """Parse a checkpoint an auditor saved; CheckpointError names what is wrong with the file."""
    try:
        return parse_checkpoint_body(parse_signed_note(note).body)
    except (ValueError, UnicodeError, RecursionError) as exc:
        # e.g. a tree size of thousands of digits: int() refuses it before any range check.
        raise CheckpointError(f"malformed checkpoint: {exc}") from None


def _check_given_checkpoint(
    note: bytes, n: int, keys: list[tuple[int, SignKey]], roots: dict[int, bytes],
    report: Report,
) -> str:
    try:
        claimed = parse_given_checkpoint(note)
    except CheckpointError as exc:
        raise StepFailed(6, f"the given checkpoint is malformed: {exc}") from None
    if claimed.origin != report.origin:
        raise StepFailed(6, f"the given checkpoint is for {claimed.origin}, "
                         f"this log is {report.origin}")
    # Signature first: only a checkpoint this log's key signed may say the log lost entries.
    size_key = key_at(keys, min(claimed.size, n) + 1)
    try:
        verify_checkpoint(note, report.origin, size_key)
    except CheckpointError as exc:
        if claimed.size <= n:
            raise StepFailed(
                6, f"the given checkpoint is not signed by this log's key: {exc}"
            ) from None
        try:  # a key rotated away in entries the log no longer has: try the newest we know
            verify_checkpoint(note, report.origin, keys[-1][1])
        except CheckpointError:
            raise StepFailed(
                6, f"the given checkpoint is not signed by this log's key: {exc}"
            ) from None
    if claimed.size > n:
        raise StepFailed(6, f"the log has {n} entries but the given checkpoint covers "
                         f"{claimed.size}: truncated or rolled back", n + 1)
    # Holding every leaf, the verifier recomputes the old tree's root directly: equal roots are
    # exactly what a consistency proof would establish (RFC 9162 §2.1.4), without trusting one.
    expected = roots.get(claimed.size) if claimed.size else merkle.root_from_entry_hashes([])
    if expected != claimed.root_hash:
        raise StepFailed(6, f"the log's first {claimed.size} entries differ from the tree the "
                         "given checkpoint signed: the log was rewritten or forked")
    return f"the log ({n} entries) extends the checkpoint at size {claimed.size}"


def _check_projections(source: SQLiteSource, n: int, kind: str) -> tuple[str, str]:
    """Step 7: replay the log into a fresh database built by the kind's migrations, compare.

    Nothing of the file under test runs here (its triggers, views and indexes stay unread), and
    memory holds only projection rows: events stream from the file in chunks.
    """
    projections = kinds.projections_for(kind)
    registry = kinds.registry_for(kind)
    tables = projections.tables()
    try:
        position_rows = _dump(source.conn, "projection_positions")
        stored = {t: _dump(source.conn, t) for t in tables}
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise CorruptLog(f"the projection tables cannot be read: {exc}") from exc
    stored_positions = {r[0]: r[1] for r in position_rows}
    if len(stored_positions) != len(position_rows):
        raise StepFailed(7, "projection_positions holds a projection twice")
    if not len(projections):
        return (f"a {kind} log keeps no projections", "skipped")
    if not stored_positions and not any(stored.values()):
        # A store opened without projections (a plain log) keeps none: nothing to compare, and
        # nothing a node could act on either (a node catches up from 0 when it opens).
        return (f"the log keeps none of the {kind} projections (no positions, empty tables)",
                "skipped")
    for projection in projections:
        if projection.name not in stored_positions:
            raise StepFailed(7, f"projection {projection.name} has no recorded position")
        if stored_positions[projection.name] != n:
            raise StepFailed(7, f"projection {projection.name} is at position "
                             f"{stored_positions[projection.name]}, the log at {n}")
    extra = sorted(map(repr, set(stored_positions) - set(projections.names)))
    if extra:
        raise StepFailed(7, f"projection_positions names {', '.join(extra)}, which "
                            f"no {kind} projection is")
    with tempfile.TemporaryDirectory(prefix="openred-verify-") as tmp:
        fresh = Path(tmp) / "replay.db"
        fresh_database(fresh, kind)
        mem = sqlite3.connect(fresh, isolation_level=None)
        try:
            mem.execute("PRAGMA journal_mode=OFF")
            mem.execute("PRAGMA synchronous=OFF")
            mem.execute("BEGIN")
            try:
                events = (e for e in source.rows(1, n) if isinstance(e, StoredEvent))
                project_events(mem, projections, registry, events)
            except RecursionError:
                raise StepFailed(7, "replaying the log into projections failed: a payload is "
                                    "nested too deeply") from None
            except (ValueError, KeyError, TypeError, sqlite3.DatabaseError) as exc:
                raise StepFailed(7, f"replaying the log into projections failed: {exc}") from None
            for table in tables:
                if _dump(mem, table) != stored[table]:
                    raise StepFailed(7, f"projection table {table} differs from a replay of the "
                                        "log")
        finally:
            mem.close()
    return f"{len(tables)} tables equal a replay of {n} entries", "ok"


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
