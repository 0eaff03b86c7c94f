"""Regenerate the golden attack fixtures in ``tests/vectors/`` (the same bytes on every run).

Run from the repository root::

    .venv/bin/python -m tests.vectors.make_fixtures            # rewrite the fixtures here
    .venv/bin/python -m tests.vectors.make_fixtures --out DIR  # write them elsewhere

Every log is built through the real store (``SQLiteEventStore``) from fixed signer seeds and a
fixed clock, then exported with the real exporter, so the fixtures are what OpenRed writes; the
attacks are then applied to the exported JSON Lines as an attacker would edit them. Ed25519
signatures are deterministic (RFC 8032 §5.1.6), so nothing here varies between runs.

The builders (:func:`build_log`, :data:`HISTORY`, the seeds) are also what the tamper, bit-flip
and CLI tests use to build their logs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit_tools.export import export_bundle
from audit_tools.source import SQLiteSource
from audit_tools.verify import verify
from openred.crypto.identity import b64url
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.store.history import fake_id, peer_event, session_events

HERE = Path(__file__).resolve().parent
INDEX_NAME = "index.json"

# The log owner's genesis key, the key it rotates to, and an unrelated key (attacker / re-signer).
OWNER_SEED = b"\x11" * 32
ROTATED_SEED = b"\x12" * 32
ATTACKER_SEED = b"\x13" * 32
ATTACKER_ROTATED_SEED = b"\x14" * 32
CHECKPOINT_EVERY = 5


class FixedClock:
    """A clock that starts at a fixed instant and advances 1 ms per reading."""

    def __init__(self, start: datetime = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass(frozen=True)
class Rotate:
    """A history step: hand the log to the signer built from ``seed``."""

    seed: bytes


HistoryStep = list[NewEvent] | Rotate


def token_events(i: int, *, expire: bool) -> list[NewEvent]:
    """A token received and, optionally, expired unused."""
    grant_id = b64url(hashlib.sha256(b"tok%d" % i).digest()[:16])
    received = NewEvent(ev.grant_stream(grant_id), ev.TOKEN_RECEIVED, {
        "grant_id": grant_id, "peer": fake_id(100 + i), "role": "initiator",
        "suite": "25519_ChaChaPoly_SHA256", "issued_at": 1_790_000_000 + i,
        "expires_at": 1_790_000_300 + i, "grant": b64url(b"{}"),
        "grant_signature": b64url(bytes(64)), "sealed_token": b64url(bytes(80)),
    })
    if not expire:
        return [received]
    return [received, NewEvent(ev.grant_stream(grant_id), ev.TOKEN_EXPIRED,
                               {"grant_id": grant_id})]


def closed_session(i: int) -> NewEvent:
    session_id = b64url(hashlib.sha256(b"sess%d" % i).digest()[:16])
    return NewEvent(ev.session_stream(session_id), ev.SESSION_CLOSED, {"session_id": session_id})


def history(rotate_to: bytes = ROTATED_SEED) -> list[HistoryStep]:
    """The standard 24-entry history: peers, tokens, sessions, messages and one key rotation.

    Seq 1 is LogOpened (written by the store), seq 9 the KeyRotated entry.
    """
    return [
        [peer_event(i) for i in range(3)],                # 2-4
        session_events(0),                               # 5-8
        Rotate(rotate_to),                               # 9
        session_events(1, expire=True),                  # 10-14
        [peer_event(3)],                                 # 15
        [peer_event(4)],                                 # 16
        session_events(2),                               # 17-20
        token_events(0, expire=True),                    # 21-22
        [closed_session(0)],                             # 23
        token_events(1, expire=False),                   # 24
    ]


HISTORY = history()
HISTORY_SIZE = 24
ROTATION_SEQ = 9


def fork_tail(which: str) -> list[HistoryStep]:
    """Two different continuations after the first 16 entries of :data:`HISTORY`."""
    if which == "A":
        return [session_events(2), token_events(0, expire=True)]
    return [session_events(3, expire=True), [peer_event(7)], token_events(5, expire=False)]


FORK_PREFIX_STEPS = 6  # HISTORY[:6] ends at seq 16


async def open_store(path: Path, signer: InProcessSigner, *,
                     checkpoint_every: int = CHECKPOINT_EVERY,
                     clock: FixedClock | None = None) -> SQLiteEventStore:
    """Open a node store with the node's registry and projections and no timed checkpoints."""
    return await SQLiteEventStore.open(
        path, signer, registry=node_registry(), projections=node_projections(),
        checkpoint_every=checkpoint_every, checkpoint_interval=0,
        clock=clock or FixedClock(),
    )


