"""The partial file's direct I/O (:mod:`openred.modules.file_sharing.partial`) and its fallbacks.

Whatever path a chunk takes (O_DIRECT from a reused aligned buffer, or the page cache), the
bytes on disk and the digest read back are the same; a refused direct transfer falls back to
the page cache for the rest of the fetch; other errors (a full disk) are raised as before.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from audit_tools.verify import verify
from openred.errors import NodeRefused
from openred.modules.file_sharing import partial as partial_mod
from openred.modules.file_sharing import service as service_mod
from openred.modules.file_sharing.domain import CHUNK_SIZE
from openred.modules.file_sharing.partial import ALIGN, O_DIRECT, PartialFile
from tests.modules.file_sharing.world import Pair, files, verified_pair
from tests.node.world import Directory, JailPair

CHUNK = 64 * 1024

pytestmark = pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT on this platform")


def is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)


class Recorder:
    """A pwrite port recording whether each write went to a direct descriptor."""

    def __init__(self, fail_direct: int | None = None) -> None:
        self.direct: list[bool] = []
        self.fail_direct = fail_direct

    def __call__(self, fd: int, data: memoryview, offset: int) -> int:
        direct = is_direct(fd)
        self.direct.append(direct)
        if direct and self.fail_direct is not None:
            raise OSError(self.fail_direct, os.strerror(self.fail_direct))
        return os.pwrite(fd, data, offset)


def fill(part: PartialFile, data: bytes, write: Any, order: list[int] | None = None) -> None:
    os.ftruncate(part.fd, len(data))
    count = -(-len(data) // part.chunk_size)
    for index in order if order is not None else range(count):
        offset = index * part.chunk_size
        part.write(write, memoryview(data)[offset:offset + part.chunk_size], offset)


def read_back(part: PartialFile, size: int) -> bytes:
    whole = hashlib.sha256()
    assert part.hash_back(whole, 0, size) == size
    return whole.digest()


def test_aligned_chunks_go_direct_and_the_short_last_one_through_the_cache(
    tmp_path: Path
) -> None:
    data = os.urandom(5 * CHUNK + 123)
    part = PartialFile(tmp_path / "p", size=len(data), chunk_size=CHUNK)
    try:
        if not part.use_direct:
            pytest.skip("this file system refuses O_DIRECT")
        write = Recorder()
        fill(part, data, write, order=[3, 0, 5, 1, 4, 2])
        # Every whole chunk went direct; the last one (123 bytes) through the page cache.
        assert write.direct == [True, True, False, True, True, True]
        assert read_back(part, len(data)) == hashlib.sha256(data).digest()
        whole = hashlib.sha256()
        assert part.hash_back(whole, 2 * CHUNK, 3 * CHUNK + 123) == 3 * CHUNK + 123
        assert whole.digest() == hashlib.sha256(data[2 * CHUNK:]).digest()
    finally:
        part.close()
    assert (tmp_path / "p").read_bytes() == data


def test_a_refused_direct_write_falls_back_to_the_page_cache_for_good(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK)
    part = PartialFile(tmp_path / "p", size=len(data), chunk_size=CHUNK)
    try:
        if not part.use_direct:
            pytest.skip("this file system refuses O_DIRECT")
        write = Recorder(fail_direct=errno.EINVAL)
        fill(part, data, write)
        assert not part.use_direct
        # The first chunk tried direct once, then everything went through the cache.
        assert write.direct == [True, False, False, False, False]
        assert read_back(part, len(data)) == hashlib.sha256(data).digest()
    finally:
        part.close()
    assert (tmp_path / "p").read_bytes() == data


def test_a_full_disk_is_raised_not_retried(tmp_path: Path) -> None:
    part = PartialFile(tmp_path / "p", size=2 * CHUNK, chunk_size=CHUNK)
    try:
        if not part.use_direct:
            pytest.skip("this file system refuses O_DIRECT")
        write = Recorder(fail_direct=errno.ENOSPC)
        with pytest.raises(OSError) as caught:
            fill(part, os.urandom(2 * CHUNK), write)
        assert caught.value.errno == errno.ENOSPC and write.direct == [True]
        assert part.use_direct
    finally:
        part.close()


@pytest.mark.parametrize("why", ["unaligned chunk size", "direct off", "open refused"])
def test_without_direct_io_everything_goes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    chunk = CHUNK + 1 if why == "unaligned chunk size" else CHUNK
    data = os.urandom(3 * chunk + 7)
    if why == "open refused":
        real_open = os.open

        def no_direct(path: Any, flags: int, *args: Any) -> int:
            if flags & O_DIRECT:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real_open(path, flags, *args)

        monkeypatch.setattr(partial_mod.os, "open", no_direct)
    part = PartialFile(tmp_path / "p", size=len(data), chunk_size=chunk,
                       direct=why != "direct off")
    try:
        assert part.direct_fd is None and not part.use_direct
        write = Recorder()
        fill(part, data, write)
        assert write.direct == [False] * 4
        assert read_back(part, len(data)) == hashlib.sha256(data).digest()
    finally:
        part.close()
    assert (tmp_path / "p").read_bytes() == data


def test_a_refused_direct_read_falls_back_and_a_short_file_reads_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(4 * CHUNK)
    part = PartialFile(tmp_path / "p", size=len(data), chunk_size=CHUNK)
    try:
        if not part.use_direct:
            pytest.skip("this file system refuses O_DIRECT")
        fill(part, data, os.pwrite)
        real = os.preadv

        def refuse_direct(fd: int, buffers: Any, offset: int) -> int:
            if is_direct(fd):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real(fd, buffers, offset)

        monkeypatch.setattr(partial_mod.os, "preadv", refuse_direct)
        assert read_back(part, len(data)) == hashlib.sha256(data).digest()
        assert not part.use_direct
        monkeypatch.setattr(partial_mod.os, "preadv", real)
        os.ftruncate(part.fd, 2 * CHUNK + ALIGN // 2)  # cut short behind the fetch's back
        whole = hashlib.sha256()
        assert part.hash_back(whole, 0, len(data)) == 2 * CHUNK + ALIGN // 2
        assert whole.digest() == hashlib.sha256(data[:2 * CHUNK + ALIGN // 2]).digest()
    finally:
        part.close()


@pytest.mark.parametrize("direct", [True, False])
def test_the_read_back_runs_span_after_span_with_the_next_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    monkeypatch.setattr(partial_mod, "READ_SPAN", 2 * CHUNK)  # many spans
    data = os.urandom(9 * CHUNK + 77)
    part = PartialFile(tmp_path / "p", size=len(data), chunk_size=CHUNK, direct=direct)
    try:
        fill(part, data, os.pwrite)
        for start, end in ((0, len(data)), (CHUNK, 7 * CHUNK), (4 * CHUNK, len(data))):
            whole = hashlib.sha256()
            assert part.hash_back(whole, start, end - start) == end - start
            assert whole.digest() == hashlib.sha256(data[start:end]).digest()
        # A read that fails mid-way is raised, after the read running beside it ended.
        real = os.preadv
        calls = [0]

        def failing(fd: int, buffers: Any, offset: int) -> int:
            calls[0] += 1
            if calls[0] == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(fd, buffers, offset)

        monkeypatch.setattr(partial_mod.os, "preadv", failing)
        with pytest.raises(OSError) as caught:
            part.hash_back(hashlib.sha256(), 0, len(data))
        assert caught.value.errno == errno.EIO
        monkeypatch.setattr(partial_mod.os, "preadv", real)
        whole = hashlib.sha256()
        assert part.hash_back(whole, 0, len(data)) == len(data)
        assert whole.digest() == hashlib.sha256(data).digest()
    finally:
        part.close()


def open_files_under(directory: Path) -> list[str]:
    """Paths under ``directory`` this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def test_close_drops_the_descriptors_and_buffers(tmp_path: Path) -> None:
    part = PartialFile(tmp_path / "p", size=4 * CHUNK, chunk_size=CHUNK)
    fill(part, os.urandom(4 * CHUNK), os.pwrite)
    read_back(part, 4 * CHUNK)
    assert len(open_files_under(tmp_path)) == (2 if part.direct_fd is not None else 1)
    part.close()
    assert not open_files_under(tmp_path)


