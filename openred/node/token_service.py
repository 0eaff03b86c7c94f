"""Receiving grants (DESIGN §5, ``POST /api/v3/tokens/receive``) and expiring them.

:meth:`TokenReceiver.receive` takes the delivery body as plain JSON values and, in order:

1. parses the grant, its signature and the sealed token strictly (400/422);
2. checks the grant's signature under the pinned directory key (401), and that its terms are
   ones a node takes (422): a suite the jail implements, not issued ahead of this node's
   clock by more than a few minutes, living at most a day (:meth:`Grant.terms_problem`);
3. checks this node is a party (403), named by its current signed record (409
   ``outdated-record``, logged), before any costlier work;
4. asks the :class:`DeliveryChecks` port to verify the peer's signed node record and that the
   grant is in the directory's log, consistent with the checkpoint this node holds (422); a
   fork is logged as evidence (``DirectoryForkDetected``: each pair of checkpoints once, at
   most :data:`MAX_FORK_EVIDENCE`) and refused (409). A checkpoint
   that would become the one held is checked again, under a lock, against the newest one a
   delivery of this process decided to hold when that moved meanwhile: two deliveries pushed
   at once are each consistent with the older checkpoint, not necessarily with each other
   (a directory showing two histories). Deliveries that do not overlap pay nothing more;
5. has the jail check that the sealed token opens with this node's key (422);
6. decides (:func:`openred.node.tokens.decide_receive`) and appends ``TokenReceived`` (and
   ``PeerDiscovered`` when the record is new and not older than the one held), idempotent by
   grant id.

The port exists because the transparency checks live in ``openred.crypto.transparency`` and
the node record checks in ``openred.crypto.records`` (the directory's part); their adapter
implements :class:`DeliveryChecks`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from openred.crypto.client import JailClient
from openred.crypto.grants import Grant, check_sealed_token, verify_grant_signature
from openred.crypto.identity import NodeId, SignKey, from_b64url
from openred.crypto.transparency import directory_origin
from openred.errors import (
    ConcurrencyConflict,
    CryptoError,
    DecryptionFailed,
    NodeRefused,
    VerificationError,
)
from openred.node import events as ev
from openred.node.book import NodeBook
from openred.node.tokens import (
    DIRECTORY_STREAM,
    HeldCheckpoint,
    PeerInfo,
    ReceiveToken,
    Refusal,
    decide_expiry,
    decide_receive,
    fork_evidence,
)
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore

__all__ = ["MAX_FORK_EVIDENCE", "DeliveryChecks", "Forked", "TokenReceiver", "Verified"]

logger = logging.getLogger("openred.node")

MAX_FORK_EVIDENCE = 16
"""``DirectoryForkDetected`` events a node keeps at most (one per pair of checkpoints)."""

DELIVERY_KEYS = frozenset({
    "grant", "grant_signature", "sealed_token", "peer_record", "entry", "checkpoint",
    "inclusion_proof",
})


@dataclass(frozen=True, slots=True)
class Verified:
    """The peer's verified record and the checkpoint the grant's inclusion was proven against."""

    peer: PeerInfo
    checkpoint: HeldCheckpoint


@dataclass(frozen=True, slots=True)
class Forked:
    """The delivered checkpoint is inconsistent with the one this node holds."""

    received_checkpoint: str


class DeliveryChecks(Protocol):
    """Verification of a delivery's peer record and log proofs (the transparency adapter)."""

    async def verify(
        self, delivery: Mapping[str, Any], grant: Grant, peer: NodeId,
        held: HeldCheckpoint | None,
    ) -> Verified | Forked:
        """Verified, Forked, or raise VerificationError / CryptoError for anything else."""
        ...


def _bad(status: int, reason: str, detail: str) -> NodeRefused:
    return NodeRefused(status, reason, detail)


def _b64_field(body: Mapping[str, Any], name: str) -> bytes:
    value = body.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError(name)
        return from_b64url(value)
    except ValueError:
        raise _bad(400, "malformed-delivery", f"{name} must be base64url") from None


def _advances(checkpoint: HeldCheckpoint, held: HeldCheckpoint | None) -> bool:
    """Whether ``checkpoint`` would replace ``held`` as the one held (a larger tree)."""
    return held is None or checkpoint.size > held.size


