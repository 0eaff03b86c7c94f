"""The working files of ended offers leave the node's files directory; placed files never do.

On real files: :func:`remove_offer_files` removes exactly the files named by the offer ids it is
given, inside ``files/partial`` and ``files/trees``, never following a symbolic link and never
touching a placed file. Through two nodes (real jails, real logs, a virtual clock): a partial
file left by an interrupted fetch and the sender's hash tree go at the first lifecycle run after
the offer is revoked, declined or expired; a standing offer's and a running fetch's stay; and
the projection sweep removes whatever is left of the offers it cleans — while replaying or
rebuilding the projections removes nothing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openred.errors import NodeRefused
from openred.modules.file_sharing.cleanup import (
    TASK_NAME,
    offer_files,
    register_cleanup,
    remove_ended_files,
    remove_offer_files,
)
from openred.modules.file_sharing.domain import CHUNK_SIZE
from openred.modules.file_sharing.expiry import TASK_NAME as EXPIRY_TASK
from openred.modules.file_sharing.expiry import expire_offers, register_expiry
from openred.modules.file_sharing.service import FileSharing
from openred.node.lifecycle import LIFECYCLE_TASKS, LifecycleTasks
from tests.node.test_lifecycle_cleaning import (
    DAY,
    Clock,
    connect,
    file_sharing,
    housekeeper,
    open_node,
)
from tests.node.world import NOW, Directory, JailPair, Node, transport_to

ID1, ID2, ID3, ID4 = "A" * 22, "B" * 22, "C" * 22, "D" * 22


def working_files(files: Path, offer_id: str) -> dict[str, bytes]:
    made = {
        f"partial/{offer_id}.part": b"partial bytes",
        f"partial/{offer_id}.marks": b"\x00" * 36,
        f"trees/{offer_id}.leaves": b"\x01" * 32,
        f"trees/{offer_id}.tmp": b"\x02" * 32,
    }
    for rel, data in made.items():
        (files / rel).parent.mkdir(parents=True, exist_ok=True)
        (files / rel).write_bytes(data)
    return made


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


# -- on real files --


def test_only_the_named_offers_files_go(tmp_path: Path) -> None:
    files = tmp_path / "files"
    gone = working_files(files, ID1)
    kept = working_files(files, ID2)
    (files / "received").mkdir()
    (files / "received" / f"{ID1}.part").write_bytes(b"a placed file named like one")
    (files / "partial" / "notes.txt").write_bytes(b"not an offer's file")
    (files / "partial" / f"{ID1}.part.bak").write_bytes(b"not an offer's file either")
    assert set(offer_files(files)) == {ID1, ID2}
    removed = remove_offer_files(files, [ID1, "../" + ID2, "partial/" + ID2, "", ID3])
    assert sorted(removed) == sorted(gone)
    assert tree(files) == set(kept) | {f"received/{ID1}.part", "partial/notes.txt",
                                       f"partial/{ID1}.part.bak"}
    # Already gone, or no files directory at all: nothing to do, no error.
    assert remove_offer_files(files, [ID1]) == []
    assert remove_offer_files(tmp_path / "absent", [ID1]) == []
    assert offer_files(tmp_path / "absent") == {}


def test_links_are_removed_themselves_never_followed(tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "partial").mkdir(parents=True)
    (files / "trees").mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"the user's")
    (files / "partial" / f"{ID1}.part").symlink_to(outside)
    (files / "trees" / f"{ID2}.leaves").mkdir()  # a directory named like a file: left alone
    assert sorted(remove_offer_files(files, [ID1, ID2])) == [f"partial/{ID1}.part"]
    assert outside.read_bytes() == b"the user's"
    assert (files / "trees" / f"{ID2}.leaves").is_dir()
    # A files directory that is itself a link is not followed.
    other = tmp_path / "elsewhere"
    working_files(other, ID3)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "files").symlink_to(other)
    assert remove_offer_files(linked / "files", [ID3]) == []
    assert len(tree(other)) == 4
    # So is a partial directory that is a link.
    (files / "partial").rename(tmp_path / "moved")
    (files / "partial").symlink_to(tmp_path / "moved")
    (tmp_path / "moved" / f"{ID4}.part").write_bytes(b"x")
    assert remove_offer_files(files, [ID4]) == []
    assert (tmp_path / "moved" / f"{ID4}.part").exists()


def test_a_partial_file_already_linked_into_place_leaves_the_placed_file(tmp_path: Path) -> None:
    """A fetch that crashed between linking the file into place and removing its partial
    name: removing the partial name leaves the placed file (another link) whole."""
    files = tmp_path / "files"
    working_files(files, ID1)
    (files / "received").mkdir()
    placed = files / "received" / "report.pdf"
    os.link(files / "partial" / f"{ID1}.part", placed)
    remove_offer_files(files, [ID1])
    assert placed.read_bytes() == b"partial bytes"
    assert not (files / "partial" / f"{ID1}.part").exists()


def test_the_task_is_added_to_a_served_nodes_lifecycle_after_the_expiry() -> None:
    app: Any = type("App", (), {"extensions": {LIFECYCLE_TASKS: LifecycleTasks()}})()
    service: Any = object()
    register_expiry(app, service)
    register_cleanup(app, service)
    assert app.extensions[LIFECYCLE_TASKS].names == [EXPIRY_TASK, TASK_NAME]
    register_cleanup(type("App", (), {"extensions": {}})(), service)  # not served: no-op


# -- through two nodes on a virtual clock --


def full_disk_after_the_first_chunk(fd: int, data: memoryview, offset: int) -> int:
    if offset >= CHUNK_SIZE:
        raise OSError(errno.ENOSPC, "No space left on device")
    return os.pwrite(fd, data, offset)


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path,
               ) -> AsyncIterator[tuple[Node, Node, Clock]]:
    clock = Clock()
    a = await open_node("a", jails.procs[0].socket_path, tmp_path / "a", directory, clock)
    b = await open_node("b", jails.procs[1].socket_path, tmp_path / "b", directory, clock)
    grant, for_a, for_b = await directory.pair(a, b, issued_at=NOW)
    await a.tokens.receive(for_a, NOW)
    await b.tokens.receive(for_b, NOW)
    await a.handshakes.connect(grant.grant_id, transport_to(b, NOW), NOW)
    try:
        yield a, b, clock
    finally:
        for node in (a, b):
            await node.close()


async def interrupted(receiver: FileSharing, offer_id: str) -> None:
    """Fetch until the disk is full: the partial file and its marks are kept for a resume."""
    with pytest.raises(NodeRefused) as caught:
        await receiver.fetch(offer_id)
    assert caught.value.reason == "disk-full"
    assert {f"partial/{offer_id}.part", f"partial/{offer_id}.marks"} <= set(
        offer_files(receiver.root)[offer_id])


async def test_files_of_ended_offers_go_at_the_next_lifecycle_run(
    pair: tuple[Node, Node, Clock], tmp_path: Path,
) -> None:
    a, b, clock = pair
    peers = {str(a.id): a, str(b.id): b}
    files_a = file_sharing(a, peers, clock)
    files_b = file_sharing(b, peers, clock, write=full_disk_after_the_first_chunk)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(2 * CHUNK_SIZE + 1000))
    small = tmp_path / "small.txt"
    small.write_bytes(b"placed and kept\n")
    peer_b = str(b.id)

    revoked = (await files_a.share(peer_b, source, expires_in=3600)).offer_id
    declined = (await files_a.share(peer_b, source, expires_in=3600)).offer_id
    expiring = (await files_a.share(peer_b, source, expires_in=600)).offer_id
    standing = (await files_a.share(peer_b, source, expires_in=7200)).offer_id
    running = (await files_a.share(peer_b, source, expires_in=600)).offer_id
    placed_offer = (await files_a.share(peer_b, small, expires_in=600)).offer_id
    for offer_id in (revoked, expiring, standing, running):
        await interrupted(files_b, offer_id)
    placed = await files_b.fetch(placed_offer)
    assert placed.read_bytes() == b"placed and kept\n"
    trees_before = set(offer_files(files_a.root))
    assert trees_before == {revoked, declined, expiring, standing, running, placed_offer}

    # Nothing ended yet: the runs remove nothing.
    assert await remove_ended_files(files_a, clock.now) == 0
    assert await remove_ended_files(files_b, clock.now) == 0

    await files_a.revoke(revoked)  # B is told and logs it too
    await files_b.decline(declined)
    clock.now += 601  # expiring, running and placed_offer are past their time
    files_b._fetching.add(running)  # as if B were still fetching it at this moment
    for service in (files_a, files_b):
        await expire_offers(service, clock.now)
    assert await remove_ended_files(files_a, clock.now) == 5  # one .leaves each
    assert set(offer_files(files_a.root)) == {standing}
    removed_b = await remove_ended_files(files_b, clock.now)
    assert removed_b == 2 * 2  # revoked and expiring: .part and .marks
    assert set(offer_files(files_b.root)) == {standing, running}
    assert placed.read_bytes() == b"placed and kept\n"  # the user's file stays
    # The fetch stops; the next run removes what it left.
    files_b._fetching.discard(running)
    assert await remove_ended_files(files_b, clock.now) == 2
    assert set(offer_files(files_b.root)) == {standing}
    # The standing offer still resumes from what was kept, and completes.
    resumed = FileSharing(store=b.store, reads=b.reads, keeper=b.keeper, book=b.book,
                          data_dir=b.store.path.parent, transport_for=files_b.transport_for,
                          clock=clock.seconds)
    done = await resumed.fetch(standing)
    assert done.read_bytes() == source.read_bytes()
    assert set(offer_files(files_b.root)) == set()


async def test_files_left_of_cleaned_offers_go_with_their_rows_never_on_replay(
    pair: tuple[Node, Node, Clock], directory: Directory, tmp_path: Path,
) -> None:
    """A node whose module task never ran (module disabled, or files left by a crash): the
    sweep removes the files of the offers it cleans; replays leave the disk alone."""
    a, b, clock = pair
    peers = {str(a.id): a, str(b.id): b}
    files_a = file_sharing(a, peers, clock)
    files_b = file_sharing(b, peers, clock, write=full_disk_after_the_first_chunk)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(CHUNK_SIZE + 10))
    old = (await files_a.share(str(b.id), source, expires_in=3600)).offer_id
    await interrupted(files_b, old)
    await files_a.revoke(old)
    clock.now = NOW + 20 * DAY
    await connect(directory, a, b, clock.now)
    recent = (await files_a.share(str(b.id), source, expires_in=3600)).offer_id
    await interrupted(files_b, recent)
    await files_a.revoke(recent)
    a_files, b_files = tree(files_a.root), tree(files_b.root)

    for node in (a, b):  # replaying the log is no reason to touch a file
        await node.store.rebuild_projections()
    assert (tree(files_a.root), tree(files_b.root)) == (a_files, b_files)

    clock.now = NOW + 32 * DAY  # the old offer's row is due, the recent one's is not
    assert await housekeeper(a, clock).clean() >= 1
    assert await housekeeper(b, clock).clean() >= 1
    assert set(offer_files(files_a.root)) == {recent}
    assert set(offer_files(files_b.root)) == {recent}
    for node in (a, b):
        await node.store.rebuild_projections()
    assert set(offer_files(files_a.root)) == {recent}


async def test_a_really_running_fetch_keeps_its_files_and_out_is_never_touched(
    pair: tuple[Node, Node, Clock], tmp_path: Path,
) -> None:
    """Not a stand-in in ``_fetching``: a real fetch is held inside a chunk write (a worker
    thread) while its offer is revoked and the cleanup runs; its files stay, the fetch then
    ends refused, and the next run removes them. A file placed with ``out`` — even one named
    like a working file, in a directory holding links named so — stays through every run."""
    import asyncio
    import threading

    a, b, clock = pair
    peers = {str(a.id): a, str(b.id): b}
    entered, release = threading.Event(), threading.Event()

    def held_write(fd: int, data: memoryview, offset: int) -> int:
        if offset >= CHUNK_SIZE:
            entered.set()
            release.wait(30)
        return os.pwrite(fd, data, offset)

    files_a = file_sharing(a, peers, clock)
    files_b = file_sharing(b, peers, clock, write=held_write)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 * CHUNK_SIZE + 7))
    out = tmp_path / "out"
    out.mkdir()
    small = tmp_path / f"{ID1}.part"  # a sender's name that looks like a working file
    small.write_bytes(b"placed in out\n")
    placed_offer = (await files_a.share(str(b.id), small, expires_in=3600)).offer_id
    placed = await files_b.fetch(placed_offer, out=out)
    assert placed.parent == out and placed.read_bytes() == b"placed in out\n"
    (out / f"{placed_offer}.marks").symlink_to(placed)  # links named like working files
    running = (await files_a.share(str(b.id), source, expires_in=3600)).offer_id
    fetching = asyncio.create_task(files_b.fetch(running, in_flight=1))
    try:
        await asyncio.to_thread(entered.wait, 30)
        assert running in files_b._fetching
        await files_a.revoke(running)  # B is told and logs it
        await files_a.revoke(placed_offer)
        assert await remove_ended_files(files_b, clock.now) == 0
        assert {f"partial/{running}.part", f"partial/{running}.marks"} <= set(
            offer_files(files_b.root)[running])
    finally:
        release.set()
    with pytest.raises(NodeRefused) as caught:
        await fetching
    assert caught.value.reason == "offer-revoked", caught.value
    assert running not in files_b._fetching
    assert await remove_ended_files(files_b, clock.now) == 2
    assert offer_files(files_b.root) == {}
    assert placed.read_bytes() == b"placed in out\n"
    assert (out / f"{placed_offer}.marks").is_symlink()
