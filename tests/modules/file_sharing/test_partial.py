"""The partial file is checked before it is placed, whatever happened to it.

A fetch checks each chunk in memory against the offer's tree, but the whole digest is read back
from the partial file on disk: chunks a resumed fetch kept from an earlier run are not hashed
again up front, so bytes changed on disk — during the run or between runs — must be caught by
that digest, the damaged chunks fetched again, and nothing wrong ever placed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import mmap
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openred.errors import NodeRefused
from openred.modules.file_sharing import events as fev
from openred.modules.file_sharing.domain import CHUNK_SIZE
from openred.modules.file_sharing.service import CHUNK
from tests.modules.file_sharing.world import Pair, files, verified_pair
from tests.node.world import Directory, JailPair

HOUR = 3600


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    async with verified_pair(jails, directory, tmp_path) as served:
        yield served


def payload(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def wrong_copy(chunk: memoryview, at: int, flip: int) -> mmap.mmap:
    """``chunk`` with byte ``at`` XORed with ``flip``, in a page-aligned buffer (the partial
    file may be open with O_DIRECT, which takes only aligned buffers)."""
    copy = mmap.mmap(-1, max(len(chunk), 1))
    copy[:len(chunk)] = chunk
    copy[at] ^= flip
    return copy


def counting(b: Any) -> list[int]:
    """Record the index of every chunk ``b`` asks for."""
    fetched: list[int] = []
    original = b._call

    async def call(peer: str, route: Any, request: bytes, channel: Any = None,
                   transport: Any = None, into: Any = None) -> Any:
        if route == CHUNK:
            import json

            fetched.append(json.loads(request)["offset"] // CHUNK_SIZE)
        return await original(peer, route, request, channel, transport, into)

    b._call = call
    return fetched


async def interrupted(pair: Pair, tmp_path: Path, chunks: int, stop_at: int) -> tuple[Any, bytes]:
    """An offer of ``chunks`` chunks fetched by B until ``stop_at`` chunks are verified."""
    data = payload(tmp_path / "f", chunks * CHUNK_SIZE - 11)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    got = asyncio.Event()
    task = asyncio.create_task(files(pair.b).fetch(
        offer.offer_id, in_flight=1,
        progress=lambda p: got.set() if p.verified >= stop_at * CHUNK_SIZE else None))
    await got.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return offer, data


def part_of(pair: Pair, offer: Any) -> Path:
    return pair.b.data / "files" / "partial" / f"{offer.offer_id}.part"


async def test_a_chunk_damaged_on_disk_during_the_run_is_caught_and_fetched_again(
    pair: Pair, tmp_path: Path
) -> None:
    data = payload(tmp_path / "f", 4 * CHUNK_SIZE + 5)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    b = files(pair.b)
    damaged: list[int] = []

    def bad_disk(fd: int, chunk: memoryview, offset: int) -> int:
        # The disk silently stores one wrong byte of chunk 2, once.
        if offset == 2 * CHUNK_SIZE and not damaged:
            damaged.append(offset)
            with wrong_copy(chunk, 100, 0x01) as wrong, memoryview(wrong) as view:
                return os.pwrite(fd, view[:len(chunk)], offset)
        return os.pwrite(fd, chunk, offset)

    b.write = bad_disk
    fetched = counting(b)
    path = await b.fetch(offer.offer_id)
    assert damaged and path.read_bytes() == data
    assert sorted(fetched) == [0, 1, 2, 2, 3, 4]  # only the damaged chunk twice
    assert not list((pair.b.data / "files" / "partial").iterdir())


async def test_a_disk_that_keeps_damaging_a_chunk_places_nothing(
    pair: Pair, tmp_path: Path
) -> None:
    payload(tmp_path / "f", 3 * CHUNK_SIZE)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    b = files(pair.b)

    def bad_disk(fd: int, chunk: memoryview, offset: int) -> int:
        with wrong_copy(chunk, 0, 0x80 if offset == CHUNK_SIZE else 0) as wrong, \
                memoryview(wrong) as view:
            return os.pwrite(fd, view[:len(chunk)], offset)

    b.write = bad_disk
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(offer.offer_id)
    assert (caught.value.status, caught.value.reason) == (502, "digest-mismatch")
    assert not (b.received_dir.exists() and list(b.received_dir.iterdir()))
    assert not part_of(pair, offer).exists()
    transfer = await b.transfer(offer.offer_id)
    assert transfer is not None and (transfer.state, transfer.reason) == (
        "failed", "digest-mismatch")


@pytest.mark.parametrize("damage", ["flip", "append", "truncate", "marks"])
async def test_a_partial_file_changed_between_runs_never_reaches_the_placed_file(
    pair: Pair, tmp_path: Path, damage: str
) -> None:
    offer, data = await interrupted(pair, tmp_path, chunks=6, stop_at=3)
    part = part_of(pair, offer)
    marks = part.with_suffix(".marks")
    if damage == "flip":  # one byte of a kept chunk
        with part.open("r+b") as f:
            f.seek(CHUNK_SIZE + 7)
            byte = f.read(1)
            f.seek(CHUNK_SIZE + 7)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "append":  # bytes past the offered size
        with part.open("ab") as f:
            f.seek(0, os.SEEK_END)
            f.write(b"trailing garbage")
    elif damage == "truncate":  # the kept chunks cut short
        os.truncate(part, CHUNK_SIZE + 10)
    else:  # a mark for a chunk that never arrived (its bytes on disk are zeros)
        raw = marks.read_bytes()
        marks.write_bytes(raw + (5).to_bytes(4, "big") + raw[4:36])
    b = files(pair.b)
    fetched = counting(b)
    path = await b.fetch(offer.offer_id)
    assert path.read_bytes() == data
    if damage == "flip":
        assert 1 in fetched and 0 not in fetched
    started = [e for e in await pair.b.services.store.read() if e.type == fev.FILE_TRANSFER_STARTED]
    assert len(started) == 2  # one per run, none for the second pass over the damage


async def test_an_offer_whose_digest_does_not_match_its_tree_places_nothing(
    pair: Pair, tmp_path: Path
) -> None:
    payload(tmp_path / "f", 2 * CHUNK_SIZE + 3)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    b = files(pair.b)
    real = b.offer

    async def lying(offer_id: str) -> Any:
        row = await real(offer_id)
        if row is None:
            return None
        # Every chunk proves itself against the root, but the whole digest is another file's.
        return dataclasses.replace(row, digest=row.root) if dataclasses.is_dataclass(row) else (
            row.model_copy(update={"digest": row.root}))

    b.offer = lying  # type: ignore[method-assign]
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(offer.offer_id)
    assert caught.value.reason == "digest-mismatch"
    assert not (b.received_dir.exists() and list(b.received_dir.iterdir()))
    assert not part_of(pair, offer).exists()