class TokenReceiver:
    """The token manager's service: receive deliveries, expire unused tokens."""

    def __init__(
        self, *, me: NodeId, directory_key: SignKey, store: SQLiteEventStore,
        jail: JailClient, book: NodeBook, checks: DeliveryChecks,
        own_record: Callable[[], bytes | None],
        peer_changing: Callable[[str], None] | None = None,
    ) -> None:
        self.me = me
        self.own_record = own_record
        """The ``record_hash`` of this node's current signed record (None: it has none yet)."""
        self.directory_key = directory_key
        self.origin = directory_origin(directory_key)
        """The pinned directory's log: checkpoints held of another (a directory pinned before,
        replaced under a new key) are not compared with its deliveries."""
        self.store = store
        self.jail = jail
        self.book = book
        self.checks = checks
        self.peer_changing = peer_changing
        """Told a peer's id before and after its ``PeerDiscovered`` is appended (caches)."""
        self._held: HeldCheckpoint | None = None
        """The newest checkpoint a delivery of this process decided to hold (it may not be
        logged yet: deliveries checked meanwhile must be consistent with it too)."""
        self._advancing = asyncio.Lock()
        self.forks_refused = 0
        """Deliveries refused as forks since this process started (logged as evidence or
        not: see :meth:`_keep_fork_evidence`)."""

    async def receive(self, body: object, now: int) -> dict[str, str]:
        """Accept a delivery; ``{grant_id, status}`` with status received or duplicate."""
        if not isinstance(body, Mapping) or set(body) != DELIVERY_KEYS:
            raise _bad(
                400, "malformed-delivery", f"a delivery has exactly {sorted(DELIVERY_KEYS)}"
            )
        # 1. parse
        if not isinstance(body["grant"], Mapping):
            raise _bad(400, "malformed-delivery", "grant must be an object")
        try:
            grant = Grant.from_dict(body["grant"])
        except CryptoError as exc:
            raise _bad(422, "invalid-grant", str(exc)) from None
        signature = _b64_field(body, "grant_signature")
        try:
            sealed = check_sealed_token(_b64_field(body, "sealed_token"))
        except CryptoError as exc:
            raise _bad(422, "invalid-sealed-token", str(exc)) from None
        # 2. the directory signed this grant
        try:
            verify_grant_signature(grant, signature, self.directory_key)
        except VerificationError:
            raise _bad(
                401, "bad-grant-signature", "the grant is not signed by the directory"
            ) from None
        # 2'. the terms it signed are ones a node takes (suite, not from the future, short-lived)
        problem = grant.terms_problem(now)
        if problem is not None:
            raise _bad(422, "invalid-grant", problem)
        # 3. this node is a party
        if not grant.involves(self.me):
            raise _bad(403, "not-a-party", "this node is neither initiator nor responder")
        own = self.own_record()
        if own is None or grant.record_hash_of(self.me) != own:
            raise self._outdated(grant, own)
        peer_id = grant.responder if grant.initiator == self.me else grant.initiator
        # 4. peer record and directory log
        held = await self._held_checkpoint()
        verdict = await self._verify(body, grant, peer_id, held)
        # 5. the token is sealed to this node
        try:
            await self.jail.open_sealed(sealed)
        except DecryptionFailed:
            raise _bad(
                422, "invalid-sealed-token", "the token is not sealed to this node"
            ) from None
        # 4'. a checkpoint that would become the one held is checked against the newest held
        if _advances(verdict.checkpoint, held):
            async with self._advancing:
                newest = self._held
                if newest is not None and newest != held and (
                        held is None or newest.size >= held.size):
                    # Another delivery moved it while this one was checked: two checkpoints
                    # consistent with an older one need not be consistent with each other.
                    held = newest
                    verdict = await self._verify(body, grant, peer_id, held)
                if _advances(verdict.checkpoint, held):
                    self._held = verdict.checkpoint
        # 6. decide and append (once more if a concurrent delivery of the same grant won).
        #    The checkpoint is logged with the token unless a larger one is logged already:
        #    compared with the logged one, not with one held in memory only (a duplicate or
        #    a refused delivery advances that, logs nothing, and is forgotten at a restart;
        #    the grant accepted here must keep its own checkpoint pinned).
        command = ReceiveToken(grant, signature, sealed, verdict.peer, verdict.checkpoint)
        for _attempt in (1, 2):
            known, peer_version = await self._known_peer(verdict.peer)
            decision = decide_receive(
                await self.book.token_state(grant.grant_id), command, me=self.me,
                known_peer=known, held=await self.book.directory_checkpoint(self.origin), now=now,
                peer_stream_version=peer_version,
            )
            if isinstance(decision, Refusal):
                raise decision.error()
            if not decision:
                return {"grant_id": grant.grant_id, "status": "duplicate"}
            try:
                await self._append(decision)
            except ConcurrencyConflict:
                continue
            return {"grant_id": grant.grant_id, "status": "received"}
        raise _bad(409, "grant-conflict", "concurrent deliveries of this grant disagree")

    def _outdated(self, grant: Grant, own: bytes | None) -> NodeRefused:
        """Step 3's refusal of a grant minted for another record of this node.

        Every record this node ever signed is valid under its key, so a directory can name an
        old one (an old URL, a box key rotated away after a leak) in the grant it pushes to
        both parties; a peer holding no newer record of ours takes it. Refusing our half keeps
        any session from being opened on such a grant. An honest directory that minted it
        before our update reached it gets the same answer: the initiator asks again.
        """
        named = grant.record_hash_of(self.me)
        logger.warning(
            "refused grant %s: it names record %s of this node, not the current one (%s)",
            grant.grant_id, named.hex()[:16], own.hex()[:16] if own else "none signed yet",
            extra={"event": "GrantForOutdatedRecord", "grant_id": grant.grant_id})
        return _bad(409, "outdated-record",
                    "the grant names a record of this node that is not its current one")

    async def _held_checkpoint(self) -> HeldCheckpoint | None:
        """The newest checkpoint held: logged, or decided on by a delivery still under way."""
        logged, decided = await self.book.directory_checkpoint(self.origin), self._held
        if decided is None or (logged is not None and logged.size > decided.size):
            return logged
        return decided

    async def _verify(self, body: Mapping[str, Any], grant: Grant, peer_id: NodeId,
                      held: HeldCheckpoint | None) -> Verified:
        """Step 4: the delivery's record and proofs, consistent with ``held``; a fork is
        logged as evidence and refused (409)."""
        try:
            verdict = await self.checks.verify(body, grant, peer_id, held)
        except (VerificationError, CryptoError) as exc:
            # Only a directory reaches this (the grant's signature verified under its pinned
            # key): a delivery of its own that does not verify against its log — one restored
            # from an older copy fails the consistency proof with the checkpoint held — is
            # the operator's business, not only the directory's.
            logger.warning("refused grant %s signed by the directory: its delivery does not "
                           "verify: %s", grant.grant_id, exc,
                           extra={"event": "UnverifiableDelivery", "grant_id": grant.grant_id})
            raise _bad(422, "unverifiable-delivery", str(exc)) from None
        if isinstance(verdict, Forked):
            assert held is not None, "a fork needs a checkpoint held before"
            self.forks_refused += 1
            kept = await self._keep_fork_evidence(grant.grant_id, held,
                                                  verdict.received_checkpoint)
            # The operator hears it from the node itself (the push's 409 reaches only the
            # directory, whose log is the one in question, and it relays what it likes).
            logger.error("the directory's checkpoint for grant %s is inconsistent with the one "
                         "this node holds (size %d): its log was forked or rolled back; grant "
                         "refused, %s", grant.grant_id, held.size, kept)
            raise _bad(409, "directory-fork",
                       "the directory's checkpoint is inconsistent with the one this node holds")
        return verdict

    async def _keep_fork_evidence(self, grant_id: str, held: HeldCheckpoint,
                                  received: str) -> str:
        """Log ``DirectoryForkDetected`` for a pair of checkpoints not kept yet, up to
        :data:`MAX_FORK_EVIDENCE` in all; what was done, for the operator's log line.

        One pair proves the directory showed two histories; a directory pushing the same
        forked delivery again, or signing forks without end, does not grow the log by two
        notes a push (the push is refused all the same).
        """
        state = await self.store.load_stream(DIRECTORY_STREAM)
        for event in state.events:
            if (event.payload.get("held_checkpoint") == held.note
                    and event.payload.get("received_checkpoint") == received):
                return f"both checkpoints already kept as DirectoryForkDetected (seq {event.seq})"
        if len(state.events) >= MAX_FORK_EVIDENCE:
            return (f"{len(state.events)} DirectoryForkDetected already kept: this pair of "
                    "checkpoints is not logged")
        try:
            stored = await self.store.append_one(replace(
                fork_evidence(grant_id, held, received), expected_version=state.version))
        except ConcurrencyConflict:  # another refused push logged one meanwhile
            return ("this pair not logged: a concurrent push logged a DirectoryForkDetected "
                    "meanwhile")
        return f"both checkpoints kept as DirectoryForkDetected (seq {stored.seq})"

    async def _known_peer(self, peer: PeerInfo) -> tuple[PeerInfo | None, int | None]:
        """The record held for ``peer``'s node, with its version when ``peer`` differs from it.

        Nearly every delivery names the record held (nothing to read beyond the peers row);
        only a different one reads the peer's stream: the version of the newest record logged
        and the stream version, which its ``PeerDiscovered`` is then appended at.
        """
        known = await self.book.peer(str(peer.node_id))
        if known is not None and known.same_record(peer):
            return known, None
        state = await self.store.load_stream(ev.node_stream(str(peer.node_id)))
        version = 0
        for event in state.events:
            if event.type == ev.PEER_DISCOVERED:
                logged = event.payload.get("version")
                version = logged if type(logged) is int else 0
        if known is not None:
            known = replace(known, version=version)
        return known, state.version

    async def _append(self, events: list[NewEvent]) -> None:
        """Append; a peer whose record changes is announced before and after, however it ends."""
        changing = [e.payload["node_id"] for e in events if e.type == ev.PEER_DISCOVERED]
        if self.peer_changing is None or not changing:
            await self.store.append(events)
            return
        for node_id in changing:
            self.peer_changing(node_id)
        try:
            await self.store.append(events)
        finally:
            for node_id in changing:
                self.peer_changing(node_id)

    async def expire(self, now: int) -> int:
        """Log ``TokenExpired`` for every unused token past its grant's expiry; how many."""
        expired = 0
        for event in decide_expiry(await self.book.received_tokens(), now):
            try:  # one by one: a token consumed meanwhile conflicts and stays consumed
                await self.store.append_one(event)
            except ConcurrencyConflict:
                continue
            expired += 1
        return expired
