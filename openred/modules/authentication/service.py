"""Peer authentication (issue 10, authentication §1): ask a peer to prove, now, on a session,
that it holds its identity key; answer such questions; let modules require a recent proof.

Challenger side: :meth:`PeerAuthentication.authenticate` sends ``authentication/prove`` with
``{"purpose", "nonce"}`` over the session (encrypted and bound to the request's counter like
every P2P call); the answer is ``{"signature"}``, which :meth:`PeerAuthentication.check`
accepts once (:func:`~openred.modules.authentication.challenge.decide_answer`) and logs as
``PeerAuthenticated`` or ``PeerAuthenticationFailed``.

Responder side: :meth:`PeerAuthentication.answer` (the P2P handler) rebuilds the challenge from
what the session itself says — the challenger is the session's peer, the responder is this
node, the session is the one the request came on — so a peer cannot make this node sign a
question about another session or another node; the jail signs it as kind ``peer_challenge``.
Nothing is logged on the responder: answering changes no state. Each answer costs a signature
in the jail, so each peer has a budget of them (:class:`ProofBudget`, the node's
``OPENRED_PEER_PROOFS_PER_MINUTE``): past it, 429 ``too-many-proofs`` with Retry-After, before
the jail is asked, as messaging refuses a peer's messages past its budget.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import rfc8785

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url, from_b64url
from openred.errors import NodeRefused
from openred.modules.authentication import events as ev
from openred.modules.authentication.challenge import (
    NONCE_BYTES,
    PURPOSE,
    Failure,
    PeerChallenge,
    Pending,
    Proof,
    decide_answer,
)
from openred.node.book import NodeBook
from openred.node.envelope import Envelope, Route, SessionChannel
from openred.node.p2p import Outcome, RequestContext
from openred.node.services import clipped
from openred.node.sessions import SessionKeeper, SessionView, decide_use
from openred.node.settings import PEER_PROOFS_PER_MINUTE
from openred.ratelimit import Allowance
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore

__all__ = ["CHALLENGE_LIFETIME", "PEER_PROOFS_PER_MINUTE", "PROVE", "PeerAuthentication",
           "ProofBudget"]

logger = logging.getLogger("openred.authentication")

PROVE: Final = Route("authentication", "prove")
CHALLENGE_LIFETIME: Final = 30
"""Seconds a challenge waits for its answer."""
MAX_PENDING: Final = 1024
BAD_ANSWER: Final = "bad-answer"
"""The reason logged when the peer's (decrypted) answer is not a JSON object."""
PEER_REFUSED: Final = "peer-refused"
"""The reason logged for a peer's refusal whose slug is not of a slug's shape."""
_SLUG: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_DETAIL_LOGGED: Final = 300
"""Characters of a refusal's detail in the service's log line (a peer chose them)."""

Transport = Callable[[Route, Envelope], Awaitable[Envelope]]


class ProofBudget:
    """How many challenges each peer may have this node answer: ``limit`` per ``window``
    seconds, refilled evenly (an :class:`~openred.ratelimit.Allowance`: two floats a peer)."""

    def __init__(self, limit: int = PEER_PROOFS_PER_MINUTE, window: float = 60.0) -> None:
        self.allowance = Allowance(limit, window)

    def charge(self, peer: str, now: float) -> None:
        """Count one answer for ``peer``, or refuse it (429 with Retry-After)."""
        wait = self.allowance.retry_after(peer, now)
        if wait is not None:
            raise NodeRefused.over_budget("too-many-proofs", (
                f"this node answers at most {self.allowance.limit} challenges from one peer "
                f"per {self.allowance.window:.0f} s"), wait)
        self.allowance.take(peer, now)
Rotate = Callable[[SessionChannel], Awaitable[int]]


