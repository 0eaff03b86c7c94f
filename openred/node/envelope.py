"""The encrypted P2P envelope (DESIGN §6): ``{session_id, counter, ciphertext}`` both ways.

Every call after the handshake is ``POST /api/v3/p2p/<module>/<action>`` with an envelope whose
ciphertext is the AEAD of the request under the sender's session key, the explicit 64-bit
counter as nonce (:class:`~openred.crypto.session.SessionCipher`). The associated data binds

* a domain label and whether this is a request or an answer,
* the 16-byte session id,
* the direction (initiator → responder, or back),
* the route ``<module>/<action>``,
* for an answer, the counter of the request it answers,

so a message moved to another session, direction, route or request fails to authenticate.
An answer is accepted only for a request this channel sent and has not had answered yet: the
pending set is in memory, so after a restart no old answer is ever accepted twice.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from openred.crypto.identity import b64url, from_b64url
from openred.crypto.session import MAX_COUNTER, SessionCipher
from openred.errors import CryptoError, DecryptionFailed, NodeRefused

__all__ = [
    "MAX_CIPHERTEXT",
    "AnswerRejected",
    "Direction",
    "Envelope",
    "Route",
    "SessionChannel",
    "answer_ad",
    "request_ad",
]

MAX_CIPHERTEXT: Final = 256 * 1024
"""Largest ciphertext an envelope may carry (256 KiB); larger ones are refused with 413."""
SESSION_ID_LEN: Final = 16
_AD_LABEL: Final = b"openred/v3 p2p\x00"
_REQUEST: Final = b"\x01"
_ANSWER: Final = b"\x02"
_COUNTER: Final = struct.Struct(">Q")
_MAX_CACHED_ROUTES: Final = 64
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{22}")


class Direction(IntEnum):
    """Which way a message travels, from the session's roles."""

    INITIATOR_TO_RESPONDER = 1
    RESPONDER_TO_INITIATOR = 2


@dataclass(frozen=True, slots=True)
class Route:
    """``<module>/<action>``, both lowercase identifiers."""

    module: str
    action: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.module) or not _NAME.fullmatch(self.action):
            raise NodeRefused(404, "unknown-route", "module and action are lowercase names")

    def __str__(self) -> str:
        return f"{self.module}/{self.action}"


def _route_bytes(route: Route) -> bytes:
    raw = str(route).encode("ascii")
    return struct.pack(">H", len(raw)) + raw


def request_ad(session_id: bytes, direction: Direction, route: Route) -> bytes:
    """Associated data of a request."""
    return b"".join((_AD_LABEL, _REQUEST, session_id, bytes((direction,)), _route_bytes(route)))


def answer_ad(session_id: bytes, direction: Direction, route: Route, request_counter: int) -> bytes:
    """Associated data of an answer: the request's AD fields plus the request's counter."""
    return _answer_prefix(session_id, direction, route) + _COUNTER.pack(request_counter)


def _answer_prefix(session_id: bytes, direction: Direction, route: Route) -> bytes:
    return b"".join((_AD_LABEL, _ANSWER, session_id, bytes((direction,)), _route_bytes(route)))


def _malformed(detail: str) -> NodeRefused:
    return NodeRefused(400, "malformed-envelope", detail)