async def build_log(
    path: Path,
    steps: Sequence[HistoryStep] = HISTORY,
    *,
    seed: bytes = OWNER_SEED,
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> SQLiteEventStore:
    """Build a log at ``path`` (a database file) from ``steps``; return the still-open store.

    The caller closes it (which signs a final checkpoint and merges the WAL into the file).
    """
    clock = FixedClock()
    store = await open_store(path, InProcessSigner.from_seed(seed),
                             checkpoint_every=checkpoint_every, clock=clock)
    try:
        await apply_steps(store, steps)
    except BaseException:
        await store.close()
        raise
    return store


async def apply_steps(store: SQLiteEventStore, steps: Sequence[HistoryStep]) -> None:
    for step in steps:
        if isinstance(step, Rotate):
            await store.rotate_key(InProcessSigner.from_seed(step.seed))
        else:
            await store.append(step)


async def build_closed_log(path: Path, steps: Sequence[HistoryStep] = HISTORY, *,
                           seed: bytes = OWNER_SEED) -> Path:
    """Build, close and return the database file of a log."""
    store = await build_log(path, steps, seed=seed)
    await store.close()
    return path


def export(db: Path, out: Path) -> None:
    """Export a verified database to a bundle with the real exporter."""
    report = verify(db, projections=False, jobs=1)
    if not report.ok:
        raise RuntimeError(f"{db} does not verify: {report.reason}")
    source = SQLiteSource(db)
    try:
        export_bundle(source, report, out)
    finally:
        source.close()


def latest_note(db: Path) -> bytes:
    source = SQLiteSource(db)
    try:
        return source.checkpoints()[-1][1]
    finally:
        source.close()


# -- attacks on bundles ----------------------------------------------------------------------


def _lines(bundle: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    raw = bundle.read_bytes().splitlines()
    return json.loads(raw[0]), [json.loads(line) for line in raw[1:]]


def _write(out: Path, header: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    text = b"".join(
        json.dumps(item, separators=(",", ":")).encode() + b"\n" for item in [header, *entries]
    )
    out.write_bytes(text)


def _flip_b64(text: str, bit: int = 0) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[bit // 8] ^= 1 << (bit % 8)
    return b64url(bytes(raw))


@dataclass(frozen=True)
class Fixture:
    """One golden fixture and the outcome ``verify`` must report for it."""

    file: str
    what: str
    valid: bool
    step: int | None = None
    failed_seq: int | None = None
    reason_contains: str = ""
    checkpoint: str | None = None
    key: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file, "what": self.what, "valid": self.valid, "step": self.step,
            "failed_seq": self.failed_seq, "reason_contains": self.reason_contains,
            "checkpoint": self.checkpoint, "key": self.key,
        }


async def write_fixtures(out_dir: Path) -> list[Fixture]:
    """Build every log, export it, apply the attacks and write bundles plus ``index.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    owner_key = InProcessSigner.from_seed(OWNER_SEED).sign_key.b64url()
    fixtures: list[Fixture] = []
    with tempfile.TemporaryDirectory(prefix="openred-fixtures-") as tmp_name:
        tmp = Path(tmp_name)
        main_db = await build_closed_log(tmp / "main.db")
        good = out_dir / "good.jsonl"
        good.unlink(missing_ok=True)
        export(main_db, good)
        (out_dir / "good.checkpoint").write_bytes(latest_note(main_db))
        fixtures.append(Fixture("good.jsonl", "the untouched log (control)", True,
                                checkpoint="good.checkpoint", key=owner_key))
        header, entries = _lines(good)

        # Truncated: the last four entries cut off; the bundle's own checkpoint covers them.
        _write(out_dir / "truncated.jsonl", header, entries[:-4])
        fixtures.append(Fixture("truncated.jsonl", "last 4 entries removed", False, 5,
                                HISTORY_SIZE - 3, "entries were removed"))

        # Truncated cleanly: entries and the checkpoints covering them removed; only a
        # checkpoint saved earlier reveals it.
        kept = HISTORY_SIZE - 4
        clean_header = dict(header, count=kept, checkpoints=[
            c for c in header["checkpoints"] if c["size"] <= kept])
        _write(out_dir / "truncated-clean.jsonl", clean_header, entries[:kept])
        fixtures.append(Fixture(
            "truncated-clean.jsonl", "last 4 entries and their checkpoints removed", False, 6,
            kept + 1, "truncated or rolled back", checkpoint="good.checkpoint"))

        # Reordered: entries 12 and 13 swapped (each keeps its own seq, hash and signature).
        swapped = list(entries)
        swapped[11], swapped[12] = swapped[12], swapped[11]
        _write(out_dir / "reordered.jsonl", header, swapped)
        fixtures.append(Fixture("reordered.jsonl", "entries 12 and 13 swapped", False, 3, 12,
                                "sequence broken"))

        # Bad signature: one bit of entry 17's signature flipped.
        bad = [dict(e) for e in entries]
        bad[16]["signature"] = _flip_b64(bad[16]["signature"], 77)
        _write(out_dir / "bad-signature.jsonl", header, bad)
        fixtures.append(Fixture("bad-signature.jsonl", "one bit of entry 17's signature "
                                "flipped", False, 4, 17, "signature does not verify"))

        # Forked: a log that shares the first 16 entries with the owner's log, then differs;
        # both are validly signed by the same keys. The checkpoint comes from fork A.
        fork_a = await build_closed_log(tmp / "fork-a.db", [*HISTORY[:FORK_PREFIX_STEPS],
                                                            *fork_tail("A")])
        fork_b = await build_closed_log(tmp / "fork-b.db", [*HISTORY[:FORK_PREFIX_STEPS],
                                                            *fork_tail("B")])
        (out_dir / "fork-a.checkpoint").write_bytes(latest_note(fork_a))
        forked = out_dir / "forked.jsonl"
        forked.unlink(missing_ok=True)
        export(fork_b, forked)
        fixtures.append(Fixture(
            "forked.jsonl", "fork B checked against fork A's checkpoint", False, 6, None,
            "forked", checkpoint="fork-a.checkpoint"))

        # Re-signed: the same history re-chained and signed by another key from genesis on.
        resigned_db = await build_closed_log(
            tmp / "resigned.db", history(ATTACKER_ROTATED_SEED), seed=ATTACKER_SEED)
        resigned = out_dir / "resigned.jsonl"
        resigned.unlink(missing_ok=True)
        export(resigned_db, resigned)
        fixtures.append(Fixture("resigned.jsonl", "whole log re-signed by another key, "
                                "expected key given", False, 2, 1, "is not the expected key",
                                key=owner_key))
        fixtures.append(Fixture("resigned.jsonl", "whole log re-signed by another key, "
                                "checked against the owner's checkpoint", False, 6, None,
                                "the given checkpoint is for", checkpoint="good.checkpoint"))

    index = {"generator": "tests/vectors/make_fixtures.py",
             "fixtures": [f.as_json() for f in fixtures]}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return fixtures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write into")
    args = parser.parse_args(argv)
    fixtures = asyncio.run(write_fixtures(args.out))
    print(f"wrote {len(fixtures)} fixtures to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
