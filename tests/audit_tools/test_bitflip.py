"""Flip bits of a small database image: verify fails, SQLite reports corruption, or nothing changed.

Never an undetected change and never a crash. The image is a real node log (4 entries, 2 signed
checkpoints, the node's projections) rewritten by ``VACUUM INTO`` with 512-byte pages, so every
table, index, schema record and header field sits in a few thousand bytes.

What counts as the log's *logical content*, compared before and after each flip:

* every row of ``events`` (the log itself);
* ``checkpoints``' size, root_hash and note (signed attestations and the root they sign);
  ``signed_at`` is left out: it is the node's unsigned note of when it signed, nothing is
  derived from it, and no verifier can attest it;
* every row of ``projection_positions`` and of the five projection tables (verify step 7
  promises they equal a replay);
* and that each of these tables is still there (a table gone from the schema is a change).

Rows are read from the tables themselves (``NOT INDEXED``), text as raw bytes. ``make test``
flips every bit of the first 100 bytes (the header), one bit of each byte of every page's
b-tree header and one bit of every seventh byte (about 4,300 flips); ``OPENRED_TEST_LONG=1``
flips every bit of the image (about 172,000).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from audit_tools.verify import verify
from tests.conftest import LONG, REPO_ROOT
from tests.store.history import peer_event, session_events
from tests.vectors import make_fixtures as mf

CONTENT_TABLES = ("events", "checkpoints", "projection_positions", "registration", "peers",
                  "tokens", "sessions", "inbox")
HEADER_BYTES = 100
PAGE_SIZE = 512

Content = dict[str, list[tuple[Any, ...]]]


class Unreadable(Exception):
    """SQLite itself reported the file corrupt."""


def logical_content(path: Path) -> Content:
    """The log's logical content (see the module docstring), or Unreadable."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise Unreadable(str(exc)) from exc
    conn.text_factory = bytes
    try:
        content: Content = {}
        for table in CONTENT_TABLES:
            columns = "size, root_hash, note" if table == "checkpoints" else "*"
            try:
                rows = conn.execute(f"SELECT {columns} FROM {table} NOT INDEXED").fetchall()
            except sqlite3.OperationalError as exc:
                if "no such" in str(exc):
                    # The table (or a column) left the schema: the content changed.
                    content[table] = [("<missing>", str(exc))]
                    continue
                raise Unreadable(str(exc)) from exc
            content[table] = sorted((tuple(r) for r in rows), key=repr)
        return content
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise Unreadable(str(exc)) from exc
    finally:
        conn.close()


@dataclass
class Image:
    data: bytes
    content: Content


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    tmp = tmp_path_factory.mktemp("bitflip")
    session = session_events(0)
    db = asyncio.run(mf.build_closed_log(
        tmp / "node.db", [[peer_event(0)], [session[0], session[2]]]))
    small = tmp / "small.db"
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("VACUUM INTO ?", (str(small),))
    finally:
        conn.close()
    content = logical_content(small)
    # The copy is the same log: every entry, checkpoint and projection row survived.
    assert content == logical_content(db)
    assert len(content["events"]) == 4 and len(content["checkpoints"]) == 2
    assert len(content["peers"]) == 1 and len(content["sessions"]) == 1
    data = small.read_bytes()
    assert len(data) <= 42 * PAGE_SIZE  # 40, plus one page per file_sharing table
    assert verify(small, jobs=1).ok
    return Image(data, content)


@dataclass
class Outcome:
    checked: int = 0
    unchanged: int = 0
    corrupt: int = 0
    detected: int = 0
    undetected: list[str] = field(default_factory=list)
    raised: list[str] = field(default_factory=list)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def check_flips(image: Image, bits: Iterable[int], target: Path) -> Outcome:
    outcome = Outcome()
    for bit in bits:
        target.write_bytes(flip(image.data, bit))
        outcome.checked += 1
        try:
            report = verify(target, jobs=1)
        except Exception:
            outcome.raised.append(f"bit {bit}: {traceback.format_exc(limit=-3)}")
            continue
        try:
            content = logical_content(target)
        except Unreadable:
            outcome.corrupt += 1
            continue
        if content == image.content:
            outcome.unchanged += 1
        elif report.ok:
            changed = [t for t in CONTENT_TABLES if content[t] != image.content[t]]
            outcome.undetected.append(f"bit {bit} (byte {bit // 8}) changed {changed}")
        else:
            outcome.detected += 1
    return outcome


PAGE_HEADER_BYTES = 12
"""A b-tree page's header (8 bytes, 12 on interior pages): type, free blocks, cell count..."""
STRIDE = 7


def sample_bits(size: int) -> list[int]:
    """Every bit of the header; one bit of each byte of every page's b-tree header; then one bit
    of every seventh byte (a different bit each time: 7 and 8 are coprime, so every bit
    position of every page's bytes is reached)."""
    bits = list(range(HEADER_BYTES * 8))
    page_headers = {start + i for start in [HEADER_BYTES, *range(PAGE_SIZE, size, PAGE_SIZE)]
                    for i in range(PAGE_HEADER_BYTES)}
    rest = set(range(HEADER_BYTES, size, STRIDE))
    bits += [byte * 8 + byte % 8 for byte in sorted(page_headers | rest)]
    return bits


@pytest.mark.slow
def test_no_bit_flip_changes_the_log_unnoticed_or_crashes_verify(image: Image,
                                                               tmp_path: Path) -> None:
    bits = range(len(image.data) * 8) if LONG else sample_bits(len(image.data))
    outcome = check_flips(image, bits, tmp_path / "flipped.db")
    assert not outcome.raised, "\n".join(outcome.raised[:5])
    assert not outcome.undetected, "\n".join(outcome.undetected[:20])
    # The sample reached every kind of outcome: the test can see changes, not just noise.
    assert outcome.checked == len(bits)
    assert outcome.detected > 100 and outcome.unchanged > 100 and outcome.corrupt > 100, outcome


# Header fields and pages where a flip once made verify raise or pass: page size, write
# version, database size, the schema page's cell count, a schema rootpage, a projection row.
CLI_BITS = [16 * 8 + 1, 18 * 8 + 2, 28 * 8 + 0, 104 * 8 + 2]


def test_the_cli_never_shows_a_traceback_for_a_flipped_image(image: Image,
                                                             tmp_path: Path) -> None:
    middle = len(image.data) // 2 * 8 + 3
    last_page = (len(image.data) - PAGE_SIZE + 8) * 8
    for bit in [*CLI_BITS, middle, last_page]:
        path = tmp_path / f"flip-{bit}.db"
        path.write_bytes(flip(image.data, bit))
        result = subprocess.run([sys.executable, "-m", "audit_tools", "verify", str(path)],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                                check=False)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode in (0, 1), (bit, result.stdout, result.stderr)
        assert result.stdout.strip() or result.stderr.strip()
