"""The handshake through the jail (DESIGN §6), both sides, around the pure decisions.

Responder (:meth:`Handshakes.respond`, ``POST /api/v3/p2p/handshake``): decide, have the jail
answer Noise message 1, wrap the new session's state, append ``TokenConsumed`` +
``SessionEstablished``. Every refusal appends exactly one ``HandshakeRejected{reason}`` and
raises :class:`~openred.errors.NodeRefused` with its status. Handshakes on one grant are
serialized in this process, and ``TokenConsumed`` is appended at the grant stream's version, so
of two racing handshakes (or a replayed message 1) only one can ever win. Renewals of one
session are serialized too (after the grant's lock): of two grants renewing it at once, the
second finds it closed and is refused 422.

Initiator (:meth:`Handshakes.connect`): the same decisions for the initiator's half, Noise
message 1 from the jail, the peer's answer through a :data:`HandshakeTransport` (the HTTP call
in the app; a direct call in tests), message 2 checked by the jail.

Renewal: the initiator proves which session it renews with an envelope sealed on that session
over :func:`~openred.node.handshake.renewal_claim` (this grant, this message 1); the responder
opens it with the old session's channel before anything else, so a ``renews`` swapped on the
path for another session (even one due between the same two nodes) is refused 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from openred.crypto.client import JailClient
from openred.crypto.session import SessionCipher
from openred.errors import (
    ConcurrencyConflict,
    CryptoError,
    HandshakeFailed,
    JailRefused,
    NodeRefused,
)
from openred.node.book import NodeBook
from openred.node.envelope import Envelope, SessionChannel
from openred.node.handshake import (
    DEFAULT_SESSION_LIFETIME,
    RENEW_ROUTE,
    TOKENS_DO_NOT_MATCH,
    decide_established,
    decide_handshake,
    rejected,
    renewal_claim,
    session_id_for,
)
from openred.node.sessions import SessionKeeper, SessionView, renewal_due, wrap_label
from openred.node.tokens import HeldToken, Refusal
from openred.store.sqlite import SQLiteEventStore

__all__ = ["INVALID_RENEWAL", "HandshakeAnswer", "HandshakeTransport", "Handshakes"]

RENEWAL_SKEW = 60
"""Seconds the responder's clock may be behind the initiator's when a renewal arrives."""


@dataclass(frozen=True, slots=True)
class HandshakeAnswer:
    session_id: str
    message: bytes


HandshakeTransport = Callable[[str, str, bytes, Envelope | None], Awaitable[HandshakeAnswer]]
"""(peer api_url, grant_id, Noise message 1, renewal proof) → the peer's answer."""

UNUSABLE_GRANT = Refusal(
    422, "unusable-grant", "this node's jail cannot shake hands on this grant")
"""The jail refused the grant itself (held from before its terms were checked on receipt):
answered and logged like every refusal, not as an outage (JailUnavailable stays a 503)."""

INVALID_RENEWAL = Refusal(
    422, "invalid-renewal", "renews names no session with this peer due for renewal, or its "
    "proof does not name this handshake")


