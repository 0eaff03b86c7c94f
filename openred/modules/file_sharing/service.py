"""File sharing between two nodes over their encrypted session (DESIGN §11).

Actions (``POST /api/v3/p2p/file_sharing/<action>``, each an encrypted envelope):

* ``offer`` — the sender tells the peer about an offer (:class:`~.domain.OfferTerms`); the
  receiver logs ``FileOfferReceived`` and answers ``{"status": "received"}``.
* ``chunk`` — ``{offer_id, offset, length}``; the range must be exactly one chunk. The answer
  is binary: a 2-byte count ``n``, ``n`` 32-byte proof hashes (:mod:`.domain`), then the chunk.
  The sender reads the chunk from disk (``O_NOFOLLOW``) for that request only and checks the
  file's size, modification time and the chunk's leaf hash against the offer: a file changed
  since it was offered is a 409 ``file-changed``. Chunk requests and answers travel in the
  binary form of the envelope (:mod:`openred.node.envelope_binary`), JSON ones still work.
* ``revoke`` / ``decline`` — ``{offer_id}``: the sender revoked, the receiver declined; each
  side logs it and the offer gives nothing more.

The receiver (:meth:`FileSharing.fetch`) keeps several chunk requests in flight, checks each
chunk against the offer's root, writes it at its offset in a partial file under
``<data_dir>/files/partial/`` (with ``O_DIRECT`` where it can, :mod:`.partial`) and appends
``(index, leaf hash)`` to a marks file beside it.
While chunks arrive, the whole file's SHA-256 follows behind them, reading the partial file
back in order, so what is checked against the offer's digest is what lies on disk. A fetch run
again (after Ctrl-C, either node killed, the network cut) fetches only the chunks not marked;
the marked ones are not hashed again up front, the whole digest covers them. If the digest
does not match, every marked chunk is hashed again on disk, those that fail are fetched again
and the digest is read back once more; a second mismatch discards the partial file. Only then
is the file linked into place under a name no existing file has (never overwriting), and the
partial files are removed. A chunk that fails its proof is fetched again (up to
:data:`CHUNK_ATTEMPTS` times).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import rfc8785
from sqlmodel import col, func, select

from openred.crypto.identity import b64url, from_b64url
from openred.errors import NodeRefused, OpenRedError, TransportError
from openred.modules.file_sharing import events as ev
from openred.modules.file_sharing.domain import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    OFFER_ID,
    HashTree,
    OfferTerms,
    check_name,
    chunk_count,
    chunk_range,
    leaf_hash,
    refuse_unless_usable,
    verify_chunk,
)
from openred.modules.file_sharing.partial import PartialFile, Write
from openred.modules.file_sharing.readmodels import FileOfferRow, FileTransferRow
from openred.node.book import NodeBook
from openred.node.diskreserve import DISK_RESERVE
from openred.node.envelope import Envelope, Route, SessionChannel
from openred.node.p2p import Outcome, RequestContext
from openred.node.readmodels import ReadModels
from openred.node.sessions import SessionKeeper
from openred.ratelimit import RateLimiter
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore

__all__ = [
    "CHUNK",
    "DECLINE",
    "OFFER",
    "REVOKE",
    "FileSharing",
    "Progress",
    "new_offer_id",
]

logger = logging.getLogger("openred.file_sharing")

OFFER: Final = Route("file_sharing", "offer")
CHUNK: Final = Route("file_sharing", "chunk")
REVOKE: Final = Route("file_sharing", "revoke")
DECLINE: Final = Route("file_sharing", "decline")
CHUNK_ATTEMPTS: Final = 3
IN_FLIGHT: Final = 3
DIGEST_RUN: Final = 8
MAX_STANDING_OFFERS: Final = 256
"""Offers from one peer a node holds at once (neither expired nor ended): past that, 429."""
OFFERS_LOGGED_PER_HOUR: Final = 256
"""New offers from one peer a node logs in any hour: past that, 429 with Retry-After. An
offer revoked (or expiring) at once never counts against :data:`MAX_STANDING_OFFERS`, yet is
two entries in the log; this bounds what one peer adds to it (512 entries an hour)."""
TREE_CACHE_BYTES: Final = 64 * 1024 * 1024
"""Hashes the sender keeps in memory for the trees of its offers being fetched: the tree of
the largest offer (:data:`~.domain.MAX_CHUNKS` chunks) fits, 64 MiB less 32 bytes."""
PREDICTABLE_NAMES: Final = 10
"""Names tried in the download directory (``name``, ``name (1)`` … ``name (9)``) before one
nobody can guess (``name (<16 random hex digits>)``)."""
"""Chunks the digest reads back in one go (at most)."""
_MARK = struct.Struct(">I32s")

Transport = Callable[[Route, Envelope], Awaitable[Envelope]]
TransportFor = Callable[[str], Awaitable[Transport]]
"""The transport to a peer (by node id): the HTTP call to its ``/api/v3/p2p/...``."""


def new_offer_id() -> str:
    """16 random bytes in base64url, never starting with ``-``.

    An id is an argument of ``openred fetch | decline | unshare``; one starting with ``-``
    (1 in 64 of them) was read by the command line as an option (``No such option: -L``).
    Redrawing those leaves 127.98 bits of randomness. Ids a peer makes are taken as they come
    (the wire format allows ``-`` first); on the command line such an id follows ``--``.
    """
    while True:
        offer_id = b64url(secrets.token_bytes(16))
        if not offer_id.startswith("-"):
            return offer_id


@dataclass
class Progress:
    """A fetch's progress: verified bytes of ``total``; how it ended, once it has."""

    offer_id: str
    total: int
    verified: int = 0
    state: str = "running"
    path: str | None = None
    reason: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"offer_id": self.offer_id, "total": self.total, "verified": self.verified,
                "state": self.state, "path": self.path, "reason": self.reason,
                "detail": self.detail}


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; [[[[…
        raise NodeRefused(400, "malformed", f"the {what} is not JSON") from None
    if not isinstance(obj, dict):
        raise NodeRefused(400, "malformed", f"the {what} is a JSON object")
    return obj


def _offer_id(obj: dict[str, Any], keys: set[str]) -> str:
    if set(obj) != keys:
        raise NodeRefused(400, "malformed", f"the request has exactly {sorted(keys)}")
    offer_id = obj["offer_id"]
    # The id's alphabet, not only its length: a lone surrogate ("\ud800", valid JSON) reached
    # SQLite and failed there (a 500). One 22-character regex match per request.
    if not isinstance(offer_id, str) or not OFFER_ID.fullmatch(offer_id):
        raise NodeRefused(404, "unknown-offer", "no such offer for this peer")
    return offer_id


def _loggable(path: Path) -> None:
    """A 422 unless ``path`` is UTF-8 text: the log records it (canonical JSON holds no other).

    A name of bytes that are not UTF-8 (``"\udc80"`` after ``os.fsdecode``) failed only when
    its event was appended — after the file was hashed, or placed.
    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise NodeRefused(422, "invalid-path", f"{path!r} is not UTF-8 text (the node's log "
                          "records it): rename it or its directory") from None


def _json(obj: dict[str, Any]) -> bytes:
    return bytes(rfc8785.dumps(obj))


def _hash_file(fd: int) -> tuple[list[bytes], bytes, int]:
    """Leaves and whole digest of an open file, reading one chunk at a time; and its size."""
    leaves: list[bytes] = []
    whole = hashlib.sha256()
    offset = 0
    while True:
        data = os.pread(fd, CHUNK_SIZE, offset)
        if not data:
            break
        leaves.append(leaf_hash(data))
        whole.update(data)
        offset += len(data)
    return leaves, whole.digest(), offset


T = TypeVar("T")


class _Buffers:
    """A few reused read buffers (the sender's chunks), taken and given back from threads."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        with self._lock:
            for i, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(i)
        return bytearray(size)

    def give(self, buffer: bytearray) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buffer)


class _Threads:
    """Blocking calls in the default executor, and a way to wait until none is running.

    Cancelling an ``await`` of a thread does not stop the thread: a fetch waits for its threads
    before it closes the file descriptors they use (a closed descriptor's number is reused at
    once by the next file opened).
    """

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._running.add(future)
        future.add_done_callback(self._done)
        return await asyncio.shield(future)

    def _done(self, future: asyncio.Future[Any]) -> None:
        self._running.discard(future)
        if not future.cancelled():
            future.exception()  # its waiter got it, or was cancelled and needs it no more

    async def drain(self) -> None:
        while self._running:
            await asyncio.wait(list(self._running))


def _flush(*fds: int) -> None:
    for fd in fds:
        os.fdatasync(fd)


class FileSharing:
    """The file_sharing module's services over the node's log, read models and sessions."""

    def __init__(
        self, *, store: SQLiteEventStore, reads: ReadModels, keeper: SessionKeeper,
        book: NodeBook, data_dir: Path, transport_for: TransportFor,
        clock: Callable[[], int], write: Write = os.pwrite, direct_io: bool = True,
    ) -> None:
        self.store = store
        self.reads = reads
        self.keeper = keeper
        self.book = book
        self.root = data_dir / "files"
        self.transport_for = transport_for
        self.clock = clock
        self.write = write
        self.direct_io = direct_io
        """Write and read back partial files with O_DIRECT where possible (:mod:`.partial`)."""
        self._trees: OrderedDict[str, HashTree] = OrderedDict()
        self.tree_cache_bytes = TREE_CACHE_BYTES
        """What the cached trees may hold in all (the one in use is always kept)."""
        self.offers_logged = RateLimiter(OFFERS_LOGGED_PER_HOUR, 3600.0)
        """New offers logged per peer (node id) in the last hour."""
        self._read_buffers = _Buffers(IN_FLIGHT)
        """Chunk read buffers of the sender, reused across requests (a few MiB at most)."""
        self._fetching: set[str] = set()
        self._background: dict[str, tuple[Progress, asyncio.Task[None] | None]] = {}
        self._served: dict[str, FileOfferRow] = {}
        """Offers of ours in use while they stand (every change to them goes through here)."""
        self._ended: set[str] = set()
        """Offers revoked, declined or expired by this process: never cached again."""

    # -- paths --

    def _tree_path(self, offer_id: str) -> Path:
        return self.root / "trees" / f"{offer_id}.leaves"

    def _part(self, offer_id: str) -> Path:
        return self.root / "partial" / f"{offer_id}.part"

    def _marks(self, offer_id: str) -> Path:
        return self.root / "partial" / f"{offer_id}.marks"

    @property
    def received_dir(self) -> Path:
        return self.root / "received"

    # -- reading --

    async def offer(self, offer_id: str) -> FileOfferRow | None:
        async with self.reads.session() as s:
            return await s.get(FileOfferRow, offer_id)

    async def transfer(self, offer_id: str) -> FileTransferRow | None:
        async with self.reads.session() as s:
            return await s.get(FileTransferRow, offer_id)

    async def offers(self) -> list[FileOfferRow]:
        """Every offer sent and received, newest first (those found expired are logged so)."""
        now = self.clock()
        query = select(FileOfferRow).order_by(col(FileOfferRow.offered_at).desc())
        async with self.reads.session() as s:
            rows = list((await s.exec(query)).all())
        for row in rows:
            if row.state == "offered" and now >= row.expires_at:
                await self._log(row.offer_id, ev.FILE_OFFER_EXPIRED, {"offer_id": row.offer_id})
                row.state = "expired"
        return rows

    def _end(self, offer_id: str) -> None:
        self._ended.add(offer_id)
        self._served.pop(offer_id, None)
        self._trees.pop(offer_id, None)

    async def _log(self, offer_id: str, kind: str, payload: dict[str, Any]) -> None:
        if kind in (ev.FILE_OFFER_REVOKED, ev.FILE_OFFER_DECLINED, ev.FILE_OFFER_EXPIRED):
            self._end(offer_id)
        await self.store.append_one(NewEvent(ev.offer_stream(offer_id), kind, payload))

    # -- calling the peer --

    async def _session_with(self, peer: str) -> SessionChannel:
        rows = [r for r in await self.book.sessions(state="active") if r.peer == peer]
        if not rows:
            raise NodeRefused(409, "no-session",
                              "no active session with this peer: connect to it first")
        newest = max(rows, key=lambda r: r.established_at)
        return await self.keeper.channel(newest.session_id, self.clock())

    async def _call(self, peer: str, route: Route, request: bytes,
                    channel: SessionChannel | None = None,
                    transport: Transport | None = None,
                    into: bytearray | None = None) -> bytes | memoryview:
        """One request to ``peer`` on its newest session; the answer's plaintext.

        With ``into``, the answer is decrypted into that buffer and returned as a view of it
        (:meth:`~openred.node.envelope.SessionChannel.open_answer_into`).

        A peer restarted since our last request may refuse our counters as replays: the
        channel then moves to a fresh epoch and the request is sent once more (every action
        here is idempotent).
        """
        channel = channel or await self._session_with(peer)
        transport = transport or await self.transport_for(peer)
        for attempt in (1, 2):
            envelope = channel.seal_request(route, request)
            try:
                answer = await transport(route, envelope)
                if into is None:
                    return channel.open_answer(route, envelope.counter, answer)
                return channel.open_answer_into(route, envelope.counter, answer, into)
            except NodeRefused as exc:
                if attempt == 1 and exc.reason == "replayed-message":
                    await self.keeper.rotate(channel)
                    continue
                raise
            finally:
                channel.forget(envelope.counter)
        raise AssertionError("unreachable")

    # -- the sender --

    async def share(self, peer: str, path: Path | str, *, expires_in: int,
                    name: str | None = None) -> FileOfferRow:
        """Offer the regular file at ``path`` to ``peer`` for ``expires_in`` seconds."""
        if expires_in < 1:
            raise NodeRefused(422, "invalid-expiry", "an offer lives at least one second")
        source = Path(path).absolute()
        _loggable(source)
        offered_name = check_name(source.name if name is None else name)
        channel = await self._session_with(peer)
        try:
            info = os.lstat(source)
        except FileNotFoundError:
            raise NodeRefused(404, "no-such-file", f"{source} does not exist") from None
        if stat.S_ISLNK(info.st_mode):
            raise NodeRefused(422, "symlink-refused", f"{source} is a symbolic link: offer "
                              "the file it points to")
        if not stat.S_ISREG(info.st_mode):
            raise NodeRefused(422, "not-a-file", f"{source} is not a regular file")
        if chunk_count(info.st_size, CHUNK_SIZE) > MAX_CHUNKS:
            raise NodeRefused(413, "file-too-large", f"{source} is larger than an offer may be "
                              f"({MAX_CHUNKS * CHUNK_SIZE} bytes)")
        try:
            # O_NONBLOCK: a FIFO swapped in since the lstat is not waited on (refused below).
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise NodeRefused(422, "unreadable-file", f"{source}: {exc.strerror or exc}") from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise NodeRefused(422, "not-a-file", f"{source} is not a regular file")
            leaves, digest, size = await asyncio.to_thread(_hash_file, fd)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
            size != after.st_size
        ):
            raise NodeRefused(409, "file-changed", f"{source} changed while it was hashed")
        tree = HashTree(leaves)
        offer_id = new_offer_id()
        terms = OfferTerms(offer_id, offered_name, size, b64url(digest), b64url(tree.root),
                           CHUNK_SIZE, self.clock() + expires_in)
        tree_path = self._tree_path(offer_id)
        tree_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tree_path.with_suffix(".tmp")
        tmp.write_bytes(tree.levels[0])
        tmp.replace(tree_path)
        await self._log(offer_id, ev.FILE_OFFERED, {
            **terms.to_json(), "peer": peer, "session_id": channel.session_id,
            "source": str(source), "mtime_ns": str(after.st_mtime_ns),
        })
        try:
            await self._call(peer, OFFER, _json(terms.to_json()), channel)
        except OpenRedError:
            await self._log(offer_id, ev.FILE_OFFER_REVOKED, {"offer_id": offer_id})
            raise
        row = await self.offer(offer_id)
        assert row is not None
        return row

    async def revoke(self, offer_id: str) -> None:
        """Revoke an offer this node made; the peer is told if it can be reached."""
        row = await self.offer(offer_id)
        if row is None or row.direction != "sent":
            raise NodeRefused(404, "unknown-offer", "no offer of ours with this id")
        if row.state != "offered":
            raise NodeRefused(409, f"offer-{row.state}", f"the offer is already {row.state}")
        await self._log(offer_id, ev.FILE_OFFER_REVOKED, {"offer_id": offer_id})
        with contextlib.suppress(OpenRedError):
            await self._call(row.peer, REVOKE, _json({"offer_id": offer_id}))

    async def _tree(self, row: FileOfferRow) -> HashTree:
        """The offer's hash tree, from the cache or its leaves file (then cached).

        The cache is bounded by the bytes of its trees, least recently used dropped first; the
        tree asked for is always kept, so a fetch never rebuilds it chunk after chunk.
        """
        tree = self._trees.get(row.offer_id)
        if tree is None:
            raw = await asyncio.to_thread(self._tree_path(row.offer_id).read_bytes)
            try:
                tree = HashTree.from_leaves(raw)
            except ValueError:
                tree = None
            if tree is None or b64url(tree.root) != row.root:
                raise NodeRefused(409, "file-changed", "the offer's hash tree is damaged")
            self._trees[row.offer_id] = tree
            held = sum(t.nbytes for t in self._trees.values())
            while held > self.tree_cache_bytes and len(self._trees) > 1:
                held -= self._trees.popitem(last=False)[1].nbytes
        self._trees.move_to_end(row.offer_id)
        return tree

    async def _usable(self, ctx: RequestContext, offer_id: str, direction: str) -> FileOfferRow:
        row = self._served.get(offer_id)
        if row is None:
            row = await self.offer(offer_id)
        exists = row is not None and row.direction == direction
        for_peer = row is not None and row.peer == ctx.peer
        if row is not None and exists and for_peer and row.state == "offered" and (
            ctx.now >= row.expires_at
        ):
            await self._log(offer_id, ev.FILE_OFFER_EXPIRED, {"offer_id": offer_id})
            row.state = "expired"
        refuse_unless_usable(exists=exists, for_peer=for_peer, state=row.state if row else "",
                             expires_at=row.expires_at if row else 0, now=ctx.now)
        assert row is not None
        if direction == "sent" and offer_id not in self._ended:
            self._served[offer_id] = row
            while len(self._served) > 64:
                self._served.pop(next(iter(self._served)))
        return row

    async def serve_chunk(self, ctx: RequestContext, plaintext: bytes) -> Outcome:
        """The P2P handler of ``file_sharing/chunk``."""
        obj = _object(plaintext, "chunk request")
        row = await self._usable(ctx, _offer_id(obj, {"offer_id", "offset", "length"}), "sent")
        offset, length = obj["offset"], obj["length"]
        for value in (offset, length):
            if isinstance(value, bool) or not isinstance(value, int):
                raise NodeRefused(400, "malformed", "offset and length are integers")
        index = offset // row.chunk_size if offset >= 0 else -1
        if not 0 <= offset < row.size or offset % row.chunk_size or (
            length != chunk_range(index, row.size, row.chunk_size)[1]
        ):
            raise NodeRefused(416, "bad-range", "the range is not one chunk of the offered "
                              f"file ({row.size} bytes in chunks of {row.chunk_size})")
        tree = await self._tree(row)
        proof = tree.proof(index)
        head = b"".join((struct.pack(">H", len(proof)), *proof))
        return Outcome(await asyncio.to_thread(self._read_chunk, row, offset, length,
                                               tree.leaf(index), head, self._read_buffers))

    @staticmethod
    def _read_chunk(row: FileOfferRow, offset: int, length: int, leaf: bytes,
                    head: bytes, buffers: _Buffers | None = None) -> bytes:
        """``head`` ‖ the chunk, read from the offered file if it still is the one offered.

        The chunk is read into a reused buffer and hashed there; the answer is then one new
        bytes object (head and chunk joined), not two.
        """
        changed = NodeRefused(409, "file-changed", "the offered file changed on the sender's "
                              "disk since it was offered")
        assert row.source is not None
        try:
            # O_NONBLOCK: a FIFO put in the file's place is opened at once (and refused below),
            # not waited on for a writer; it changes nothing for a regular file.
            fd = os.open(row.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            raise changed from None
        buffers = buffers or _Buffers(0)
        buffer = buffers.take(length)
        try:
            with memoryview(buffer) as view, view[:length] as data:
                try:
                    info = os.fstat(fd)
                    if not stat.S_ISREG(info.st_mode) or info.st_size != row.size or (
                        str(info.st_mtime_ns) != row.mtime_ns
                    ):
                        raise changed
                    got = os.preadv(fd, [data], offset)
                finally:
                    os.close(fd)
                if got != length or leaf_hash(data) != leaf:
                    raise changed
                return b"".join((head, data))
        finally:
            buffers.give(buffer)

    async def receive_decline(self, ctx: RequestContext, plaintext: bytes) -> Outcome:
        """The P2P handler of ``file_sharing/decline`` (the receiver declined our offer)."""
        offer_id = _offer_id(_object(plaintext, "decline"), {"offer_id"})
        row = await self.offer(offer_id)
        if row is None or row.direction != "sent" or row.peer != ctx.peer:
            raise NodeRefused(404, "unknown-offer", "no such offer for this peer")
        events = []
        if row.state == "offered":
            events.append(NewEvent(ev.offer_stream(offer_id), ev.FILE_OFFER_DECLINED,
                                   {"offer_id": offer_id}))
            self._end(offer_id)
        return Outcome(_json({"offer_id": offer_id, "state": "declined"}), events)

    # -- the receiver --

    async def receive_offer(self, ctx: RequestContext, plaintext: bytes) -> Outcome:
        """The P2P handler of ``file_sharing/offer``: log the offer (once per offer id)."""
        terms = OfferTerms.from_json(_object(plaintext, "offer"))
        row = await self.offer(terms.offer_id)
        answer = _json({"offer_id": terms.offer_id, "status": "received"})
        if row is not None:
            if row.peer != ctx.peer or row.direction != "received":
                raise NodeRefused(409, "offer-id-taken", "another offer has this id")
            return Outcome(answer)
        if terms.expires_at <= ctx.now:
            raise NodeRefused(410, "offer-expired", "the offer has already expired")
        # A peer's standing offers (not fetched, ended or expired) are bounded: each is a row
        # every listing reads and, once expired, logs. One COUNT per offer received.
        standing = select(func.count()).select_from(FileOfferRow).where(
            col(FileOfferRow.peer) == ctx.peer, col(FileOfferRow.direction) == "received",
            col(FileOfferRow.state) == "offered", col(FileOfferRow.expires_at) > ctx.now,
            col(FileOfferRow.offer_id).not_in(select(FileTransferRow.offer_id).where(
                col(FileTransferRow.state) == "completed")))
        async with self.reads.session() as s:
            held = (await s.exec(standing)).one()
        if held >= MAX_STANDING_OFFERS:
            raise NodeRefused(429, "too-many-offers", f"this peer already holds {held} offers "
                              "of yours: wait until some are fetched, declined or expired")
        # Checked and counted with no await in between: offers arriving at once cannot all
        # pass before the first is counted.
        wait = self.offers_logged.retry_after(ctx.peer, ctx.now)
        if wait is not None:
            refused = NodeRefused(429, "too-many-offers", "this peer received "
                                  f"{self.offers_logged.limit} offers of yours in the last "
                                  "hour: wait")
            refused.retry_after = max(1, math.ceil(wait))
            raise refused
        self.offers_logged.hit(ctx.peer, ctx.now)
        return Outcome(answer, [NewEvent(ev.offer_stream(terms.offer_id), ev.FILE_OFFER_RECEIVED, {
            **terms.to_json(), "peer": ctx.peer, "session_id": ctx.session_id,
        })])

    async def receive_revoke(self, ctx: RequestContext, plaintext: bytes) -> Outcome:
        """The P2P handler of ``file_sharing/revoke`` (the sender revoked its offer)."""
        offer_id = _offer_id(_object(plaintext, "revoke"), {"offer_id"})
        row = await self.offer(offer_id)
        if row is None or row.direction != "received" or row.peer != ctx.peer:
            raise NodeRefused(404, "unknown-offer", "no such offer for this peer")
        events = []
        if row.state == "offered":
            events.append(NewEvent(ev.offer_stream(offer_id), ev.FILE_OFFER_REVOKED,
                                   {"offer_id": offer_id}))
        return Outcome(_json({"offer_id": offer_id, "state": "revoked"}), events)

    async def decline(self, offer_id: str) -> None:
        """Decline an offer received; the sender is told if it can be reached."""
        row = await self.offer(offer_id)
        if row is None or row.direction != "received":
            raise NodeRefused(404, "unknown-offer", "no offer received with this id")
        if row.state != "offered":
            raise NodeRefused(409, f"offer-{row.state}", f"the offer is already {row.state}")
        await self._log(offer_id, ev.FILE_OFFER_DECLINED, {"offer_id": offer_id})
        self._discard_partial(offer_id)
        with contextlib.suppress(OpenRedError):
            await self._call(row.peer, DECLINE, _json({"offer_id": offer_id}))

    # -- fetches in the background (what the admin API starts and the CLI watches) --

    async def start_fetch(self, offer_id: str, *, out: Path | None = None) -> Progress:
        """Start fetching in a task of this node (or find the one running); its progress.

        Refusals known up front (unknown, revoked or expired offer, a bad ``out``) are raised
        here; later ones end the task and are in the progress (``state`` ``failed``).
        """
        held = self._background.get(offer_id)
        if held is not None and held[0].state == "running":
            return held[0]
        row = await self.offer(offer_id)
        if row is None or row.direction != "received":
            raise NodeRefused(404, "unknown-offer", "no offer received with this id")
        refuse_unless_usable(exists=True, for_peer=True, state=row.state,
                             expires_at=row.expires_at, now=self.clock())
        if out is not None and not Path(out).is_dir():
            raise NodeRefused(422, "no-such-directory", f"{out} is not a directory")
        state = Progress(offer_id, row.size)

        def update(seen: Progress) -> None:
            state.verified = seen.verified

        async def run() -> None:
            try:
                path = await self.fetch(offer_id, out=out, progress=update)
            except NodeRefused as exc:
                state.state, state.reason, state.detail = "failed", exc.reason, exc.detail
            except OpenRedError as exc:  # the node is stopping (its log closed): resume later
                state.state, state.reason, state.detail = "failed", "node-stopping", str(exc)
            except asyncio.CancelledError:
                state.state, state.reason = "failed", "interrupted"
                state.detail = "the fetch was stopped; fetch again to resume"
                raise
            except Exception as exc:  # whatever happens, the watcher learns that it stopped
                logger.exception("fetching offer %s failed", offer_id)
                state.state, state.reason = "failed", "internal-error"
                state.detail = f"{type(exc).__name__}: the fetch stopped; fetch again to resume"
            else:
                state.state, state.path, state.verified = "completed", str(path), row.size

        self._background[offer_id] = (state, asyncio.create_task(run()))
        await asyncio.sleep(0)
        return state

    async def fetch_progress(self, offer_id: str) -> Progress:
        """The progress of this node's fetch of ``offer_id`` (from the log if none ran here)."""
        held = self._background.get(offer_id)
        if held is not None:
            return held[0]
        row = await self.offer(offer_id)
        if row is None or row.direction != "received":
            raise NodeRefused(404, "unknown-offer", "no offer received with this id")
        transfer = await self.transfer(offer_id)
        if transfer is None:
            return Progress(offer_id, row.size, state="not-started")
        return Progress(offer_id, row.size, transfer.verified_bytes,
                        "failed" if transfer.state == "running" else transfer.state,
                        transfer.path, transfer.reason or "interrupted", transfer.detail)

    async def stop_fetch(self, offer_id: str) -> Progress:
        """Stop this node's running fetch of ``offer_id`` (verified chunks are kept)."""
        held = self._background.get(offer_id)
        if held is None or held[1] is None or held[1].done():
            return await self.fetch_progress(offer_id)
        held[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held[1]
        return held[0]

    async def close(self) -> None:
        """Stop every fetch running in the background (they resume on the next fetch)."""
        for offer_id in list(self._background):
            await self.stop_fetch(offer_id)

    def _discard_partial(self, offer_id: str) -> None:
        for path in (self._part(offer_id), self._marks(offer_id)):
            path.unlink(missing_ok=True)

    def _marks_read(self, row: FileOfferRow) -> dict[int, bytes]:
        """The marks file: chunk index → the leaf hash it was verified with (last mark wins)."""
        try:
            raw = self._marks(row.offer_id).read_bytes()
        except FileNotFoundError:
            return {}
        count = chunk_count(row.size, row.chunk_size)
        marks: dict[int, bytes] = {}
        for i in range(0, len(raw) - len(raw) % _MARK.size, _MARK.size):
            index, leaf = _MARK.unpack_from(raw, i)
            if index < count:
                marks[index] = leaf
        return marks

    def _held_marks(self, row: FileOfferRow) -> dict[int, bytes]:
        """Chunks an earlier run verified and wrote, as far as the partial file still holds them.

        Not read again here: the whole digest, read back from the partial file before the file
        is placed, covers them, and a mismatch sends the fetch to :meth:`_verified_marks`.
        """
        try:
            size = self._part(row.offer_id).stat().st_size
        except FileNotFoundError:
            return {}
        return {index: leaf for index, leaf in self._marks_read(row).items()
                if sum(chunk_range(index, row.size, row.chunk_size)) <= size}

    def _verified_marks(self, row: FileOfferRow) -> dict[int, bytes]:
        """Chunks of the partial file whose bytes on disk still hash to their mark."""
        part = self._part(row.offer_id)
        marks = self._marks_read(row)
        if not marks or not part.exists():
            return {}
        verified: dict[int, bytes] = {}
        with part.open("rb") as f:
            for index in sorted(marks):
                offset, length = chunk_range(index, row.size, row.chunk_size)
                f.seek(offset)
                if leaf_hash(f.read(length)) == marks[index]:
                    verified[index] = marks[index]
        return verified

    async def fetch(self, offer_id: str, *, out: Path | None = None,
                    progress: Callable[[Progress], None] | None = None,
                    in_flight: int = IN_FLIGHT) -> Path:
        """Fetch an offer received, resuming what earlier runs verified; the file's path."""
        row = await self.offer(offer_id)
        if row is None or row.direction != "received":
            raise NodeRefused(404, "unknown-offer", "no offer received with this id")
        done = await self.transfer(offer_id)
        if done is not None and done.state == "completed" and done.path is not None:
            return Path(done.path)
        if row.state == "offered" and self.clock() >= row.expires_at:
            await self._log(offer_id, ev.FILE_OFFER_EXPIRED, {"offer_id": offer_id})
            row.state = "expired"
        refuse_unless_usable(exists=True, for_peer=True, state=row.state,
                             expires_at=row.expires_at, now=self.clock())
        if offer_id in self._fetching:
            raise NodeRefused(409, "fetch-running", "this offer is being fetched already")
        name = check_name(row.name)
        target_dir = Path(out).absolute() if out is not None else self.received_dir
        _loggable(target_dir)
        if not target_dir.is_dir():
            if out is not None:
                raise NodeRefused(422, "no-such-directory", f"{target_dir} is not a directory")
            target_dir.mkdir(parents=True, exist_ok=True)
        self._fetching.add(offer_id)
        try:
            return await self._fetch(row, name, target_dir, progress, max(1, in_flight))
        finally:
            self._fetching.discard(offer_id)

    async def _fetch(self, row: FileOfferRow, name: str, target_dir: Path,
                     progress: Callable[[Progress], None] | None, in_flight: int) -> Path:
        offer_id = row.offer_id
        self._part(offer_id).parent.mkdir(parents=True, exist_ok=True)
        held = await asyncio.to_thread(self._held_marks, row)
        state = Progress(offer_id, row.size, self._bytes_of(row, held))
        await self._log(offer_id, ev.FILE_TRANSFER_STARTED,
                        {"offer_id": offer_id, "resumed_from": state.verified})
        if progress:
            progress(state)
        try:
            await self._receive(row, held, state, progress, in_flight)
            path = await asyncio.to_thread(self._place, self._part(offer_id), name, target_dir,
                                           offer_id, row.size)
        except NodeRefused as exc:
            await self._failed(row, exc.reason, exc.detail, state.verified)
            raise
        except (TransportError, OSError) as exc:
            reason = "peer-unreachable" if isinstance(exc, OpenRedError) else "write-failed"
            await self._failed(row, reason, str(exc), state.verified)
            raise NodeRefused(502 if reason == "peer-unreachable" else 507, reason,
                              f"{exc}; the partial file is kept: fetch again to resume") from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._failed(row, "interrupted", "the fetch was stopped",
                                                  state.verified))
            raise
        await self._log(offer_id, ev.FILE_TRANSFER_COMPLETED,
                        {"offer_id": offer_id, "path": str(path), "size": row.size})
        return path

    @staticmethod
    def _bytes_of(row: FileOfferRow, chunks: dict[int, bytes]) -> int:
        return sum(chunk_range(i, row.size, row.chunk_size)[1] for i in chunks)

    async def _failed(self, row: FileOfferRow, reason: str, detail: str, verified: int) -> None:
        await self._log(row.offer_id, ev.FILE_TRANSFER_FAILED, {
            "offer_id": row.offer_id, "reason": reason, "detail": detail,
            "verified_bytes": verified,
        })

    async def _receive(
        self, row: FileOfferRow, held: dict[int, bytes], state: Progress,
        progress: Callable[[Progress], None] | None, in_flight: int,
    ) -> None:
        """Fetch every chunk not ``held`` into the partial file until its whole digest matches.

        The first round trusts the marks of earlier runs. If the digest read back from the
        partial file does not match the offer's, a second round re-hashes every marked chunk on
        disk (:meth:`_verified_marks`), fetches those that fail again and reads the digest back
        once more; a second mismatch discards the partial file (the offer's digest and tree
        disagree).
        """
        self._refuse_unless_room(row, held)
        threads = _Threads()
        part = PartialFile(self._part(row.offer_id), size=row.size, chunk_size=row.chunk_size,
                           direct=self.direct_io)
        try:
            marks_fd = os.open(self._marks(row.offer_id),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        except BaseException:
            part.close()
            raise
        try:
            # The partial file has the offered size: nothing past it, whatever lay there.
            os.ftruncate(part.fd, row.size)
            for attempt in (1, 2):
                digest = await self._receive_round(row, held, state, progress, in_flight,
                                                   part, marks_fd, threads)
                if b64url(digest) == row.digest:
                    return
                if attempt == 1:
                    held = await threads.run(self._verified_marks, row)
                    state.verified = self._bytes_of(row, held)
                    if progress:
                        progress(state)
        except BaseException:
            # Stopped (Ctrl-C, a failure): what was verified goes to disk now, so it survives a
            # crash and the next fetch finds it there, not waiting to be written back.
            await threads.drain()
            with contextlib.suppress(OSError):
                await threads.run(_flush, part.fd, marks_fd)
            raise
        finally:
            await threads.drain()
            part.close()
            os.close(marks_fd)
        self._discard_partial(row.offer_id)
        raise NodeRefused(502, "digest-mismatch", "the whole file does not match the offer's "
                          "digest; the partial file was discarded")

    def _refuse_unless_room(self, row: FileOfferRow, held: dict[int, bytes]) -> None:
        """A 507 before anything is written if the chunks still to come cannot fit.

        A peer's offer may declare terabytes: fetching it would fill the disk the node's own
        log lives on before failing. One ``statvfs`` per fetch; :data:`DISK_RESERVE` is left.
        """
        needed = row.size - self._bytes_of(row, held)
        free = os.statvfs(self._part(row.offer_id).parent)
        if free.f_bavail * free.f_frsize < needed + DISK_RESERVE:
            raise NodeRefused(507, "disk-full", f"the offer needs {needed} more bytes and "
                              f"{free.f_bavail * free.f_frsize} are free (keeping "
                              f"{DISK_RESERVE} for the node): free space and fetch again")

    async def _receive_round(
        self, row: FileOfferRow, held: dict[int, bytes], state: Progress,
        progress: Callable[[Progress], None] | None, in_flight: int, part: PartialFile,
        marks_fd: int, threads: _Threads,
    ) -> bytes:
        """Fetch the chunks not ``held``; the SHA-256 of the partial file, read back in order.

        Workers keep ``in_flight`` chunk requests going; each answer is checked against the
        offer's root, written at its offset and marked, all in one worker thread. Meanwhile the
        digest follows behind them in file order, reading back from the partial file every
        chunk as soon as it (and every chunk before it) is there — so what is hashed is what
        is on disk.
        """
        count = chunk_count(row.size, row.chunk_size)
        missing = [i for i in range(count) if i not in held]
        on_disk = set(held)
        arrived = asyncio.Event()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in missing:
            queue.put_nowait(index)
        root = from_b64url(row.root)
        channel: SessionChannel | None = None
        transport: Transport | None = None
        if missing:
            channel = await self._session_with(row.peer)
            transport = await self.transport_for(row.peer)

        async def worker() -> None:
            # This worker's chunk plaintexts, one at a time, decrypted into one buffer (never
            # shared: a cancelled worker's store thread may still be reading it).
            plain = bytearray()
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                offset, length = chunk_range(index, row.size, row.chunk_size)
                request = _json({"offer_id": row.offer_id, "offset": offset, "length": length})
                for _attempt in range(CHUNK_ATTEMPTS):
                    answer = await self._call(row.peer, CHUNK, request, channel, transport,
                                              plain)
                    if await threads.run(self._store_chunk, part, marks_fd, answer, index,
                                         count, offset, length, root):
                        break
                else:
                    raise NodeRefused(502, "corrupt-chunk", f"chunk {index} failed its hash "
                                      f"check {CHUNK_ATTEMPTS} times")
                on_disk.add(index)
                arrived.set()
                state.verified += length
                if progress:
                    progress(state)

        async def digest() -> bytes:
            whole = hashlib.sha256()
            at = 0
            while at < count:
                if at not in on_disk:
                    arrived.clear()
                    await arrived.wait()
                    continue
                end = at
                while end < count and end in on_disk and end - at < DIGEST_RUN:
                    end += 1
                start = chunk_range(at, row.size, row.chunk_size)[0]
                stop = sum(chunk_range(end - 1, row.size, row.chunk_size))
                await threads.run(part.hash_back, whole, start, stop - start)
                at = end
            return whole.digest()

        tasks = [asyncio.create_task(worker()) for _ in range(min(in_flight, len(missing)))]
        follower = asyncio.create_task(digest())
        try:
            await asyncio.gather(*tasks)
            return await follower
        except BaseException:
            for task in (*tasks, follower):
                task.cancel()
            await asyncio.gather(*tasks, follower, return_exceptions=True)
            raise

    @staticmethod
    def _check_chunk(answer: bytes | memoryview, index: int, count: int, length: int,
                     root: bytes) -> tuple[bytes, memoryview] | None:
        """The leaf hash and the bytes of a chunk answer that proves itself; else None."""
        if len(answer) < 2:
            return None
        (n,) = struct.unpack_from(">H", answer)
        start = 2 + 32 * n
        if len(answer) != start + length:
            return None
        proof = [bytes(answer[2 + 32 * i:2 + 32 * (i + 1)]) for i in range(n)]
        data = memoryview(answer)[start:]
        leaf = verify_chunk(index, count, data, proof, root)
        return None if leaf is None else (leaf, data)

    def _store_chunk(self, part: PartialFile, marks_fd: int, answer: bytes | memoryview,
                     index: int, count: int, offset: int, length: int, root: bytes) -> bool:
        """Check a chunk answer; if it proves itself, write the chunk and its mark (True)."""
        checked = self._check_chunk(answer, index, count, length, root)
        if checked is None:
            return False
        leaf, data = checked
        try:
            part.write(self.write, data, offset)
            os.write(marks_fd, _MARK.pack(index, leaf))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NodeRefused(507, "disk-full", "no space left for the partial file; "
                                  "it is kept: free space and fetch again") from None
            raise
        return True

    def _place(self, part: Path, name: str, target_dir: Path, offer_id: str, size: int) -> Path:
        """Link the verified partial file into ``target_dir`` under a free name; its path.

        Across file systems the file is copied first into a fresh file of a random name beside
        the target (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600): a name fixed by the offer id
        (which is on ``openred fetch``'s command line, visible to every local user) let a
        planted link receive the copy, or a planted file become the result its owner could
        rewrite after the check.
        """
        with part.open("rb+") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise NodeRefused(502, "digest-mismatch", "the partial file changed size after "
                                  "it was verified; fetch again")
            os.fsync(f.fileno())
        try:
            placed = self._link_free(part, name, target_dir)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            copy = self._copy_beside(part, target_dir)
            try:
                placed = self._link_free(copy, name, target_dir)
            finally:
                copy.unlink()
        self._discard_partial(offer_id)
        return placed

    @staticmethod
    def _link_free(source: Path, name: str, target_dir: Path) -> Path:
        """Hard-link ``source`` as ``name`` in ``target_dir``, or ``name (n)``: never replacing.

        After :data:`PREDICTABLE_NAMES` names taken, ``name (<random>)``: whoever can write
        the directory could take every ``name (n)`` in advance and make each fetch into it
        fail. ``link`` never replaces a name, so each try is an exclusive create.
        """
        stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
        for n in range(PREDICTABLE_NAMES + 8):
            suffix = "" if n == 0 else f" ({n})" if n < PREDICTABLE_NAMES else (
                f" ({secrets.token_hex(8)})")
            candidate = target_dir / (name if n == 0 else f"{stem}{suffix}{dot}{ext}")
            try:
                os.link(source, candidate)
            except FileExistsError:
                continue
            return candidate
        raise NodeRefused(409, "name-taken", f"too many files named like {name}")

    @staticmethod
    def _copy_beside(part: Path, target_dir: Path) -> Path:
        """A new private copy of ``part`` in ``target_dir`` (fsynced), under a random name."""
        while True:
            copy = target_dir / f".openred-{secrets.token_hex(16)}.tmp"
            try:
                out = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            break
        try:
            with part.open("rb") as f, os.fdopen(out, "wb", closefd=False) as w:
                shutil.copyfileobj(f, w, CHUNK_SIZE)
            os.fsync(out)
        except BaseException:
            copy.unlink(missing_ok=True)
            raise
        finally:
            os.close(out)
        return copy