# -- on real servers --


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    async with verified_pair(jails, directory, tmp_path) as served:
        yield served


async def test_a_fetch_writes_whole_chunks_directly(pair: Pair, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 5)
    (tmp_path / "f").write_bytes(data)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=3600)
    b = files(pair.b)
    write = Recorder()
    b.write = write
    path = await b.fetch(offer.offer_id)
    assert path.read_bytes() == data
    if any(write.direct):  # else this file system refuses O_DIRECT: all went through the cache
        assert sorted(write.direct) == [False, True, True, True]


async def test_worker_threads_failing_mid_fetch_leave_a_sound_partial_file(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(6 * CHUNK_SIZE + 9)
    (tmp_path / "f").write_bytes(data)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=3600)
    b = files(pair.b)
    real_run = service_mod._Threads.run
    calls = [0]

    async def failing(self: Any, fn: Any, *args: Any) -> Any:
        calls[0] += 1
        if calls[0] > 4:  # the executor is gone (shut down) after a few hops
            raise RuntimeError("cannot schedule new futures after shutdown")
        return await real_run(self, fn, *args)

    monkeypatch.setattr(service_mod._Threads, "run", failing)
    with pytest.raises(RuntimeError):
        await b.fetch(offer.offer_id, in_flight=1)
    assert calls[0] > 4
    assert not open_files_under(pair.b.data / "files")  # both descriptors and the marks closed
    monkeypatch.setattr(service_mod._Threads, "run", real_run)
    seen: list[int] = []
    path = await b.fetch(offer.offer_id, progress=lambda p: seen.append(p.verified))
    assert seen[0] > 0 and path.read_bytes() == data


def test_a_link_planted_at_the_partial_path_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "p").symlink_to(victim)
    with pytest.raises(OSError) as refused:
        PartialFile(tmp_path / "p", size=4 * CHUNK, chunk_size=CHUNK)
    assert refused.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"keep me"


def test_the_direct_descriptor_is_the_same_open_file(tmp_path: Path) -> None:
    part = PartialFile(tmp_path / "p", size=4 * CHUNK, chunk_size=CHUNK)
    try:
        if not part.use_direct:
            pytest.skip("this file system refuses O_DIRECT")
        assert part.direct_fd is not None
        a, b = os.fstat(part.fd), os.fstat(part.direct_fd)
        assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        assert fcntl.fcntl(part.direct_fd, fcntl.F_GETFL) & O_DIRECT
    finally:
        part.close()


async def test_a_fetch_refuses_links_planted_at_its_working_files(
    pair: Pair, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK_SIZE)
    (tmp_path / "f").write_bytes(data)
    b = files(pair.b)
    for planted in ("part", "marks"):
        offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=3600)
        victim = tmp_path / f"victim-{planted}"
        victim.write_bytes(b"keep me")
        path = b._part(offer.offer_id) if planted == "part" else b._marks(offer.offer_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(victim)
        with pytest.raises(NodeRefused) as refused:
            await b.fetch(offer.offer_id)
        assert refused.value.reason == "write-failed"
        assert "Too many levels of symbolic links" in refused.value.detail
        assert victim.read_bytes() == b"keep me"
    assert verify(pair.b.data).ok
