"""The disk side of a transfer: early writeback on the receiver; the sender's chunk answers.

* The receiver asks the kernel to start writing each range the whole digest has read back
  (``sync_file_range``), so the ``fsync`` before the file is placed finds little left to write.
  It is only a head start: what is placed is still fsynced first, and the ranges started are
  exactly the file, each once, in order, only after the digest has passed them.
* The sender's answer is byte for byte the proof head followed by the chunk, and a changed
  file is refused.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from openred.errors import NodeRefused
from openred.modules.file_sharing import service
from openred.modules.file_sharing.domain import CHUNK_SIZE, HashTree, chunk_count, leaf_hash
from openred.modules.file_sharing.readmodels import FileOfferRow
from openred.modules.file_sharing.service import FileSharing
from tests.modules.file_sharing.world import files, served_pair
from tests.node.world import Directory, JailPair

HOUR = 3600


def test_start_writeback_leaves_the_file_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * 65536 + 7)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    try:
        service.start_writeback(fd, 0, len(data))
        service.start_writeback(fd, 65536, 10)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_start_writeback_never_raises() -> None:
    # A head start that cannot be had (a bad descriptor) is no error: the fsync still follows.
    service.start_writeback(-1, 0, 10)


def test_without_sync_file_range_nothing_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoLibc:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("no C library")

    monkeypatch.setattr(service.ctypes, "CDLL", NoLibc)
    start = service._writeback_starter()
    start(-1, 0, 10)  # does nothing, raises nothing


async def test_the_digest_starts_writeback_over_the_whole_file_in_order(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 5 * CHUNK_SIZE + 123
    started: list[tuple[int, int]] = []
    fsynced: list[str] = []
    real_start, real_fsync = service.start_writeback, os.fsync

    def start(fd: int, offset: int, length: int) -> None:
        started.append((offset, length))
        real_start(fd, offset, length)

    def fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(service, "start_writeback", start)
    monkeypatch.setattr(service.os, "fsync", fsync)
    async with served_pair(jails, directory, tmp_path) as pair:
        data = os.urandom(size)
        (tmp_path / "f").write_bytes(data)
        offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
        path = await files(pair.b).fetch(offer.offer_id)
        assert path.read_bytes() == data
    # Contiguous ranges from 0 to the end, each once: started only behind the digest.
    at = 0
    for offset, length in started:
        assert offset == at and length > 0
        at += length
    assert at == size
    # The partial file is still fsynced before it is linked into place.
    assert any(name.endswith(f"{offer.offer_id}.part") for name in fsynced)


def _offered(tmp_path: Path, data: bytes) -> tuple[FileOfferRow, HashTree]:
    path = tmp_path / "offered"
    path.write_bytes(data)
    info = os.stat(path)
    leaves = [leaf_hash(data[i:i + CHUNK_SIZE]) for i in range(0, len(data), CHUNK_SIZE)]
    tree = HashTree(leaves)
    row = FileOfferRow(
        offer_id="x" * 22, direction="sent", peer="p", session_id="s", name="offered",
        size=len(data), digest="", root="", chunk_size=CHUNK_SIZE, expires_at=0,
        state="offered", source=str(path), mtime_ns=str(info.st_mtime_ns), offered_at="",
    )
    return row, tree


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_chunk_answer_is_the_head_then_the_chunk_byte_for_byte(
    tmp_path: Path, index: int
) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 1000)
    row, tree = _offered(tmp_path, data)
    assert chunk_count(row.size, row.chunk_size) == 3
    offset = index * CHUNK_SIZE
    length = min(CHUNK_SIZE, len(data) - offset)
    proof = tree.proof(index)
    head = b"".join((struct.pack(">H", len(proof)), *proof))
    answer = FileSharing._read_chunk(row, offset, length, tree.leaf(index), head)
    assert answer == head + data[offset:offset + length]


def test_a_chunk_of_a_changed_file_is_refused(tmp_path: Path) -> None:
    data = os.urandom(CHUNK_SIZE + 10)
    row, tree = _offered(tmp_path, data)
    # Same size and modification time, other bytes: the leaf hash catches it.
    path = Path(str(row.source))
    stamp = os.stat(path)
    with path.open("r+b") as f:
        f.write(b"\x00" * 16)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    with pytest.raises(NodeRefused) as caught:
        FileSharing._read_chunk(row, 0, CHUNK_SIZE, tree.leaf(0), b"\x00\x00")
    assert (caught.value.status, caught.value.reason) == (409, "file-changed")
    # A file cut short (size differs) is refused as well.
    with path.open("r+b") as f:
        f.truncate(CHUNK_SIZE)
    with pytest.raises(NodeRefused) as caught:
        FileSharing._read_chunk(row, CHUNK_SIZE, 10, tree.leaf(1), b"\x00\x00")
    assert caught.value.reason == "file-changed"
