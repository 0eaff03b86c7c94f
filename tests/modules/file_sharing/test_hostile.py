"""File sharing against a hostile peer's offers and a local attacker at the destination.

Real nodes served on loopback (:mod:`.world`), real files; the hostile peer is node A sending
offers it crafted itself over its real session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openred.crypto.identity import b64url
from openred.errors import NodeRefused
from openred.modules.file_sharing import service
from openred.modules.file_sharing.domain import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    OfferTerms,
)
from openred.modules.file_sharing.service import CHUNK, OFFER, REVOKE, _json, new_offer_id
from openred.ratelimit import RateLimiter
from tests.modules.file_sharing.world import Pair, files, verified_pair
from tests.node.world import Directory, JailPair

HOUR = 3600


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    async with verified_pair(jails, directory, tmp_path) as served:
        yield served


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on another file system than ``tmp_path`` (so a fetch placing there copies)."""
    # The suite's tmp_path is often in /dev/shm (tests/conftest.py): then /var/tmp or /tmp.
    here = os.stat(tmp_path).st_dev
    others = [d for d in (Path("/dev/shm"), Path("/var/tmp"), Path("/tmp"))
              if d.is_dir() and os.access(d, os.W_OK) and os.stat(d).st_dev != here]
    if not others:
        pytest.skip("no second file system to place the file on")
    path = Path(tempfile.mkdtemp(dir=others[0]))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def crafted(size: int, chunk_size: int) -> OfferTerms:
    return OfferTerms(new_offer_id(), "big.bin", size, b64url(b"\x01" * 32),
                      b64url(b"\x02" * 32), chunk_size, 2**39)


async def test_an_offer_of_more_chunks_than_a_node_can_track_is_refused(pair: Pair) -> None:
    # 1 TiB in chunks of 4 KiB is 2**28 chunks: the receiver's fetch would list every index
    # (gigabytes of memory) before asking for the first one. The offer is refused on arrival.
    for size, chunk in ((1 << 40, MIN_CHUNK_SIZE), ((MAX_CHUNKS + 1) * CHUNK_SIZE, CHUNK_SIZE)):
        terms = crafted(size, chunk)
        with pytest.raises(NodeRefused) as caught:
            await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))
        assert (caught.value.status, caught.value.reason) == (422, "invalid-offer")
        assert await files(pair.b).offer(terms.offer_id) is None
    # The largest one still fits.
    terms = crafted(MAX_CHUNKS * MIN_CHUNK_SIZE, MIN_CHUNK_SIZE)
    await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))
    assert await files(pair.b).offer(terms.offer_id) is not None


async def test_an_offer_larger_than_the_free_space_is_refused_before_anything_is_written(
    pair: Pair,
) -> None:
    # A fetch of it would fill the disk the node's own log lives on before failing.
    b = files(pair.b)
    size = MAX_CHUNKS * CHUNK_SIZE
    b.root.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(b.root)
    if free.f_bavail * free.f_frsize >= size:
        pytest.skip("this disk has room for the largest offer")
    terms = crafted(size, CHUNK_SIZE)
    await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))
    with pytest.raises(NodeRefused) as caught:
        await b.fetch(terms.offer_id)
    assert (caught.value.status, caught.value.reason) == (507, "disk-full")
    assert not b._part(terms.offer_id).exists()
    assert not b._marks(terms.offer_id).exists()


@pytest.mark.parametrize("planted", ["tmp", "probe"])
async def test_a_link_planted_where_a_cross_device_fetch_copies_is_never_followed(
    pair: Pair, tmp_path: Path, other_fs: Path, planted: str,
) -> None:
    # The offer id is on the command line of `openred fetch` (visible to every local user):
    # a link planted at the copy's old fixed name made the node write the file through it
    # (and left the link as the result); one at the probe's fixed name failed every fetch.
    data = os.urandom(CHUNK_SIZE + 100)
    (tmp_path / "f").write_bytes(data)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (other_fs / f".openred-{offer.offer_id}.{planted}").symlink_to(victim)
    path = await files(pair.b).fetch(offer.offer_id, out=other_fs)
    assert victim.read_bytes() == b"keep me"
    assert path.parent == other_fs and not path.is_symlink()
    assert path.read_bytes() == data