class AnswerRejected(NodeRefused, DecryptionFailed):
    """The peer's answer does not open (another session's, or refused by the AEAD or the
    replay window): the peer's failure, 502 ``bad-answer`` to whoever asked us. Still a
    :class:`~openred.errors.DecryptionFailed` for callers that check the AEAD's verdict."""

    def __init__(self, detail: str) -> None:
        NodeRefused.__init__(self, 502, "bad-answer", detail)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One encrypted message on the wire."""

    session_id: str
    counter: int
    ciphertext: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "counter": self.counter,
            "ciphertext": b64url(self.ciphertext),
        }

    def to_json_bytes(self, *, sort_keys: bool = False) -> bytes:
        """``to_json()`` as compact JSON (``json.dumps(..., separators=(",", ":"))``, UTF-8).

        Built directly: a session id of the wire format, an integer and base64url need no
        escaping, so these are the encoder's bytes (tested) at a fraction of its cost, with
        or without ``ensure_ascii``. Any other session id goes through the encoder
        (``ensure_ascii=False``). ``sort_keys`` as the encoder's: the keys in sorted order.
        """
        if not self.plain:
            return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False,
                              sort_keys=sort_keys).encode("utf-8")
        ciphertext = base64.urlsafe_b64encode(self.ciphertext).rstrip(b"=")
        if sort_keys:
            return b'{"ciphertext":"%s","counter":%d,"session_id":"%s"}' % (
                ciphertext, self.counter, self.session_id.encode("ascii"))
        return b'{"session_id":"%s","counter":%d,"ciphertext":"%s"}' % (
            self.session_id.encode("ascii"), self.counter, ciphertext)

    @property
    def plain(self) -> bool:
        """Whether the JSON of this envelope is pure ASCII needing no escapes.

        True for a session id of the wire format (base64url) and an integer counter.
        """
        return type(self.counter) is int and _SESSION_ID.fullmatch(self.session_id) is not None

    @classmethod
    def from_json(cls, obj: object) -> Envelope:
        """Parse a received envelope strictly: exact keys, an integer counter, sizes bounded."""
        if not isinstance(obj, Mapping):
            raise _malformed("the envelope is a JSON object")
        if set(obj) != {"session_id", "counter", "ciphertext"}:
            raise _malformed("the envelope has exactly session_id, counter and ciphertext")
        session_id, counter, ciphertext = obj["session_id"], obj["counter"], obj["ciphertext"]
        if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
            raise _malformed("session_id is 16 bytes base64url")
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise _malformed("counter is an integer")
        if not 0 <= counter < MAX_COUNTER:
            raise _malformed("counter is out of range")
        if not isinstance(ciphertext, str):
            raise _malformed("ciphertext is base64url")
        if len(ciphertext) > (MAX_CIPHERTEXT * 4 + 2) // 3:
            raise NodeRefused(
                413, "envelope-too-large", f"ciphertext exceeds {MAX_CIPHERTEXT} bytes"
            )
        try:
            raw = from_b64url(ciphertext)
        except ValueError:
            raise _malformed("ciphertext is base64url") from None
        return cls(session_id, counter, raw)


class SessionChannel:
    """One end of an established session: seal and open requests and answers.

    ``role`` is this node's role in the handshake (``initiator`` or ``responder``); it fixes
    which direction this end sends in.
    """

    __slots__ = ("__weakref__", "_ads", "_pending", "cipher", "peer", "role", "session_id",
                 "session_id_raw")

    def __init__(self, session_id: str, role: str, peer: str, cipher: SessionCipher) -> None:
        if role not in ("initiator", "responder"):
            raise ValueError("role is initiator or responder")
        self.session_id = session_id
        self.session_id_raw = from_b64url(session_id)
        if len(self.session_id_raw) != SESSION_ID_LEN:
            raise ValueError("a session id is 16 bytes")
        self.role = role
        self.peer = peer
        self.cipher = cipher
        self._pending: dict[int, Route] = {}
        # Per route: the request ADs sent and received and the answer ADs' prefixes (all but
        # the request counter), which are the same for every message of the route.
        self._ads: dict[Route, tuple[bytes, bytes, bytes, bytes]] = {}

    @property
    def sending(self) -> Direction:
        if self.role == "initiator":
            return Direction.INITIATOR_TO_RESPONDER
        return Direction.RESPONDER_TO_INITIATOR

    @property
    def receiving(self) -> Direction:
        if self.role == "initiator":
            return Direction.RESPONDER_TO_INITIATOR
        return Direction.INITIATOR_TO_RESPONDER

    def _ad(self, route: Route) -> tuple[bytes, bytes, bytes, bytes]:
        """(request AD sent, request AD received, answer AD prefix sent, … received)."""
        ads = self._ads.get(route)
        if ads is None:
            if len(self._ads) >= _MAX_CACHED_ROUTES:
                self._ads.clear()
            sid, out, back = self.session_id_raw, self.sending, self.receiving
            ads = self._ads[route] = (
                request_ad(sid, out, route), request_ad(sid, back, route),
                _answer_prefix(sid, out, route), _answer_prefix(sid, back, route),
            )
        return ads

    def _own(self, envelope: Envelope) -> None:
        if envelope.session_id != self.session_id:
            raise NodeRefused(404, "unknown-session", "the envelope names another session")

    def seal_request(self, route: Route, plaintext: bytes) -> Envelope:
        """Encrypt a request; its counter is remembered until the answer arrives."""
        counter, ciphertext = self.cipher.encrypt(plaintext, ad=self._ad(route)[0])
        self._pending[counter] = route
        return Envelope(self.session_id, counter, ciphertext)

    def open_request(self, route: Route, envelope: Envelope) -> bytes:
        """Decrypt a received request (each counter at most once)."""
        self._own(envelope)
        return self.cipher.decrypt(envelope.counter, envelope.ciphertext, ad=self._ad(route)[1])

    def seal_answer(self, route: Route, request_counter: int, plaintext: bytes) -> Envelope:
        """Encrypt the answer to the request that came with ``request_counter``."""
        counter, ciphertext = self.cipher.encrypt(
            plaintext, ad=self._ad(route)[2] + _COUNTER.pack(request_counter))
        return Envelope(self.session_id, counter, ciphertext)

    def _own_answer(self, envelope: Envelope) -> None:
        if envelope.session_id != self.session_id:
            raise AnswerRejected("the peer's answer names another session")

    def open_answer(self, route: Route, request_counter: int, envelope: Envelope) -> bytes:
        """Decrypt the answer to our request ``request_counter`` (accepted once, then forgotten).

        An answer that does not open is :class:`AnswerRejected` (502, the peer's failure)."""
        self._own_answer(envelope)
        if self._pending.get(request_counter) != route:
            raise NodeRefused(409, "unexpected-answer", "no request of ours awaits this answer")
        try:
            plaintext = self.cipher.decrypt(
                envelope.counter, envelope.ciphertext,
                ad=self._ad(route)[3] + _COUNTER.pack(request_counter))
        except CryptoError as exc:
            raise AnswerRejected(f"the peer's answer does not open: {exc}") from exc
        del self._pending[request_counter]
        return plaintext

    def open_answer_into(self, route: Route, request_counter: int, envelope: Envelope,
                         into: bytearray) -> bytes | memoryview:
        """:meth:`open_answer`, decrypting into ``into`` (:meth:`SessionCipher.decrypt_into`).

        Same checks, refusals and marks; the plaintext is a memoryview of ``into``, valid until
        ``into`` is used again (a new bytes object in the cases ``decrypt_into`` lists).
        """
        self._own_answer(envelope)
        if self._pending.get(request_counter) != route:
            raise NodeRefused(409, "unexpected-answer", "no request of ours awaits this answer")
        try:
            plaintext = self.cipher.decrypt_into(
                envelope.counter, envelope.ciphertext, into,
                ad=self._ad(route)[3] + _COUNTER.pack(request_counter))
        except CryptoError as exc:
            raise AnswerRejected(f"the peer's answer does not open: {exc}") from exc
        del self._pending[request_counter]
        return plaintext

    def forget(self, request_counter: int) -> None:
        """Stop waiting for an answer (the request failed or timed out)."""
        self._pending.pop(request_counter, None)

    @property
    def pending(self) -> int:
        return len(self._pending)
