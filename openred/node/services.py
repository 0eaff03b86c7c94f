"""Everything a running node holds, opened together and closed together (the app's extension).

:class:`NodeServices` owns the node's log (kind ``node``), its read models, the session keeper,
the token receiver, the handshakes, the enabled modules and the one pooled outbound HTTP client,
and offers the node-to-node calls: :meth:`NodeServices.connect` (handshake as initiator over
HTTP) and :meth:`NodeServices.send_message`, plus the lifecycle run (:meth:`lifecycle`).
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from openred.crypto.client import JailClient, JailSigner, PublicKeys
from openred.crypto.identity import b64url, from_b64url
from openred.crypto.methods import MethodRegistry
from openred.crypto.records import SignedNodeRecord
from openred.crypto.transparency import decode_hashes
from openred.errors import (
    NodeRefused,
    OpenRedError,
    PeerUnreachable,
    TransparencyError,
    TransportError,
)
from openred.modules import LoadReport, load_modules
from openred.modules.messaging import MESSAGING_SERVICE
from openred.modules.messaging.service import Messaging, PeerBudget, Receipt
from openred.modules.monitoring.health import (
    Check,
    Probe,
    SharedChecks,
    database_writable,
    jail_answering,
    url_answers,
)
from openred.node.batch import BATCH_PATH, CallBatcher, Render, handle_batch, post_batch
from openred.node.book import NodeBook
from openred.node.diskreserve import DiskReserve, free_bytes
from openred.node.envelope import Envelope, Route, SessionChannel
from openred.node.events import DIRECTORY_FORK_DETECTED, node_registry
from openred.node.handshake_service import INVALID_RENEWAL, HandshakeAnswer, Handshakes
from openred.node.own_record import RECORD_FILE, OwnRecord
from openred.node.p2p import P2PActions, dispatch
from openred.node.projections import node_projections
from openred.node.readmodels import ReadModels, SessionRow
from openred.node.sessions import NodeSessionLedger, SessionKeeper
from openred.node.settings import NodeSettings
from openred.node.token_service import TokenReceiver
from openred.node.transparency import TransparencyChecks
from openred.node.transport import post_envelope
from openred.settings import PUSH_TIMEOUT
from openred.store.sqlite import DATABASE_NAME, SQLiteEventStore, readonly_uri
from openred.web.client import HttpClient, Reply, Signer
from openred.web.problems import INTERNAL_DETAILS, LOGGED_BY_PRODUCER

__all__ = ["NodeServices"]

logger = logging.getLogger("openred.node")

HANDSHAKE_PATH = "/api/v3/p2p/handshake"
CHECKPOINT_PATH = "/api/v3/directory/checkpoint"
HEALTH_PATH = "/api/v3/health"
REQUEST_CONNECTION_PATH = "/api/v3/tokens/request-connection"
SESSION_LEDGER = "session-ledger.json"
"""The durable session ledger (send epochs) in the data directory."""
BATCH_IN_FLIGHT: Final = 1
"""Requests under way to one peer before messages wait to leave together as a batch (one:
measured best once messages wait for their ``MessageSent`` in the queue, docs/decisions.md)."""
MAX_BATCHERS: Final = 1024
"""Peer URLs with a batcher before idle batchers are dropped."""
PROOF_FETCH_BUDGET: Final = PUSH_TIMEOUT / 2
"""Seconds the consistency proof a push needs may take to fetch from the directory, every
attempt and backoff included: half of what the directory waits for the push's answer
(:data:`openred.settings.PUSH_TIMEOUT`), so the node answers while the push still waits —
503 ``directory-unreachable`` with Retry-After when the proof did not come, the half not
accepted, and the directory's next attempt pushes it again. Before, the fetch had the client's
10 s × 3 tries: the push gave up first (``ConnectionGrantFailed``) on a node still checking."""
PROOF_FETCH_ATTEMPTS: Final = 2
"""Tries of that fetch inside its budget (a second one only if the first failed fast)."""
PROOF_RETRY_AFTER: Final = 1
"""Retry-After (seconds) of the 503 a push gets when the proof did not come in time."""
GRANT_TIMEOUT = 17.0
"""Seconds a ``request-connection`` may take (one attempt: it mints a grant, so it is sent
again only after a 503 or when no connection was made). The directory pushes both halves
before it answers, up to ``OPENRED_PUSH_ATTEMPTS × OPENRED_PUSH_TIMEOUT`` plus backoff (3 × 5 s
and at most 0.6 s by default): the client's 10 s gave up first and sent it again, minting
another grant. With the handshake's 10 s it stays below the CLI's 30 s for ``connect``."""


_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_REFUSAL_DETAIL: Final = 500
"""Characters of a peer's (or the directory's) problem detail kept in our refusal."""
_OWN_SLUGS: Final = frozenset({"internal", *LOGGED_BY_PRODUCER, *INTERNAL_DETAILS})
"""Slugs of this node's own failures, which its problem handler treats apart (``internal``:
logged with a traceback; ``unhealthy``: not logged; ``signer-unavailable`` …: "this
service's"): another side's refusal never takes them (``peer-refused``)."""
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def inert(text: str) -> str:
    """``text`` with its control characters (line breaks, ESC, C1, bidirectional overrides)
    shown as ``\\xNN`` / ``\\uNNNN``: a peer's words in our log lines and answers cannot
    start a line of their own or act on a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def clipped(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters, an ellipsis saying it was (another side's words
    kept in our answers, log lines and log entries)."""
    return text[:limit] + "…" if len(text) > limit else text


DIRECTORY_UNREACHABLE = "directory-unreachable"
DIRECTORY_FORK = "directory-fork"
DIRECTORY_FORK_DETAIL = (
    "the directory's checkpoint is inconsistent with the one this node holds (its log was "
    "forked or rolled back): grant refused, evidence kept in this node's log as "
    "DirectoryForkDetected; sessions already established keep working")


@dataclass(frozen=True, slots=True)
class RenewalFailure:
    """Why a session's renewal failed last (its peer, a slug, the whole message)."""

    peer: str
    kind: str
    detail: str


def _utc(unix: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def directory_unreachable(url: str, exc: PeerUnreachable) -> NodeRefused:
    """The refusal of something that needs the directory (a grant) while it is unreachable."""
    cause = str(exc).partition(" attempts: ")[2] or str(exc)
    return NodeRefused(502, DIRECTORY_UNREACHABLE,
                       f"the directory at {url} is unreachable ({cause}): no new connection "
                       "until it is back; sessions already established keep working")


def _proof_unavailable(cause: str) -> NodeRefused:
    """503 for a push whose consistency proof the directory did not give within
    :data:`PROOF_FETCH_BUDGET` (``cause``: why): nothing accepted, push it again."""
    refused = NodeRefused(
        503, DIRECTORY_UNREACHABLE,
        f"no consistency proof from the directory within {PROOF_FETCH_BUDGET:g} s ({cause}): "
        "the grant half is not accepted; push it again")
    refused.retry_after = PROOF_RETRY_AFTER
    return refused


def _refusal_from(reply: Reply, what: str) -> NodeRefused:
    """The peer's problem answer as our refusal (statuses kept, 5xx become 502).

    The other side chose the slug and the detail: a slug not of a slug's shape, or one of our
    own failures' (:data:`_OWN_SLUGS`), is ``peer-refused`` (it became our own problem's
    ``type``, a URI, and log and metric reasons), and the detail is cut at 500 characters (it
    reached the operator's terminal and logged events whole, up to the 1 MiB answer cap), its
    control characters made inert (:func:`inert`).
    """
    slug, detail = "peer-refused", f"{what} answered {reply.status}"
    try:
        body = reply.json()
    except TransportError:
        body = None
    if isinstance(body, dict):
        kind, text = body.get("type"), body.get("detail")
        named = kind.rsplit(":", 1)[-1] if isinstance(kind, str) else ""
        if _SLUG.fullmatch(named) and named not in _OWN_SLUGS:
            slug = named
        if isinstance(text, str):
            detail = f"{what}: {clipped(inert(text), _REFUSAL_DETAIL)}"
    status = reply.status if 400 <= reply.status < 500 else 502
    refusal = NodeRefused(status, slug, detail)
    wait = reply.headers.get("Retry-After", "") if status == 429 else ""
    if not wait and status == 429 and isinstance(body, dict):
        # A call answered inside a batch has no headers of its own: its problem carries the
        # wait as a member (openred.modules.messaging.service.PeerBudget).
        member = body.get("retry_after")
        wait = str(member) if type(member) is int else ""
    # ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses (a peer
    # or directory sending one made every caller of this raise ValueError: a 500).
    if wait.isascii() and wait.isdigit() and len(wait) <= 6:
        refusal.retry_after = int(wait)  # passed on to whoever asked us (the admin API's 429)
    return refusal


def _checkpoint_answer(body: object) -> tuple[bytes, list[bytes]]:
    """The directory's ``{checkpoint, consistency_proof}``: the note's bytes and the hashes.

    Anything else is a TransportError (the push being checked gets 502), never a 500. A
    hash that is not 32 bytes, or more hashes than any proof has, is malformed too: only a
    well-formed proof that fails is a fork (logged as evidence), not an answer garbled on
    the way.
    """
    malformed = TransportError("the directory's checkpoint answer is malformed")
    if not isinstance(body, dict):
        raise malformed
    note, proof = body.get("checkpoint"), body.get("consistency_proof") or []
    if not isinstance(note, str) or not isinstance(proof, list):
        raise malformed
    try:
        return note.encode("utf-8"), decode_hashes(proof, "consistency proof")
    except (ValueError, TransparencyError):  # not base64url, not 32 bytes, a note not UTF-8
        raise malformed from None


PEER_URL_TTL: Final = 1.0
"""How long the send path may use a peer URL it read without reading it again (seconds)."""


class PeerUrls:
    """A peer's ``api_url`` for the send path: the ``peers`` table, remembered per peer.

    Sending asked the SQLModel async session for the whole peer row per message (a pooled
    aiosqlite connection, a thread hop, an identity map); then one read-only sqlite3
    connection read it inline, but every commit resets that connection's page cache, so each
    message still re-read the table's pages. Now a URL read is remembered for at most
    ``ttl`` seconds (:data:`PEER_URL_TTL`), and forgotten at once when this process changes
    the peer's record: the token receiver calls :meth:`changing` before and after it appends
    a ``PeerDiscovered`` (the only event that sets a peer's URL), so from the moment that
    append returns every send reads the new URL. A record another process appends (a second
    process serving the same data directory) is read at most ``ttl`` later, as one appended
    by a caller that was cancelled (it may commit after the caller stopped waiting).
    """

    def __init__(self, database: Path, *, ttl: float = PEER_URL_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.database = database
        self.ttl = ttl
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._urls: dict[str, tuple[str, float]] = {}

    def api_url(self, node_id: str) -> str | None:
        now = self._clock()
        known = self._urls.get(node_id)
        if known is not None and now < known[1]:
            return known[0]
        if self._conn is None:
            self._conn = sqlite3.connect(
                readonly_uri(self.database), uri=True, check_same_thread=False,
                timeout=5.0)
        row = self._conn.execute(
            "SELECT api_url FROM peers WHERE node_id = ?", (node_id,)).fetchone()
        if row is None:
            self._urls.pop(node_id, None)
            return None
        url = str(row[0])
        if len(self._urls) >= _PEER_URLS_MAX:
            self._urls.clear()
        if self.ttl > 0:
            self._urls[node_id] = (url, now + self.ttl)
        return url

    def changing(self, node_id: str) -> None:
        """``node_id``'s record is being replaced: read its URL from the table again."""
        self._urls.pop(node_id, None)

    def close(self) -> None:
        self._urls.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_PEER_URLS_MAX: Final = 4096


@dataclass
class NodeServices:
    settings: NodeSettings
    jail: JailClient
    keys: PublicKeys
    store: SQLiteEventStore
    reads: ReadModels
    book: NodeBook
    keeper: SessionKeeper
    handshakes: Handshakes
    tokens: TokenReceiver
    messaging: Messaging
    actions: P2PActions
    http: HttpClient
    modules: LoadReport
    methods: MethodRegistry
    own_record: OwnRecord
    clock: Callable[[], float] = time.time
    peer_urls: PeerUrls | None = None
    batchers: dict[str, CallBatcher] = field(default_factory=dict)
    """The message path's :class:`CallBatcher` of each peer API URL."""
    reserve: DiskReserve | None = None
    """Free space kept on the log's file system: peers' calls log nothing below it."""
    health_checks: SharedChecks = field(default_factory=SharedChecks)
    """The public health route's checks: one run at a time, shared (a scraper's burst)."""
    renewal_failures: dict[str, RenewalFailure] = field(default_factory=dict)
    """The last failure of each active session's renewal (logged once, said at its expiry)."""
    unrenewed: dict[str, tuple[str, RenewalFailure]] = field(default_factory=dict)
    """Per peer, the last session that expired unrenewed and why (what ``send`` tells the
    operator when no session with the peer is active; since this process started)."""

    def now(self) -> int:
        return int(self.clock())

    @classmethod
    async def open(
        cls, settings: NodeSettings, jail: JailClient, *, clock: Callable[[], float] = time.time,
    ) -> NodeServices:
        """Open the log, read models and services over a running jail."""
        directory_key = settings.directory_sign_key
        keys = await jail.public_keys()
        events = node_registry()
        report, projections, methods = load_modules(
            settings.modules, events=events, projections=node_projections(),
            methods=MethodRegistry(),
        )
        store = await SQLiteEventStore.open(
            settings.data_dir, await JailSigner.create(jail), registry=events,
            projections=projections, kind="node",
        )
        reads = ReadModels.open(settings.data_dir / DATABASE_NAME)
        book = NodeBook(reads)
        keeper = SessionKeeper(store, jail, book,
                               NodeSessionLedger(settings.data_dir / SESSION_LEDGER))
        async def sign_base(base: bytes) -> bytes:
            return bytes(await jail.sign("http_signature_base", base))

        http = HttpClient(signer=Signer(str(keys.node_id), sign_base),
                          allow_private=settings.allow_private_urls, clock=clock)

        async def fetch(from_size: int, to_size: int) -> tuple[bytes, list[bytes]]:
            url = f"{settings.directory_url}{CHECKPOINT_PATH}?from={from_size}&to={to_size}"
            try:
                reply = await http.request("GET", url, attempts=PROOF_FETCH_ATTEMPTS,
                                           budget=PROOF_FETCH_BUDGET)
            except PeerUnreachable as exc:
                cause = str(exc).partition(" attempts: ")[2] or str(exc)
                raise _proof_unavailable(cause) from None
            if reply.status >= 500:
                raise _proof_unavailable(f"it answered {reply.status}")
            if not reply.ok:
                raise _refusal_from(reply, "the directory")
            return _checkpoint_answer(reply.json())

        peer_urls = PeerUrls(store.path)
        own_record = OwnRecord(settings.data_dir / RECORD_FILE)
        services = cls(
            settings=settings, jail=jail, keys=keys, store=store, reads=reads, book=book,
            keeper=keeper,
            handshakes=Handshakes(store=store, jail=jail, book=book, keeper=keeper,
                                  lifetime=settings.session_lifetime),
            tokens=TokenReceiver(me=keys.node_id, directory_key=directory_key, store=store,
                                 jail=jail, book=book,
                                 checks=TransparencyChecks(directory_key, fetch),
                                 own_record=own_record.hash, peer_changing=peer_urls.changing),
            messaging=Messaging(store, jail, reads, budget=PeerBudget(
                messages=settings.peer_messages_per_hour,
                text_bytes=settings.peer_message_bytes_per_hour, window=3600.0)),
            actions=P2PActions(), http=http,
            modules=report, methods=methods, own_record=own_record, clock=clock,
            peer_urls=peer_urls,
            reserve=DiskReserve(free_bytes(settings.data_dir), settings.disk_reserve),
        )
        return services

    async def current_record(self) -> SignedNodeRecord:
        """This node's signed record as it is now: the stored one, or a new version when the
        node's URL, keys or modules changed (:class:`~openred.node.own_record.OwnRecord`).
        From then on a delivery is accepted only for a grant naming it."""
        return await self.own_record.current(
            keys=self.keys, api_url=self.settings.base_url,
            modules=tuple(sorted(self.modules.loaded)), now=self.now(), sign=self.jail.sign)

    async def close(self) -> None:
        if self.peer_urls is not None:
            self.peer_urls.close()
        for batcher in list(self.batchers.values()):
            await batcher.close()
        self.messaging.close()
        await self.http.close()
        await self.reads.close()
        await self.store.close()

    def extensions(self) -> dict[str, Any]:
        """What modules find in ``app.extensions`` when they register their routes."""
        from openred.node.p2p import P2P_ACTIONS

        return {P2P_ACTIONS: self.actions, MESSAGING_SERVICE: self.messaging}

    # -- inbound --

    async def handle(self, route: Route, body: object) -> Envelope:
        reserve = self.reserve
        return await dispatch(route, body, actions=self.actions, keeper=self.keeper,
                              store=self.store, now=self.now(),
                              room=None if reserve is None else reserve.check)

    async def handle_batch(self, body: object, render: Render) -> list[dict[str, Any]]:
        """Each call of a ``POST /api/v3/p2p/batch`` through :meth:`handle` (:mod:`.batch`)."""
        return await handle_batch(body, self.handle, render, self.actions.check_batchable)

    # -- node-to-node calls --

    async def _handshake_over_http(
        self, api_url: str, grant_id: str, message: bytes, renews: Envelope | None
    ) -> HandshakeAnswer:
        body: dict[str, Any] = {"grant_id": grant_id, "message": b64url(message)}
        if renews is not None:
            body["renews"] = renews.to_json()
        reply = await self.http.request(
            "POST", api_url.rstrip("/") + HANDSHAKE_PATH, json_body=body, attempts=1,
        )
        if not reply.ok:
            raise _refusal_from(reply, "the peer's handshake")
        body = reply.json()
        session_id, answer = (body.get("session_id"), body.get("message")) if isinstance(
            body, dict) else (None, None)
        if not isinstance(session_id, str) or not isinstance(answer, str):
            raise NodeRefused(502, "peer-handshake-failed", "the peer's answer is malformed")
        try:
            return HandshakeAnswer(session_id, from_b64url(answer))
        except ValueError:
            raise NodeRefused(502, "peer-handshake-failed",
                              "the peer's answer is malformed") from None

    async def connect(self, grant_id: str) -> SessionChannel:
        """Open a session with the grant's responder over HTTP (the initiator's side)."""
        return await self.handshakes.connect(grant_id, self._handshake_over_http, self.now())

    def _p2p_transport(self, api_url: str) -> Callable[[Route, Envelope], Any]:
        base = f"{api_url.rstrip('/')}/api/v3/p2p/"

        async def send(route: Route, envelope: Envelope) -> Envelope:
            return await post_envelope(
                self.http, f"{base}{route}", envelope,
                refuse=lambda reply: _refusal_from(reply, f"the peer's {route}"))

        return send

    def _batcher(self, api_url: str) -> CallBatcher:
        """The peer's :class:`CallBatcher` (one per API URL, kept while the node runs)."""
        base = api_url.rstrip("/")
        batcher = self.batchers.get(base)
        if batcher is None:
            if len(self.batchers) >= MAX_BATCHERS:
                self._drop_idle_batchers()
            url = base + BATCH_PATH

            async def many(calls: Sequence[tuple[Route, Envelope]]) -> list[Envelope | Exception]:
                return await post_batch(
                    self.http, url, calls,
                    refuse=lambda route, reply: _refusal_from(reply, f"the peer's {route}"))

            batcher = self.batchers[base] = CallBatcher(
                self._p2p_transport(api_url), many, in_flight=BATCH_IN_FLIGHT)
        return batcher

    def _drop_idle_batchers(self) -> None:
        for base, batcher in list(self.batchers.items()):
            if batcher.idle:
                del self.batchers[base]

    async def send_message(self, session_id: str, text: str) -> Receipt:
        """Send ``text`` on an established session; the peer's delivery receipt."""
        channel = await self.keeper.channel(session_id, self.now())
        if self.peer_urls is None:  # not opened by open(): nobody would say when URLs change
            self.peer_urls = PeerUrls(self.store.path, ttl=0.0)
        api_url = self.peer_urls.api_url(channel.peer)
        if api_url is None:
            raise NodeRefused(404, "unknown-peer", "no verified record of the session's peer")
        batcher = self._batcher(api_url)
        return await self.messaging.send(
            channel, text, message_id=secrets.token_bytes(16), now=self.now(),
            transport=batcher.call, rotate=self.keeper.rotate,
            transport_after=lambda route, envelope, after: batcher.call(
                route, envelope, after=after),
        )

    async def request_grant(self, peer: str) -> str:
        """Ask the directory for a grant to ``peer`` (it pushes both halves before answering)."""
        url = self.settings.directory_url
        since, forks = self.store.head.size, self.tokens.forks_refused
        try:
            reply = await self.http.request(
                "POST", f"{url}{REQUEST_CONNECTION_PATH}",
                json_body={"target": peer}, signed=True, replayable=False,
                timeout=GRANT_TIMEOUT,
            )
        except PeerUnreachable as exc:
            # The operator's ``connect`` (and a renewal) said only "POST <url> failed after 3
            # attempts: ClientConnectorError ...": not that it was the directory, nor that the
            # sessions already made do not need it.
            raise directory_unreachable(url, exc) from None
        if reply.status != 201:
            refusal = _refusal_from(reply, "the directory")
            # A fork refused meanwhile: logged as evidence, or not (a pair already kept, or
            # MAX_FORK_EVIDENCE kept), so counted too.
            if self.tokens.forks_refused != forks or await self._fork_logged_since(since):
                raise NodeRefused(502, DIRECTORY_FORK, DIRECTORY_FORK_DETAIL) from None
            raise refusal
        body = reply.json()
        grant_id = body.get("grant_id") if isinstance(body, dict) else None
        if not isinstance(grant_id, str):
            raise NodeRefused(502, "directory-malformed", "the directory's answer has no grant")
        return grant_id

    async def _fork_logged_since(self, size: int) -> bool:
        """Whether this node logged ``DirectoryForkDetected`` after log entry ``size``."""
        return any(e.type == DIRECTORY_FORK_DETECTED
                   for e in await self.store.read(size + 1))

    # -- lifecycle --

    async def renew(self) -> list[tuple[str, str]]:
        """Renew the sessions this node initiated whose renewal is due (80 % of life).

        A new grant from the directory, a new handshake, and ``SessionRenewed`` for the old
        session; the pairs (old, new). A renewal that fails is logged and tried on the next run.
        A peer refusing to renew the session (``invalid-renewal``: it closed it on a renewal
        whose answer was lost) gets a plain new session on the same grant instead, and this
        node closes the old one.
        """
        renewed: list[tuple[str, str]] = []
        rows = [r for r in await self.book.sessions(state="active") if r.role == "initiator"]
        active = {r.session_id for r in rows}
        for gone in [s for s in self.renewal_failures if s not in active]:
            del self.renewal_failures[gone]  # closed another way
        for row in self.keeper.due_for_renewal(rows, self.now()):
            try:
                grant_id = await self.request_grant(row.peer)
                try:
                    channel = await self.handshakes.connect(
                        grant_id, self._handshake_over_http, self.now(), renews=row.session_id)
                except NodeRefused as exc:
                    if exc.reason != INVALID_RENEWAL.reason:
                        raise
                    # The peer no longer holds the session open: it answered an earlier
                    # renewal whose answer never reached us (lost, or dropped on the path),
                    # or its clock differs. The grant is unused on both sides (refused before
                    # any cryptography): a plain new session on it replaces ours.
                    channel = await self.handshakes.connect(
                        grant_id, self._handshake_over_http, self.now(), renews=row.session_id,
                        prove=False)
            except OpenRedError as exc:
                self._renewal_failed(row, exc)
                continue
            if self.renewal_failures.pop(row.session_id, None) is not None:
                logger.info("renewed session %s with %s as %s after failed tries",
                            row.session_id, row.peer, channel.session_id)
            renewed.append((row.session_id, channel.session_id))
        return renewed

    async def no_session(self, peer: str) -> NodeRefused:
        """The refusal of a send to ``peer`` with no active session: what became of the last."""
        rows = [r for r in await self.book.sessions() if r.peer == peer]
        if not rows:
            return NodeRefused(404, "no-session", f"no active session with {peer}: connect first")
        last = max(rows, key=lambda r: r.established_at)
        said = f"no active session with {peer}: the last one ({last.session_id}) "
        if last.state == "expired":
            said += f"expired at {_utc(last.expires_at)}"
            known = self.unrenewed.get(peer)
            if known is not None and known[0] == last.session_id:
                said += f", not renewed: {known[1].detail}"
        else:
            said += f"is {last.state}"
        return NodeRefused(404, "no-session", said + "; connect first")

    def _renewal_failed(self, row: SessionRow, exc: OpenRedError) -> None:
        """Log a failed renewal once per session and kind of failure (not every run).

        Every lifecycle run (30 s) tried again and logged again: with the directory down,
        hundreds of lines per session over the last fifth of its life, then nothing when it
        expired. The failure is kept to say why at the expiry (:meth:`lifecycle`).
        """
        kind = exc.reason if isinstance(exc, NodeRefused) else type(exc).__name__
        before = self.renewal_failures.get(row.session_id)
        if before is None or before.kind != kind:
            logger.warning("renewing session %s with %s failed: %s; it keeps working until it "
                           "expires at %s, retrying at every lifecycle run", row.session_id,
                           row.peer, exc, _utc(row.expires_at))
        self.renewal_failures[row.session_id] = RenewalFailure(row.peer, kind, str(exc))

    async def lifecycle(self) -> dict[str, int]:
        """Renew sessions due, rotate send keys due, expire unused tokens and sessions; counts."""
        renewed = await self.renew()
        now = self.now()
        rotated = await self.keeper.rotate_due(now, self.settings.epoch_interval)
        tokens = await self.tokens.expire(now)
        sessions = await self.keeper.expire(now)
        for session_id in sessions:
            failure = self.renewal_failures.pop(session_id, None)
            if failure is not None:
                self.unrenewed[failure.peer] = (session_id, failure)
                logger.warning("session %s with %s expired, not renewed: %s; `openred connect` "
                               "makes a new one once that is fixed", session_id, failure.peer,
                               failure.detail)
        return {"renewed": len(renewed), "rotated": len(rotated), "tokens": tokens,
                "sessions": len(sessions)}

    def health_probes(self) -> dict[str, Probe]:
        """What ``GET /api/v3/health`` checks: database writable, jail and directory answering."""
        probes = {
            "database": database_writable(self.settings.data_dir / DATABASE_NAME),
            "jail": jail_answering(self.jail),
        }
        if self.settings.directory_url:
            probes["directory"] = url_answers(
                self.http, f"{self.settings.directory_url}{HEALTH_PATH}")
        return probes

    async def check_health(self) -> list[Check]:
        """The checks of ``GET /api/v3/health``, run once for all who ask at the same time."""
        return await self.health_checks.run(self.health_probes)

    def public_health(self) -> dict[str, Any]:
        """What ``GET /api/v3/health`` tells anyone: the node's id and modules, nothing of its
        traffic (sessions, tokens and the log's size change with every grant, handshake and
        message: watched from outside they show when and with whom the node talks)."""
        return {
            "status": "ok",
            "node_id": str(self.keys.node_id),
            "modules": {"loaded": sorted(self.modules.loaded),
                        "failed": sorted(self.modules.failed)},
        }

    async def health(self) -> dict[str, Any]:
        """:meth:`public_health` with the active sessions, unused tokens and the log's size
        (the admin API's status)."""
        return {
            **self.public_health(),
            "sessions": {"active": len(await self.book.sessions(state="active"))},
            "tokens": {"unused": await self.book.count_tokens()},
            "log": {"size": self.store.head.size},
        }