async def test_a_file_planted_where_a_cross_device_fetch_copies_never_becomes_the_result(
    pair: Pair, tmp_path: Path, other_fs: Path,
) -> None:
    # A planted regular file was truncated, filled and linked into place: the attacker, who
    # keeps it open, could rewrite the verified file afterwards.
    data = os.urandom(CHUNK_SIZE + 100)
    (tmp_path / "f").write_bytes(data)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    planted = other_fs / f".openred-{offer.offer_id}.tmp"
    planted.write_bytes(b"mine")
    planted.chmod(0o666)
    held = os.open(planted, os.O_RDWR)
    try:
        path = await files(pair.b).fetch(offer.offer_id, out=other_fs)
        assert os.stat(path).st_ino != os.fstat(held).st_ino
        os.pwrite(held, b"EVIL", 0)
        assert path.read_bytes() == data
        assert os.stat(path).st_mode & 0o077 == 0
    finally:
        os.close(held)


async def test_a_fifo_put_in_place_of_a_shared_file_is_refused_not_waited_on(
    pair: Pair, tmp_path: Path,
) -> None:
    # Whoever can write the shared file's directory swaps the file for a FIFO: opening it
    # for reading waited for a writer forever, in one of the sender's worker threads per
    # chunk request (a few requests and the node's thread pool is gone).
    source = tmp_path / "f"
    source.write_bytes(os.urandom(1000))
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    source.unlink()
    os.mkfifo(source)
    request = _json({"offer_id": offer.offer_id, "offset": 0, "length": 1000})
    try:
        with pytest.raises(NodeRefused) as caught:
            await files(pair.b)._call(pair.a.id, CHUNK, request)
        assert (caught.value.status, caught.value.reason) == (409, "file-changed")
    finally:
        # Wake any reader still waiting in open() (the unfixed code), so the test can end.
        with contextlib.suppress(OSError):
            os.close(os.open(source, os.O_WRONLY | os.O_NONBLOCK))


async def test_a_peer_cannot_pile_up_standing_offers(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every offer is a row each `openred offers` reads (and logs once it expired): a peer
    # sending thousands of them flooded the listing. Past the limit: 429, nothing logged.
    monkeypatch.setattr(service, "MAX_STANDING_OFFERS", 3)
    b = files(pair.b)
    (tmp_path / "f").write_bytes(b"real")
    real = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    sent = [crafted(1000, MIN_CHUNK_SIZE) for _ in range(2)]
    for terms in sent:
        await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))
    before = len(await pair.b.services.store.read())
    extra = crafted(1000, MIN_CHUNK_SIZE)
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a)._call(pair.b.id, OFFER, _json(extra.to_json()))
    assert (caught.value.status, caught.value.reason) == (429, "too-many-offers")
    assert len(await pair.b.services.store.read()) == before
    # The same offer sent again is still answered (idempotent); a fetched or declined offer
    # frees room.
    await files(pair.a)._call(pair.b.id, OFFER, _json(sent[0].to_json()))
    assert (await b.fetch(real.offer_id)).read_bytes() == b"real"
    await files(pair.a)._call(pair.b.id, OFFER, _json(extra.to_json()))
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a)._call(pair.b.id, OFFER, _json(crafted(1000, 4096).to_json()))
    assert caught.value.status == 429
    await b.decline(sent[0].offer_id)
    last = crafted(1000, MIN_CHUNK_SIZE)
    await files(pair.a)._call(pair.b.id, OFFER, _json(last.to_json()))
    assert await b.offer(last.offer_id) is not None


@pytest.mark.parametrize("route,body", [
    ("share", {"peer": "PEER", "path": "/tmp/\ud800"}),
    ("share", {"peer": "PEER", "path": "/tmp/f", "name": "a\ud800"}),
    ("fetch", {"offer_id": "OFFER", "out": "/tmp/\ud800"}),
    ("fetch", {"offer_id": "\ud800" * 22}),
    ("fetch", {"offer_id": "\udc80" * 22}),
    ("decline", {"offer_id": "\ud800" * 22}),
    ("unshare", {"offer_id": "\ud800" * 22}),
])
async def test_lone_surrogates_in_admin_requests_are_refused_not_a_500(
    pair: Pair, tmp_path: Path, route: str, body: dict[str, str],
) -> None:
    # JSON may carry "\ud800"; Python cannot encode it for a path or SQLite: a 500 with a
    # traceback before. Now a 422 problem.
    from openred.cli_client import AdminClient
    from openred.errors import RequestRefused
    from tests.modules.file_sharing.test_cli import admin_for

    (tmp_path / "f").write_bytes(b"x")
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    node = pair.a if route in ("share", "unshare") else pair.b
    body = {k: v.replace("PEER", pair.b.id).replace("OFFER", offer.offer_id)
            for k, v in body.items()}
    async with admin_for(node):
        client = AdminClient.from_data_dir(node.data)
        with pytest.raises(RequestRefused) as caught:
            await asyncio.to_thread(client.request, "POST", f"file_sharing/{route}", body)
    assert caught.value.status in (404, 422), caught.value


