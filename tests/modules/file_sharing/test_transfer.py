"""File sharing between two real nodes over HTTP: offer, fetch, verify, resume, refuse.

Both nodes are served by Hypercorn on loopback with their own real jail and SQLite log; every
chunk travels in the session envelope. After each test both logs verify with audit_tools,
projections included.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url
from openred.errors import NodeRefused, PeerUnreachable
from openred.modules.file_sharing import events as fev
from openred.modules.file_sharing.domain import CHUNK_SIZE
from openred.modules.file_sharing.service import CHUNK
from openred.web.problems import problem_response
from tests.modules.file_sharing.world import MODULES, Pair, files, verified_pair
from tests.node.test_app import Served, push, serve_node
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


async def types(node: Served) -> list[str]:
    return [e.type for e in await node.services.store.read()]


async def test_a_file_is_offered_fetched_verified_and_placed(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "report.bin"
    data = payload(source, 3 * CHUNK_SIZE + 1234)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    assert (offer.name, offer.size, offer.direction) == ("report.bin", len(data), "sent")
    [received] = await files(pair.b).offers()
    assert (received.offer_id, received.direction, received.peer) == (
        offer.offer_id, "received", pair.a.id)
    seen: list[int] = []
    path = await files(pair.b).fetch(offer.offer_id, progress=lambda p: seen.append(p.verified))
    assert path.read_bytes() == data
    assert path.parent == pair.b.data / "files" / "received" and path.name == "report.bin"
    assert seen[0] == 0 and seen[-1] == len(data) and len(seen) == 5
    assert not list((pair.b.data / "files" / "partial").iterdir())
    transfer = await files(pair.b).transfer(offer.offer_id)
    assert transfer is not None and transfer.state == "completed"
    assert (await types(pair.b))[-2:] == [fev.FILE_TRANSFER_STARTED, fev.FILE_TRANSFER_COMPLETED]
    # Fetching again gives the same file; a second offer of the same name gets a new name.
    assert await files(pair.b).fetch(offer.offer_id) == path
    again = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    second = await files(pair.b).fetch(again.offer_id, out=tmp_path)
    assert second == tmp_path / "report (1).bin" and second.read_bytes() == data
    # The log holds no file contents.
    for node in (pair.a, pair.b):
        log = b"".join(e.payload for e in await node.services.store.read())
        assert b"report.bin" in log
        for at in range(0, len(data) - 24, CHUNK_SIZE // 2):
            piece = data[at:at + 24]
            assert piece not in log and b64url(piece).encode() not in log
            assert piece.hex().encode() not in log


async def test_an_empty_file_and_a_renamed_one(pair: Pair, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    offer = await files(pair.a).share(pair.b.id, tmp_path / "empty", expires_in=HOUR,
                                      name="nothing.txt")
    path = await files(pair.b).fetch(offer.offer_id)
    assert path.name == "nothing.txt" and path.read_bytes() == b""


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "nul\x00.txt", "x" * 300,
                                  "..", "a/b"])
async def test_unsafe_names_are_refused_at_the_sender(
    pair: Pair, tmp_path: Path, name: str
) -> None:
    payload(tmp_path / "f", 10)
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR, name=name)
    assert (caught.value.status, caught.value.reason) == (422, "invalid-name")
    assert fev.FILE_OFFERED not in await types(pair.a)


async def test_symlinks_directories_and_missing_files_are_refused(
    pair: Pair, tmp_path: Path
) -> None:
    payload(tmp_path / "real", 10)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for path, reason in ((tmp_path / "link", "symlink-refused"), (tmp_path, "not-a-file"),
                         (tmp_path / "missing", "no-such-file")):
        with pytest.raises(NodeRefused) as caught:
            await files(pair.a).share(pair.b.id, path, expires_in=HOUR)
        assert caught.value.reason == reason
    assert fev.FILE_OFFERED not in await types(pair.a)


async def test_the_offer_is_for_that_peer_only_and_ends_with_revocation_decline_or_expiry(
    pair: Pair, tmp_path: Path,
) -> None:
    payload(tmp_path / "f", 1000)
    a, b = files(pair.a), files(pair.b)
    revoked = await a.share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    # Served once (the sender keeps the standing offer at hand), then revoked: nothing more.
    first = await b._call(pair.a.id, CHUNK, json.dumps(
        {"offer_id": revoked.offer_id, "offset": 0, "length": 1000}).encode())
    assert first[2:] != b"" and len(first) > 1000
    await a.revoke(revoked.offer_id)
    assert (await b.offer(revoked.offer_id)).state == "revoked"  # type: ignore[union-attr]
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(revoked.offer_id)
    assert caught.value.reason == "offer-revoked"
    # Even asked directly, the sender gives nothing for a revoked offer.
    with pytest.raises(NodeRefused) as caught:
        await b._call(pair.a.id, CHUNK, json.dumps(
            {"offer_id": revoked.offer_id, "offset": 0, "length": 1000}).encode())
    assert (caught.value.status, caught.value.reason) == (410, "offer-revoked")

    declined = await a.share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    await b.decline(declined.offer_id)
    assert (await a.offer(declined.offer_id)).state == "declined"  # type: ignore[union-attr]
    with pytest.raises(NodeRefused) as caught:
        await b._call(pair.a.id, CHUNK, json.dumps(
            {"offer_id": declined.offer_id, "offset": 0, "length": 1000}).encode())
    assert caught.value.reason == "offer-declined"

    expiring = await a.share(pair.b.id, tmp_path / "f", expires_in=2)
    a.clock = b.clock = lambda: int(time.time()) + 3
    pair.a.services.clock = lambda: time.time() + 3
    with pytest.raises(NodeRefused) as caught:
        await b._call(pair.a.id, CHUNK, json.dumps(
            {"offer_id": expiring.offer_id, "offset": 0, "length": 1000}).encode())
    assert (caught.value.status, caught.value.reason) == (410, "offer-expired")
    assert (await a.offer(expiring.offer_id)).state == "expired"  # type: ignore[union-attr]
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(expiring.offer_id)
    assert caught.value.reason == "offer-expired"
    for_a = [e.type for e in await pair.a.services.store.read()]
    assert {fev.FILE_OFFER_REVOKED, fev.FILE_OFFER_DECLINED, fev.FILE_OFFER_EXPIRED} <= set(for_a)


async def test_another_peer_gets_nothing(
    pair: Pair, tmp_path: Path, jails: JailPair, directory: Directory,
) -> None:
    payload(tmp_path / "f", 1000)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    # A third node C with its own session to A asks for B's offer: unknown, as if it did not
    # exist — and still after the offer is revoked (C learns nothing about it).
    async with JailClient(jails.procs[2].socket_path, timeout=10) as jail_c, serve_node(
        "c", jail_c, tmp_path / "c", directory.key, pair.world.directory_url,
        modules=MODULES,
    ) as c:
        grant, for_a, for_c = await directory.pair(pair.a, c,  # type: ignore[arg-type]
                                                   issued_at=int(time.time()))
        for node, body in ((pair.a, for_a), (c, for_c)):
            reply = await push(pair.world, node, body)
            assert reply.status == 200, reply.body
        await pair.a.services.connect(grant.grant_id)
        request = json.dumps({"offer_id": offer.offer_id, "offset": 0, "length": 1000}).encode()
        for revoke in (False, True):
            if revoke:
                await files(pair.a).revoke(offer.offer_id)
            with pytest.raises(NodeRefused) as caught:
                await files(c)._call(pair.a.id, CHUNK, request)
            assert (caught.value.status, caught.value.reason) == (404, "unknown-offer")
    # The same request from A to B (who holds no offer of that id as sender): unknown too.
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a)._call(pair.b.id, CHUNK, request)
    assert (caught.value.status, caught.value.reason) == (404, "unknown-offer")


@pytest.mark.parametrize("offset,length", [
    (-1, 10), (0, -5), (0, 0), (1, 10), (0, 10**12), (10**18, 10), (2**70, 1), (0, 999),
    (0, 1001), (1000, 1), (True, 1000), ("0", 1000), (0.0, 1000),
])
async def test_out_of_range_requests_are_refused(
    pair: Pair, tmp_path: Path, offset: Any, length: Any
) -> None:
    payload(tmp_path / "f", 1000)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    before = len(await types(pair.a))
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b)._call(pair.a.id, CHUNK, json.dumps(
            {"offer_id": offer.offer_id, "offset": offset, "length": length}).encode())
    assert (caught.value.status, caught.value.reason) in ((416, "bad-range"), (400, "malformed"))
    assert len(await types(pair.a)) == before


async def test_a_file_changed_on_the_senders_disk_stops_the_transfer(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    payload(source, 2 * CHUNK_SIZE)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    data = bytearray(source.read_bytes())
    data[5] ^= 1
    source.write_bytes(bytes(data))
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b).fetch(offer.offer_id)
    assert (caught.value.status, caught.value.reason) == (409, "file-changed")
    transfer = await files(pair.b).transfer(offer.offer_id)
    assert transfer is not None and (transfer.state, transfer.reason) == ("failed",
                                                                          "file-changed")
    assert not list((pair.b.data / "files" / "received").glob("*"))
    # Same size and mtime but other bytes: the chunk's hash still catches it.
    st = os.stat(source)
    data[6] ^= 1
    offer2 = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    st = os.stat(source)
    with source.open("r+b") as f:
        f.seek(CHUNK_SIZE + 3)
        f.write(b"\xff")
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b).fetch(offer2.offer_id)
    assert caught.value.reason == "file-changed"


async def test_a_corrupted_chunk_is_detected_and_fetched_again(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    data = payload(source, 3 * CHUNK_SIZE)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    b = files(pair.b)
    original = b._call
    corrupted: list[int] = []

    async def flaky(peer: str, route: Any, request: bytes, channel: Any = None,
                     transport: Any = None, into: Any = None) -> Any:
        answer = await original(peer, route, request, channel, transport, into)
        if route == CHUNK and json.loads(request)["offset"] == CHUNK_SIZE and not corrupted:
            corrupted.append(1)
            return bytes(answer[:-1]) + bytes([answer[-1] ^ 0xFF])
        return answer

    b._call = flaky  # type: ignore[method-assign]
    path = await b.fetch(offer.offer_id)
    assert corrupted == [1] and path.read_bytes() == data

    # A peer that always sends a bad chunk: the fetch stops, nothing is placed.
    offer2 = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)

    async def broken(peer: str, route: Any, request: bytes, channel: Any = None,
                     transport: Any = None, into: Any = None) -> Any:
        answer = await original(peer, route, request, channel, transport, into)
        return bytes(answer[:-1]) + bytes([answer[-1] ^ 0xFF]) if route == CHUNK else answer

    b._call = broken  # type: ignore[method-assign]
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(offer2.offer_id)
    assert caught.value.reason == "corrupt-chunk"
    assert sorted(p.name for p in (pair.b.data / "files" / "received").iterdir()) == ["f"]


async def test_disk_full_keeps_the_partial_file_and_a_fetch_resumes_after_it(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    data = payload(source, 6 * CHUNK_SIZE + 7)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    b = files(pair.b)
    room = [3 * CHUNK_SIZE]

    def small_disk(fd: int, chunk: bytes, offset: int) -> int:
        if room[0] < len(chunk):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        room[0] -= len(chunk)
        return os.pwrite(fd, chunk, offset)

    b.write = small_disk
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(offer.offer_id, in_flight=1)
    assert (caught.value.status, caught.value.reason) == (507, "disk-full")
    transfer = await b.transfer(offer.offer_id)
    assert transfer is not None and (transfer.state, transfer.verified_bytes) == (
        "failed", 3 * CHUNK_SIZE)
    part = pair.b.data / "files" / "partial" / f"{offer.offer_id}.part"
    assert part.read_bytes()[:3 * CHUNK_SIZE] == data[:3 * CHUNK_SIZE]
    assert not (pair.b.data / "files" / "received").exists() or not list(
        (pair.b.data / "files" / "received").iterdir())
    # Space again: the fetch resumes after the three verified chunks.
    b.write = os.pwrite
    fetched: list[int] = []
    original = b._call

    async def counting(peer: str, route: Any, request: bytes, channel: Any = None,
                     transport: Any = None, into: Any = None) -> Any:
        if route == CHUNK:
            fetched.append(json.loads(request)["offset"] // CHUNK_SIZE)
        return await original(peer, route, request, channel, transport, into)

    b._call = counting  # type: ignore[method-assign]
    path = await b.fetch(offer.offer_id)
    assert sorted(fetched) == [3, 4, 5, 6] and path.read_bytes() == data
    started = [json.loads(e.payload) for e in await pair.b.services.store.read()
               if e.type == fev.FILE_TRANSFER_STARTED]
    assert [s["resumed_from"] for s in started] == [0, 3 * CHUNK_SIZE]


async def test_an_interrupted_fetch_resumes_from_verified_chunks_even_if_the_partial_is_damaged(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    data = payload(source, 8 * CHUNK_SIZE)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    b = files(pair.b)
    got = asyncio.Event()

    def progress(p: Any) -> None:
        if p.verified >= 4 * CHUNK_SIZE:
            got.set()

    task = asyncio.create_task(b.fetch(offer.offer_id, progress=progress, in_flight=2))
    await got.wait()
    task.cancel()  # what Ctrl-C does to the CLI's fetch
    with pytest.raises(asyncio.CancelledError):
        await task
    transfer = await b.transfer(offer.offer_id)
    assert transfer is not None and transfer.reason == "interrupted"
    # Damage one verified chunk on disk: it is fetched again, the others are kept.
    part = pair.b.data / "files" / "partial" / f"{offer.offer_id}.part"
    with part.open("r+b") as f:
        f.seek(10)
        f.write(b"\x00\x01\x02")
    fetched: list[int] = []
    original = b._call

    async def counting(peer: str, route: Any, request: bytes, channel: Any = None,
                     transport: Any = None, into: Any = None) -> Any:
        if route == CHUNK:
            fetched.append(json.loads(request)["offset"] // CHUNK_SIZE)
        return await original(peer, route, request, channel, transport, into)

    b._call = counting  # type: ignore[method-assign]
    path = await b.fetch(offer.offer_id)
    assert path.read_bytes() == data
    assert 0 in fetched and len(fetched) <= 5
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


async def test_both_nodes_restarted_mid_transfer(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "f"
    data = payload(source, 6 * CHUNK_SIZE)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    got = asyncio.Event()
    task = asyncio.create_task(files(pair.b).fetch(
        offer.offer_id, progress=lambda p: got.set() if p.verified >= 2 * CHUNK_SIZE else None,
        in_flight=1))
    await got.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pair.restart_a()
    b2 = await pair.restart_b()
    path = await files(b2).fetch(offer.offer_id)
    assert path.read_bytes() == data
    assert {"FileTransferFailed", "FileTransferCompleted"} <= set(await types(b2))


async def test_a_network_cut_stops_the_fetch_and_the_next_one_resumes(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "f"
    data = payload(source, 8 * CHUNK_SIZE)
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    b = files(pair.b)
    real = b.transport_for
    calls = [0]

    async def cut_after_three(peer: str) -> Any:
        send = await real(peer)

        async def flaky(route: Any, envelope: Any) -> Any:
            calls[0] += 1
            if calls[0] > 3:
                raise PeerUnreachable("POST failed: connection reset by peer")
            return await send(route, envelope)

        return flaky

    b.transport_for = cut_after_three
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(offer.offer_id, in_flight=1)
    assert (caught.value.status, caught.value.reason) == (502, "peer-unreachable")
    b.transport_for = real
    seen: list[int] = []
    path = await b.fetch(offer.offer_id, progress=lambda p: seen.append(p.verified))
    assert seen[0] == 3 * CHUNK_SIZE and path.read_bytes() == data


async def test_a_really_full_disk_keeps_a_sound_partial_file(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tmpfs of four chunks holds the receiver's partial files (we run as root in CI; else
    # skipped). The fetch's check of the free space up front is skipped: the space is taken
    # after it (by another writer), so the disk fills up mid-fetch.
    monkeypatch.setattr(files(pair.b), "_refuse_unless_room", lambda row, held: None)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={4 * CHUNK_SIZE // 1024}k",
                              "tmpfs", str(small)],
                             capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (pair.b.data / "files").mkdir(parents=True, exist_ok=True)
        (pair.b.data / "files" / "partial").symlink_to(small)
        source = tmp_path / "f"
        data = payload(source, 8 * CHUNK_SIZE)
        offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
        with pytest.raises(NodeRefused) as caught:
            await files(pair.b).fetch(offer.offer_id)
        assert (caught.value.status, caught.value.reason) == (507, "disk-full")
        transfer = await files(pair.b).transfer(offer.offer_id)
        assert transfer is not None and (transfer.state, transfer.reason) == (
            "failed", "disk-full")
        assert (small / f"{offer.offer_id}.part").exists()
        # More room: the fetch resumes from the chunks that made it, and the file is whole.
        subprocess.run(["mount", "-o", f"remount,size={16 * CHUNK_SIZE // 1024}k", str(small)],
                       check=True)
        seen: list[int] = []
        path = await files(pair.b).fetch(offer.offer_id,
                                         progress=lambda p: seen.append(p.verified))
        assert seen[0] > 0 and path.read_bytes() == data
    finally:
        subprocess.run(["umount", str(small)], check=False)


async def test_a_background_fetch_reports_how_it_ended(pair: Pair, tmp_path: Path) -> None:
    data = payload(tmp_path / "f", CHUNK_SIZE + 1)
    b = files(pair.b)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    state = await b.start_fetch(offer.offer_id)
    assert (await b.start_fetch(offer.offer_id)) is state  # one fetch per offer at a time
    while state.state == "running":
        await asyncio.sleep(0.02)
    assert state.state == "completed" and Path(state.path or "").read_bytes() == data

    def broken(*args: Any) -> Path:
        raise RuntimeError("a bug")

    other = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    b._place = broken  # type: ignore[method-assign]
    state = await b.start_fetch(other.offer_id)
    while state.state == "running":
        await asyncio.sleep(0.02)
    assert (state.state, state.reason) == ("failed", "internal-error")


async def test_a_chunk_out_of_range_is_a_documented_416(pair: Pair, tmp_path: Path) -> None:
    """``POST /api/v3/p2p/file_sharing/chunk`` answers 416 ``bad-range`` over HTTP: the P2P
    route's OpenAPI document must list it (it listed every other status but this one), and the
    problem carries 416's own title."""
    payload(tmp_path / "f", 1000)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b)._call(pair.a.id, CHUNK, json.dumps(
            {"offer_id": offer.offer_id, "offset": 1, "length": 10}).encode())
    assert (caught.value.status, caught.value.reason) == (416, "bad-range")
    async with aiohttp.ClientSession() as session, session.get(
            f"{pair.a.url}/openapi.json") as resp:
        doc = await resp.json()
    assert "416" in doc["paths"]["/api/v3/p2p/{module}/{action}"]["post"]["responses"]
    body = json.loads(await problem_response(416, "bad-range", "x").get_data())
    assert body["title"] == "Range Not Satisfiable"
