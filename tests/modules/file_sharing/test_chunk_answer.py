"""The sender's chunk answer: byte for byte the proof head then the chunk; a changed file refused.

Pinned in round 2 while trying other ways to build the answer (see docs/decisions.md, File
sharing): whatever builds it must give these bytes and these refusals.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from openred.errors import NodeRefused
from openred.modules.file_sharing.domain import CHUNK_SIZE, HashTree, chunk_count, leaf_hash
from openred.modules.file_sharing.readmodels import FileOfferRow
from openred.modules.file_sharing.service import FileSharing


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


def test_reused_read_buffers_give_the_same_answers_and_come_back_after_a_refusal(
    tmp_path: Path
) -> None:
    from openred.modules.file_sharing.service import _Buffers

    data = os.urandom(2 * CHUNK_SIZE + 1000)
    row, tree = _offered(tmp_path, data)
    buffers = _Buffers(2)
    for index in (0, 2, 1, 0):  # a long buffer serves the short last chunk, then is reused
        offset = index * CHUNK_SIZE
        length = min(CHUNK_SIZE, len(data) - offset)
        proof = tree.proof(index)
        head = b"".join((struct.pack(">H", len(proof)), *proof))
        answer = FileSharing._read_chunk(row, offset, length, tree.leaf(index), head, buffers)
        assert answer == head + data[offset:offset + length]
        assert len(buffers._free) == 1
    # A refusal (a leaf that does not match) gives its buffer back too.
    with pytest.raises(NodeRefused):
        FileSharing._read_chunk(row, 0, CHUNK_SIZE, tree.leaf(1), b"\x00\x00", buffers)
    assert len(buffers._free) == 1
    # No more than ``keep`` buffers are kept.
    taken = [buffers.take(10) for _ in range(4)]
    for buffer in taken:
        buffers.give(buffer)
    assert len(buffers._free) == 2