@pytest.mark.parametrize("route", ["chunk", "revoke", "decline"])
async def test_a_peer_naming_an_offer_with_lone_surrogates_gets_a_404(
    pair: Pair, route: str,
) -> None:
    from openred.modules.file_sharing.service import DECLINE, REVOKE

    bad = "\ud800" * 22
    request = {"offer_id": bad, "offset": 0, "length": 1} if route == "chunk" else {
        "offer_id": bad}
    raw = json.dumps(request).encode()  # "\\ud800": valid JSON text, a lone surrogate in Python
    target = {"chunk": CHUNK, "revoke": REVOKE, "decline": DECLINE}[route]
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b)._call(pair.a.id, target, raw)
    assert (caught.value.status, caught.value.reason) == (404, "unknown-offer")


async def test_a_file_of_more_chunks_than_an_offer_may_have_is_refused_before_hashing(
    pair: Pair, tmp_path: Path,
) -> None:
    source = tmp_path / "huge"
    source.touch()
    try:
        os.truncate(source, MAX_CHUNKS * CHUNK_SIZE + 1)  # sparse: no disk used
    except OSError:
        pytest.skip("this file system cannot hold so large a sparse file")
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    assert (caught.value.status, caught.value.reason) == (413, "file-too-large")


async def test_a_shared_file_turned_into_a_link_to_another_file_serves_nothing(
    pair: Pair, tmp_path: Path,
) -> None:
    # The other file has the very size and mtime of the one offered: the sender still never
    # reads through the link (O_NOFOLLOW), so none of its bytes leave.
    source, secret = tmp_path / "f", tmp_path / "secret"
    source.write_bytes(os.urandom(1000))
    offer = await files(pair.a).share(pair.b.id, source, expires_in=HOUR)
    secret.write_bytes(source.read_bytes())
    st = os.stat(source)
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    source.unlink()
    source.symlink_to(secret)
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b).fetch(offer.offer_id)
    assert (caught.value.status, caught.value.reason) == (409, "file-changed")
    assert not list((pair.b.data / "files" / "received").glob("*"))


async def test_a_path_that_is_not_utf8_is_refused_before_anything_is_done(
    pair: Pair, tmp_path: Path,
) -> None:
    # Linux names are bytes; "\udc80" stands for the byte 0x80 (os.fsdecode). The log, which
    # records the path, cannot hold it: that failed only once the file was hashed (sharing)
    # or already placed (fetching). Now refused up front.
    from openred.errors import RequestRefused

    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\x80"))
    odd.mkdir()
    (odd / "f").write_bytes(b"x")
    with pytest.raises(RequestRefused) as caught:
        await files(pair.a).share(pair.b.id, odd / "f", expires_in=HOUR)
    assert (caught.value.status, caught.value.reason) == (422, "invalid-path")
    (tmp_path / "f").write_bytes(b"x")
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    with pytest.raises(RequestRefused) as caught:
        await files(pair.b).fetch(offer.offer_id, out=odd)
    assert (caught.value.status, caught.value.reason) == (422, "invalid-path")
    assert list(odd.iterdir()) == [odd / "f"]
    await files(pair.b).fetch(offer.offer_id)