class Handshakes:
    def __init__(
        self, *, store: SQLiteEventStore, jail: JailClient, book: NodeBook,
        keeper: SessionKeeper, lifetime: int = DEFAULT_SESSION_LIFETIME,
    ) -> None:
        self.store = store
        self.jail = jail
        self.book = book
        self.keeper = keeper
        self.lifetime = lifetime
        # One lock per grant, and per session being renewed, while someone holds or awaits it
        # (weak: no unbounded growth).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _refuse(self, grant_id: str, refusal: Refusal, log: bool = True) -> NodeRefused:
        if log:
            await self.store.append_one(rejected(grant_id, refusal))
        return refusal.error()

    async def _peer_box_key(self, token: HeldToken) -> bytes:
        peer = await self.book.peer(str(token.peer))
        if peer is None:  # TokenReceived always comes with the peer's record
            raise NodeRefused(404, "unknown-peer", "no verified record of the grant's peer")
        return peer.box_key.raw

    async def _renewable(self, session_id: str, token: HeldToken, now: int) -> bool:
        # Both sides computed renew_at from their own clocks: allow them RENEWAL_SKEW apart.
        row = await self.book.session(session_id)
        if row is None or row.peer != str(token.peer) or now >= row.expires_at:
            return False
        return renewal_due(SessionView.of(row), min(now + RENEWAL_SKEW, row.expires_at - 1))

    async def _establish(
        self, token: HeldToken, version: int, cipher: SessionCipher, session_id: str,
        now: int, renews: str | None,
    ) -> SessionChannel:
        wrapped = await self.jail.wrap(wrap_label(session_id), cipher.to_state())
        events = decide_established(
            token, grant_version=version, session_id=session_id, wrapped_state=wrapped,
            now=now, lifetime=self.lifetime, renews=renews,
        )
        await self.store.append(events)
        if renews is not None:
            self.keeper.forget(renews)
        channel = SessionChannel(session_id, token.role, str(token.peer), cipher)
        self.keeper.adopt(channel, now + self.lifetime, now)
        return channel

    async def _proves_renewal(
        self, grant_id: str, message: bytes, proof: Envelope, now: int
    ) -> bool:
        try:
            channel = await self.keeper.channel(proof.session_id, now)
            claim = channel.open_request(RENEW_ROUTE, proof)
        except (CryptoError, NodeRefused):
            return False
        return claim == renewal_claim(grant_id, message)

    async def respond(
        self, grant_id: str, message: bytes, now: int, renews: Envelope | None = None, *,
        log_refusal: bool = True,
    ) -> HandshakeAnswer:
        """Answer a peer's Noise message 1 for ``grant_id`` (the responder's side).

        ``renews`` is the proof naming the session the initiator renews with this one: it must
        be sealed on an active session with the same peer whose renewal is due and name this
        grant and message 1; that session is closed (``SessionRenewed``) with the new one
        established. A refusal is logged (``HandshakeRejected``) unless ``log_refusal`` is
        false (the route's budget of logged refusals is spent).
        """
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(self._lock(f"grant:{grant_id}"))
            if renews is not None:  # then the session it renews: a session is renewed once
                await held.enter_async_context(self._lock(f"renews:{renews.session_id}"))
            state = await self.book.token_state(grant_id)
            decision = decide_handshake(state, role="responder", now=now)
            if isinstance(decision, Refusal):
                raise await self._refuse(grant_id, decision, log_refusal)
            token = decision
            renewed = None if renews is None else renews.session_id
            if renews is not None and not (
                await self._renewable(renews.session_id, token, now)
                and await self._proves_renewal(grant_id, message, renews, now)
            ):
                raise await self._refuse(grant_id, INVALID_RENEWAL, log_refusal)
            try:
                responded = await self.jail.noise_respond(
                    suite=token.grant.suite, grant=token.grant.canonical_bytes(),
                    grant_signature=token.grant_signature, sealed_token=token.sealed_token,
                    remote_static=await self._peer_box_key(token), message=message,
                )
            except HandshakeFailed:
                raise await self._refuse(grant_id, TOKENS_DO_NOT_MATCH, log_refusal) from None
            except JailRefused:  # the grant, not the jail: a suite it lacks, a token it can't open
                raise await self._refuse(grant_id, UNUSABLE_GRANT, log_refusal) from None
            keys = responded.keys
            session_id = session_id_for(keys.handshake_hash)
            cipher = self.keeper.new_cipher(token.grant.suite, keys.send_key, keys.recv_key,
                                         session_id)
            try:
                await self._establish(token, state.version, cipher, session_id, now, renewed)
            except ConcurrencyConflict:
                raise await self._refuse(
                    grant_id, Refusal(409, "grant-used", "the grant was used meanwhile"),
                    log_refusal,
                ) from None
        return HandshakeAnswer(session_id, responded.message)

    async def connect(
        self, grant_id: str, transport: HandshakeTransport, now: int, *,
        renews: str | None = None, prove: bool = True,
    ) -> SessionChannel:
        """Open a session with the grant's responder (the initiator's side).

        With ``renews`` (a session of ours with the same peer) the request carries the proof
        that names it and this handshake; the old session is closed with the new one. With
        ``prove`` false no proof is sent: the peer opens a plain new session, and only this
        node closes ``renews`` (the peer refused to renew it: it no longer holds it open).
        """
        state = await self.book.token_state(grant_id)
        decision = decide_handshake(state, role="initiator", now=now)
        if isinstance(decision, Refusal):
            raise decision.error()
        token = decision
        peer = await self.book.peer(str(token.peer))
        if peer is None:
            raise NodeRefused(404, "unknown-peer", "no verified record of the grant's peer")
        old: SessionChannel | None = None
        if renews is not None:
            row = await self.book.session(renews)
            if row is None or row.peer != str(token.peer) or row.state != "active":
                raise INVALID_RENEWAL.error()
            if prove:
                old = await self.keeper.channel(renews, now)
        try:
            initiated = await self.jail.noise_initiate(
                suite=token.grant.suite, grant=token.grant.canonical_bytes(),
                grant_signature=token.grant_signature, sealed_token=token.sealed_token,
                remote_static=peer.box_key.raw,
            )
        except JailRefused:  # the grant, not the jail (as on the responder's side)
            raise UNUSABLE_GRANT.error() from None
        proof = None
        if old is not None and prove:
            proof = old.seal_request(RENEW_ROUTE, renewal_claim(grant_id, initiated.message))
            old.forget(proof.counter)  # no answer comes on the old session
        answer = await transport(peer.api_url, grant_id, initiated.message, proof)
        try:
            keys = await self.jail.noise_finish(initiated.handle, answer.message)
        except HandshakeFailed:
            raise NodeRefused(502, "peer-handshake-failed",
                              "the peer's handshake answer does not verify") from None
        session_id = session_id_for(keys.handshake_hash)
        if answer.session_id != session_id:
            raise NodeRefused(502, "peer-handshake-failed", "the peer named another session id")
        cipher = self.keeper.new_cipher(token.grant.suite, keys.send_key, keys.recv_key,
                                         session_id)
        return await self._establish(token, state.version, cipher, session_id, now, renews)