def _refuse(detail: str) -> NodeRefused:
    return NodeRefused(422, "invalid-challenge", detail)


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; [[[[…
        raise _refuse(f"the {what} is not JSON") from None
    if not isinstance(obj, dict):
        raise _refuse(f"the {what} is a JSON object")
    return obj


class PeerAuthentication:
    """Challenges this node sent, proofs its peers gave, and the answers it gives."""

    def __init__(
        self, me: str, store: SQLiteEventStore, jail: JailClient, book: NodeBook,
        keeper: SessionKeeper, *, lifetime: int = CHALLENGE_LIFETIME,
        random: Callable[[int], bytes] = secrets.token_bytes,
        budget: ProofBudget | None = None,
    ) -> None:
        self.me = me
        self.store = store
        self.jail = jail
        self.book = book
        self.keeper = keeper
        self.lifetime = lifetime
        self.random = random
        self.budget = budget or ProofBudget()
        """What each peer may have this node answer (its jail's signatures)."""
        self._pending: dict[str, Pending] = {}
        self._proofs: dict[tuple[str, str], Proof] = {}

    # -- challenger --

    def issue(self, session_id: str, peer: str, purpose: str, now: int) -> PeerChallenge:
        """A fresh challenge for ``peer`` on ``session_id``, pending for ``lifetime`` seconds."""
        self._pending = {n: p for n, p in self._pending.items() if p.expires_at > now}
        if len(self._pending) >= MAX_PENDING:
            raise NodeRefused(429, "too-many-challenges", "too many challenges are pending")
        challenge = PeerChallenge.fresh(purpose, self.me, peer, session_id,
                                        self.random(NONCE_BYTES))
        self._pending[challenge.nonce] = Pending(challenge, now + self.lifetime)
        return challenge

    async def check(self, challenge: PeerChallenge, signature: bytes, now: int) -> Proof:
        """Accept ``signature`` as the answer to ``challenge`` (once), or raise NodeRefused.

        Either way the outcome is logged (``PeerAuthenticated`` / ``PeerAuthenticationFailed``).
        """
        pending = self._pending.get(challenge.nonce)
        if pending is not None and pending.challenge != challenge:
            pending = None  # the nonce names another question: never answer one with another
        row = await self.book.session(challenge.session_id)
        usable = row is not None and row.peer == challenge.responder and decide_use(
            SessionView.of(row), now) is None
        peer = await self.book.peer(challenge.responder)
        failure = decide_answer(pending, session_usable=usable,
                                peer_key=None if peer is None else peer.sign_key,
                                signature=signature, now=now)
        if pending is not None:
            del self._pending[challenge.nonce]  # answered once, right or wrong
        if failure is not None:
            await self._failed(challenge, failure)
            raise NodeRefused(failure.status, failure.reason, failure.detail)
        await self.store.append_one(NewEvent(ev.auth_stream(challenge.responder),
                                             ev.PEER_AUTHENTICATED, {
            "peer": challenge.responder, "session_id": challenge.session_id,
            "purpose": challenge.purpose, "nonce": challenge.nonce,
            "signature": b64url(signature),
        }))
        proof = Proof(challenge.responder, challenge.session_id, challenge.purpose, now)
        self._proofs[(proof.peer, proof.purpose)] = proof
        logger.info("peer %s proved its key for %s", proof.peer, proof.purpose,
                    extra={"event": ev.PEER_AUTHENTICATED, "peer": proof.peer,
                           "purpose": proof.purpose, "session_id": proof.session_id})
        return proof

    async def _failed(self, challenge: PeerChallenge, failure: Failure) -> None:
        detail = clipped(failure.detail, _DETAIL_LOGGED)
        await self.store.append_one(NewEvent(ev.auth_stream(challenge.responder),
                                             ev.PEER_AUTHENTICATION_FAILED, {
            "peer": challenge.responder, "session_id": challenge.session_id,
            "purpose": challenge.purpose, "reason": failure.reason,
        }))
        logger.warning("peer %s failed authentication for %s: %s", challenge.responder,
                       challenge.purpose, detail,
                       extra={"event": ev.PEER_AUTHENTICATION_FAILED, "peer":
                              challenge.responder, "reason": failure.reason})

    async def authenticate(
        self, session_id: str, purpose: str, *, transport: Transport, now: Callable[[], int],
        rotate: Rotate | None = None,
    ) -> Proof:
        """Ask the peer of ``session_id`` to prove its key for ``purpose``; the proof."""
        if not PURPOSE.fullmatch(purpose):
            raise _refuse("a purpose is 1-64 characters of [a-z0-9_.:-]")
        channel = await self.keeper.channel(session_id, now())
        challenge = self.issue(session_id, channel.peer, purpose, now())
        request = bytes(rfc8785.dumps({"purpose": purpose, "nonce": challenge.nonce}))
        try:
            plaintext = await self._ask(channel, request, transport, rotate)
        except NodeRefused as exc:
            self._pending.pop(challenge.nonce, None)
            # The peer chose the slug (its problem's type) and the detail: the log keeps a
            # slug of a slug's shape, anything else as peer-refused (it once kept 200 000
            # characters, and the metrics made a series of each new one).
            reason = exc.reason if _SLUG.fullmatch(exc.reason) else PEER_REFUSED
            await self._failed(challenge, Failure(exc.status, reason, exc.detail))
            raise
        try:
            answer = _object(plaintext, "answer")
        except NodeRefused:
            # The peer's fault, not the operator's (it was a 422 invalid-challenge, unlogged).
            self._pending.pop(challenge.nonce, None)
            failure = Failure(502, BAD_ANSWER, "the peer's answer to the challenge is not a "
                                               "JSON object")
            await self._failed(challenge, failure)
            raise NodeRefused(failure.status, failure.reason, failure.detail) from None
        signature = answer.get("signature") if set(answer) == {"signature"} else None
        try:
            raw = from_b64url(signature) if isinstance(signature, str) else b""
        except ValueError:
            raw = b""
        return await self.check(challenge, raw, now())

    @staticmethod
    async def _ask(channel: SessionChannel, request: bytes, transport: Transport,
                   rotate: Rotate | None) -> bytes:
        for attempt in (1, 2):
            envelope = channel.seal_request(PROVE, request)
            try:
                answer = await transport(PROVE, envelope)
                return channel.open_answer(PROVE, envelope.counter, answer)
            except NodeRefused as exc:
                # A restarted peer refuses old counters: move to a fresh epoch once (as messaging).
                if attempt == 1 and rotate is not None and exc.reason == "replayed-message":
                    await rotate(channel)
                    continue
                raise
            finally:
                channel.forget(envelope.counter)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- what other modules use --

    def recent_proof(self, peer: str, purpose: str, now: int, max_age: int) -> Proof | None:
        """The peer's proof for ``purpose`` if it is at most ``max_age`` seconds old."""
        proof = self._proofs.get((peer, purpose))
        if proof is None or now - proof.at > max_age:
            return None
        return proof

    def require_recent(self, peer: str, purpose: str, now: int, max_age: int) -> Proof:
        """The recent proof, or 403 ``authentication-required`` (ask the peer first)."""
        proof = self.recent_proof(peer, purpose, now, max_age)
        if proof is None:
            raise NodeRefused(403, "authentication-required",
                              f"peer {peer} has not proved its key for {purpose} in the last "
                              f"{max_age} s")
        return proof

    # -- responder (the P2P handler of authentication/prove) --

    async def answer(self, ctx: RequestContext, plaintext: bytes) -> Outcome:
        obj = _object(plaintext, "challenge")
        if set(obj) != {"purpose", "nonce"}:
            raise _refuse("a challenge has exactly purpose and nonce")
        purpose, nonce = obj["purpose"], obj["nonce"]
        if not isinstance(purpose, str) or not PURPOSE.fullmatch(purpose):
            raise _refuse("a purpose is 1-64 characters of [a-z0-9_.:-]")
        try:
            raw = from_b64url(nonce) if isinstance(nonce, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != NONCE_BYTES:
            raise _refuse(f"the nonce is {NONCE_BYTES} bytes base64url")
        challenge = PeerChallenge.fresh(purpose, ctx.peer, self.me, ctx.session_id, raw)
        self.budget.charge(ctx.peer, ctx.now)  # a well-formed challenge costs; no await before
        signature = await self.jail.sign("peer_challenge", challenge.signable())
        return Outcome(bytes(rfc8785.dumps({"signature": b64url(bytes(signature))})))