async def test_a_peer_cannot_grow_the_log_with_offers_it_revokes_at_once(pair: Pair) -> None:
    # Offered then revoked (or short-lived, then expired), an offer never counts against the
    # standing cap, yet each one is two entries in the receiver's log, for ever. Past the
    # per-peer budget of offers logged: 429 with Retry-After, and nothing logged.
    b = files(pair.b)
    b.offers_logged = RateLimiter(3, HOUR)
    for _ in range(3):
        terms = crafted(1000, MIN_CHUNK_SIZE)
        await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))
        await files(pair.a)._call(pair.b.id, REVOKE, _json({"offer_id": terms.offer_id}))
    before = len(await pair.b.services.store.read())
    extra = crafted(1000, MIN_CHUNK_SIZE)
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a)._call(pair.b.id, OFFER, _json(extra.to_json()))
    assert (caught.value.status, caught.value.reason) == (429, "too-many-offers")
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= HOUR
    assert await b.offer(extra.offer_id) is None
    await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))  # known: answered
    assert len(await pair.b.services.store.read()) == before
    # The sender's own offers are not limited by what it receives.
    (pair.a.data / "f").write_bytes(b"mine")
    back = await b.share(pair.a.id, pair.a.data / "f", expires_in=HOUR)
    assert await files(pair.a).offer(back.offer_id) is not None


def tree_bytes(chunks: int) -> int:
    """The hashes of the tree over ``chunks`` leaves (every level), 32 bytes each."""
    total = 0
    while True:
        total += chunks
        if chunks <= 1:
            return 32 * total
        chunks = (chunks + 1) // 2


async def test_the_senders_cache_of_hash_trees_is_bounded_by_bytes(
    pair: Pair, tmp_path: Path,
) -> None:
    # The sender kept the trees of its last 8 offers asked for, whatever their size: at 2^20
    # chunks a tree held ~150 MB of small objects, 8 of them over a gigabyte.
    a = files(pair.a)
    a.tree_cache_bytes = tree_bytes(3) + tree_bytes(2)
    offers = []
    for n, chunks in enumerate((3, 2, 3)):
        source = tmp_path / f"f{n}"
        source.write_bytes(os.urandom(CHUNK_SIZE * (chunks - 1) + 10))
        offers.append(await a.share(pair.b.id, source, expires_in=HOUR))
    for offer in offers:
        request = _json({"offer_id": offer.offer_id, "offset": 0, "length": CHUNK_SIZE})
        await files(pair.b)._call(pair.a.id, CHUNK, request)
    cached = sum(tree_bytes(tree.size) for tree in a._trees.values())
    assert 0 < cached <= a.tree_cache_bytes
    assert offers[-1].offer_id in a._trees  # the tree just used stays
    # A leaves file cut in the middle of a hash is a damaged tree (409), not a 500.
    leaves = a._tree_path(offers[0].offer_id)
    leaves.write_bytes(leaves.read_bytes()[:-1])
    a._trees.pop(offers[0].offer_id, None)
    request = _json({"offer_id": offers[0].offer_id, "offset": 0, "length": CHUNK_SIZE})
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b)._call(pair.a.id, CHUNK, request)
    assert (caught.value.status, caught.value.reason) == (409, "file-changed")


async def test_names_planted_in_the_download_directory_do_not_block_a_fetch(
    pair: Pair, tmp_path: Path,
) -> None:
    # A local user who can write the download directory creates `name` and `name (1)` ...
    # `name (9999)`: every fetch into that directory failed with 409 `name-taken`. After a
    # few taken names the file gets one nobody can guess (and the link is still exclusive).
    data = os.urandom(100)
    (tmp_path / "report.bin").write_bytes(data)
    offer = await files(pair.a).share(pair.b.id, tmp_path / "report.bin", expires_in=HOUR)
    out = tmp_path / "downloads"
    out.mkdir()
    planted = {"report.bin", *(f"report ({n}).bin" for n in range(1, 10_000))}
    for name in planted:
        (out / name).touch()
    path = await files(pair.b).fetch(offer.offer_id, out=out)
    assert path.parent == out and path.name not in planted
    assert re.fullmatch(r"report \([0-9a-f]{16}\)\.bin", path.name), path.name
    assert path.read_bytes() == data


@pytest.mark.parametrize("route", ["chunk", "revoke", "decline", "offer"])
async def test_a_peer_call_nested_too_deep_is_refused_not_a_500(pair: Pair, route: str) -> None:
    """A peer's call of 100 000 ``[``: the JSON parser recursed (RecursionError, not the
    ValueError the module caught), so the node answered 500 and logged a traceback, as often
    as any paired peer liked."""
    from openred.modules.file_sharing.service import DECLINE

    target = {"chunk": CHUNK, "revoke": REVOKE, "decline": DECLINE, "offer": OFFER}[route]
    with pytest.raises(NodeRefused) as caught:
        await files(pair.b)._call(pair.a.id, target, b"[" * 100_000)
    assert (caught.value.status, caught.value.reason) == (400, "malformed")
