"""The jail's whitelisted operations: pure functions over a :class:`JailState`, no sockets.

Each operation takes the request's ``args`` object and returns the ``result`` object, or raises
:class:`~crypto_jail.errors.OpRefused` with a stable code. No result ever carries a private key,
a token or any other secret except the session keys a finished handshake produces (which the
node needs for its transport and stores only wrapped by this jail).

Operations (DESIGN §7): ``public_keys``, ``sign``, ``sign_batch``, ``sign_many`` (``sign`` for
several items in one call), ``sign_checkpoint``, ``witnessed``,
``open_sealed``, ``noise_initiate``, ``noise_respond``, ``noise_finish``, ``wrap``, ``unwrap``.
Tokens stay sealed outside the jail: ``open_sealed`` only says whether a sealed token opens,
and the Noise operations take the sealed token and open it internally (stateless). A grant
signed through ``sign_many`` with ``seal_to`` (the directory's) also gets its two tokens minted
here from a fresh secret and answered only sealed, each to its node's X25519 key.

The jail keeps time itself (its own wall clock, never one a caller sends): it signs an HTTP
signature base only if its ``created`` is within :attr:`TimePolicy.http_window` of that clock,
a grant only if its ``issued_at`` is within :attr:`TimePolicy.grant_skew` of it and its lifetime
``expires_at - issued_at`` is at most :attr:`TimePolicy.grant_max_lifetime`, and a checkpoint
only for its own log's origin ``openred/<node id>`` (plus origins the operator names with
``--checkpoint-origin``: a log keeps its first key's origin after a key rotation). A
compromised node therefore cannot have the jail pre-sign requests or grants for later use,
nor sign another log's checkpoints. With a witness file (``--witness-file``), every
checkpoint it signs must extend the last one it signed for that origin (a consistency proof),
so a forked, rewritten or rolled-back log never gets a checkpoint again (crypto_jail/witness.py).
A checkpoint signed by ``sign_checkpoint`` is synced to the witness file before its signature
is returned; one signed as an item of ``sign``/``sign_many`` (the directory's per-grant
checkpoints, many a second) is written to it but synced later (docs/decisions.md).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions

from crypto_jail import structures, tokens
from crypto_jail.errors import (
    BAD_REQUEST,
    DECRYPT_FAILED,
    HANDSHAKE_FAILED,
    REFUSED,
    UNKNOWN_HANDLE,
    UNKNOWN_OP,
    OpRefused,
)
from crypto_jail.keystore import Keystore
from crypto_jail.noise import SUITES, HandshakeState, NoiseError, X25519KeyPair
from crypto_jail.protocol import MAX_BATCH, MAX_SIGN_MANY, b64d, b64e
from crypto_jail.witness import MAX_PROOF, Witness

__all__ = ["OPS", "JailState", "TimePolicy", "dispatch"]

PATTERN = "KKpsk0"
PROLOGUE_PREFIX = b"openred/v3"  # DESIGN §6: prologue = "openred/v3" ‖ grant ‖ grant signature
WRAP_AD_PREFIX = b"openred/v3 wrap\x00"
WRAP_VERSION = b"\x01"
_NONCE_LEN = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_TAG_LEN = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
SIGNATURE_LEN = 64
_BOX_KEY_LEN = nacl.bindings.crypto_box_PUBLICKEYBYTES
MAX_LABEL = 256
SPLIT_THRESHOLD = 64
"""A sign_batch this large is split over two threads (libsodium runs without the GIL)."""

_CREATED = re.compile(rb";created=(0|[1-9][0-9]{0,15});")


@dataclass(frozen=True, slots=True)
class TimePolicy:
    """The bounds the jail's own clock puts on what it signs (seconds; see the module doc)."""

    http_window: int = 60
    """``created`` of an HTTP signature base may differ from the jail's clock by this much."""
    grant_skew: int = 300
    """``issued_at`` of a grant may differ from the jail's clock by this much."""
    grant_max_lifetime: int = 24 * 3600
    """A grant may live at most this long (``expires_at - issued_at``)."""

    def __post_init__(self) -> None:
        if min(self.http_window, self.grant_skew, self.grant_max_lifetime) <= 0:
            raise ValueError("time bounds must be positive")


_SIGNABLE: dict[str, Callable[[bytes], bool]] = {
    "entry_hash": structures.is_entry_hash,
    "http_signature_base": structures.is_http_signature_base,
    "checkpoint": structures.is_checkpoint_body,
    "grant": structures.is_canonical_grant,
    "node_record": structures.is_node_record,
    "peer_challenge": structures.is_peer_challenge,
}


class _StaticForPeer:
    """The jail's static key as a Noise :class:`~crypto_jail.noise.DH` for one handshake.

    DH(s, rs) — Noise's ``ss`` token — is the same in every handshake with the same peer, so
    its result is remembered (a bounded table inside the jail, next to the private key it is
    derived from); DH with ephemeral keys is always computed.
    """

    __slots__ = ("_remote_static", "_state")

    def __init__(self, state: JailState, remote_static: bytes) -> None:
        self._state = state
        self._remote_static = remote_static

    @property
    def public(self) -> bytes:
        return self._state.static.public

    def dh(self, remote_public: bytes) -> bytes:
        if remote_public != self._remote_static:
            return self._state.static.dh(remote_public)
        return self._state.static_static(remote_public)


@dataclass(slots=True)
class _Pending:
    state: HandshakeState
    expires_at: float


class JailState:
    """The keystore plus the jail's only mutable state: initiated, unfinished handshakes.

    ``clock`` (monotonic seconds), ``wall_clock`` (Unix seconds, what signed times are checked
    against) and ``random_bytes`` are injectable for tests; ``time_policy`` bounds what may be
    signed (:class:`TimePolicy`). Pending
    handshakes live at most ``handshake_ttl`` seconds and at most ``max_handshakes`` of them
    are kept (the oldest is dropped first).
    """

    def __init__(
        self,
        keystore: Keystore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        time_policy: TimePolicy | None = None,
        extra_origins: frozenset[str] = frozenset(),
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        handshake_ttl: float = 60.0,
        max_handshakes: int = 10_000,
        max_peers: int = 4096,
        split_executor: Executor | None = None,
        witness: Witness | None = None,
    ) -> None:
        self.keystore = keystore
        self.witness = witness
        self.public = keystore.public_info()
        self.static = X25519KeyPair.from_private_bytes(bytes(keystore.box_private))
        _, self._sign_sk = nacl.bindings.crypto_sign_seed_keypair(bytes(keystore.signing_key))
        self._clock = clock
        self.wall_clock = wall_clock
        self.time_policy = time_policy if time_policy is not None else TimePolicy()
        self.origin = f"openred/{self.public['node_id']}"
        self.origins = frozenset({self.origin, *extra_origins})
        self.random_bytes = random_bytes
        self._ttl = handshake_ttl
        self._max = max_handshakes
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._ss: OrderedDict[bytes, bytes] = OrderedDict()
        self._max_peers = max_peers
        self.split_executor = split_executor

    def __repr__(self) -> str:
        return f"JailState(node_id={self.public['node_id']}, pending={len(self._pending)})"

    # -- signing --

    def sign_bytes(self, data: bytes) -> bytes:
        """Ed25519 over ``data`` exactly as given (callers check it is a signable structure)."""
        signed: bytes = nacl.bindings.crypto_sign(data, self._sign_sk)
        return signed[:SIGNATURE_LEN]

    def sign_concatenated(self, data: bytes) -> bytes:
        """Sign each 32-byte slice of ``data``; the 64-byte signatures concatenated, in order."""
        sk, sign = self._sign_sk, nacl.bindings.crypto_sign
        return b"".join(sign(data[i : i + 32], sk)[:SIGNATURE_LEN] for i in range(0, len(data), 32))

    def static_static(self, remote_static: bytes) -> bytes:
        """DH(s, rs), remembered for the ``max_peers`` most recent peers."""
        with self._lock:
            shared = self._ss.get(remote_static)
            if shared is not None:
                self._ss.move_to_end(remote_static)
                return shared
        shared = self.static.dh(remote_static)  # NoiseError for a low-order point: not kept
        with self._lock:
            self._ss[remote_static] = shared
            while len(self._ss) > self._max_peers:
                self._ss.popitem(last=False)
        return shared

    def for_peer(self, remote_static: bytes) -> _StaticForPeer:
        """The static key as the DH object of one handshake with ``remote_static``."""
        return _StaticForPeer(self, remote_static)

    # -- pending handshakes --

    def _purge(self, now: float) -> None:
        while self._pending:
            handle, pending = next(iter(self._pending.items()))
            if pending.expires_at > now:
                break
            del self._pending[handle]

    def remember(self, state: HandshakeState) -> str:
        """Keep an initiated handshake; return its fresh random handle."""
        handle = b64e(self.random_bytes(16))
        with self._lock:
            now = self._clock()
            self._purge(now)
            while len(self._pending) >= self._max:
                self._pending.popitem(last=False)
            self._pending[handle] = _Pending(state, now + self._ttl)
        return handle

    def take(self, handle: str) -> HandshakeState:
        """Remove and return a pending handshake (one use); unknown_handle if gone or expired."""
        with self._lock:
            self._purge(self._clock())
            pending = self._pending.pop(handle, None)
        if pending is None:
            raise OpRefused(UNKNOWN_HANDLE, "no pending handshake with this handle")
        return pending.state

    @property
    def pending_count(self) -> int:
        return len(self._pending)


# -- argument helpers --


def _check_keys(args: Mapping[str, Any], required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in args]
    extra = sorted(set(args) - set(required))
    if missing or extra:
        raise OpRefused(BAD_REQUEST, f"arguments wrong: missing {missing}, unexpected {extra}")


def _bytes(args: Mapping[str, Any], name: str, length: int | None = None) -> bytes:
    raw = b64d(args[name], name=name)
    if length is not None and len(raw) != length:
        raise OpRefused(BAD_REQUEST, f"{name} must be {length} bytes")
    return raw


def _str(args: Mapping[str, Any], name: str) -> str:
    value = args[name]
    if not isinstance(value, str):
        raise OpRefused(BAD_REQUEST, f"{name} must be a string")
    return value


# -- operations --


def op_public_keys(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{} → {sign_key, box_key, node_id}."""
    _check_keys(args, ())
    return dict(state.public)


def op_sign(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{kind, data} → {signature}; only the six signable structures, each checked exactly."""
    _check_keys(args, ("kind", "data"))
    kind = _str(args, "kind")
    data = _bytes(args, "data")
    return {"signature": b64e(_sign_checked(state, kind, data))}


def _sign_checked(state: JailState, kind: str, data: bytes,
                  proof: list[bytes] | None = None) -> bytes:
    """The signature over ``data`` if it is a signable structure of ``kind`` in time.

    A checkpoint meets the witness (if any) with ``proof``, written to its file but not synced
    (see the module docstring).
    """
    check = _SIGNABLE.get(kind)
    if check is None:
        raise OpRefused(BAD_REQUEST, f"unknown kind; use one of {sorted(_SIGNABLE)}")
    if not check(data):
        raise OpRefused(REFUSED, f"not a signable structure of kind {kind}")
    _check_in_time(state, kind, data)
    if kind == "checkpoint" and state.witness is not None:
        return state.witness.sign(data, proof, state.sign_bytes, durable=False)
    return state.sign_bytes(data)


def op_sign_many(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{items: [{kind, data[, consistency_proof]}, ...]} → {results: [{signature} |
    {error, detail}, ...]}, in order.

    Exactly ``sign`` for each item — same kinds, same recognizers, same time and origin
    checks — in one round trip (a directory's grant needs three signatures; concurrent grants
    share calls). One to :data:`MAX_SIGN_MANY` items. An item of kind ``checkpoint`` may
    carry the ``consistency_proof`` ``sign_checkpoint`` takes, which a jail with a witness
    needs to sign a larger tree than the last one it signed (the directory's per-grant
    checkpoints travel this way). An item of kind ``grant`` may carry ``seal_to``, the
    initiator's and the responder's X25519 keys: once signed, the jail draws the grant's
    secret, derives token_a and token_b (DESIGN §5) and answers ``{signature, sealed_tokens:
    [token_a sealed to the initiator, token_b sealed to the responder]}`` — the secret and the
    clear tokens never leave the jail. A key nothing can be sealed to (a small-order point)
    is that item's refusal. A malformed request (items not a list, an item not exactly
    ``{kind, data}`` — or with a proof, of another kind or malformed —, a kind that is not a
    string, data that is not base64url) refuses the whole call; an item that ``sign`` would
    refuse gets its own error (code and detail as ``sign`` answers) and the others are still
    signed.
    """
    _check_keys(args, ("items",))
    items = args["items"]
    if not isinstance(items, list) or not items:
        raise OpRefused(BAD_REQUEST, "items must be a non-empty list")
    if len(items) > MAX_SIGN_MANY:
        raise OpRefused(BAD_REQUEST, f"at most {MAX_SIGN_MANY} items per sign_many")
    parsed: list[tuple[str, bytes, list[bytes] | None, tuple[bytes, bytes] | None]] = []
    for item in items:
        if not isinstance(item, dict):
            raise OpRefused(BAD_REQUEST, "each item is an object {kind, data}")
        proven, sealing = "consistency_proof" in item, "seal_to" in item
        extra = ("consistency_proof",) if proven else ("seal_to",) if sealing else ()
        _check_keys(item, ("kind", "data", *extra))
        kind = _str(item, "kind")
        if proven and kind != "checkpoint":
            raise OpRefused(BAD_REQUEST, "only a checkpoint carries a consistency_proof")
        if sealing and kind != "grant":
            raise OpRefused(BAD_REQUEST, "only a grant carries seal_to")
        parsed.append((kind, _bytes(item, "data"), _proof(item) if proven else None,
                       _seal_to(item) if sealing else None))
    results: list[dict[str, Any]] = []
    for kind, data, proof, seal_to in parsed:
        try:
            signature = _sign_checked(state, kind, data, proof)
            result: dict[str, Any] = {"signature": b64e(signature)}
            if seal_to is not None:
                result["sealed_tokens"] = [b64e(t) for t in _mint_sealed(data, seal_to)]
            results.append(result)
        except OpRefused as exc:
            results.append({"error": exc.code, "detail": exc.detail})
    return {"results": results}


def _seal_to(item: Mapping[str, Any]) -> tuple[bytes, bytes]:
    raw = item["seal_to"]
    if not isinstance(raw, list) or len(raw) != 2:
        raise OpRefused(BAD_REQUEST, "seal_to must be [initiator box key, responder box key]")
    keys = [b64d(key, name="seal_to") for key in raw]
    if any(len(key) != _BOX_KEY_LEN for key in keys):
        raise OpRefused(BAD_REQUEST, f"seal_to keys must be {_BOX_KEY_LEN} bytes")
    return keys[0], keys[1]


def _mint_sealed(canonical_grant: bytes, seal_to: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """The grant's two tokens (DESIGN §5) from a fresh secret, each sealed to its node's key.

    ``canonical_grant`` was just signed (so it is a grant this jail vouches for). The secret
    and both tokens exist only here, for this call: what leaves is ``token_a`` sealed to the
    initiator's X25519 key and ``token_b`` sealed to the responder's, so the process that
    pushes them (the directory's web service) never holds a token it could read.
    """
    fields = tokens.check_canonical_grant(canonical_grant)
    grant_id = tokens.decode_grant_id(str(fields["grant_id"]))
    grant_hash = tokens.grant_hash(canonical_grant)
    token_b = tokens.derive_token_b(secrets.token_bytes(tokens.SECRET_LEN), grant_id, grant_hash)
    token_a = tokens.derive_token_a(token_b, grant_id, grant_hash)
    sealed = []
    for token, key in ((token_a, seal_to[0]), (token_b, seal_to[1])):
        try:
            sealed.append(nacl.bindings.crypto_box_seal(token, key))
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
            raise OpRefused(REFUSED, "cannot seal a token to that key") from exc
    return sealed[0], sealed[1]


def _check_in_time(state: JailState, kind: str, data: bytes) -> None:
    """Refuse a recognized structure whose times or origin this jail does not vouch for."""
    policy = state.time_policy
    if kind == "http_signature_base":
        # The last line: a target URI may itself contain ";created=…;".
        found = _CREATED.search(data, data.rfind(b'\n"@signature-params": '))
        if found is None:  # pragma: no cover - the recognizer guarantees the parameter
            raise OpRefused(REFUSED, "signature base without created")
        created = int(found.group(1))
        if abs(created - state.wall_clock()) > policy.http_window:
            raise OpRefused(REFUSED, "created is outside the jail's time window")
    elif kind == "grant":
        fields = tokens.check_canonical_grant(data)
        issued_at, expires_at = fields["issued_at"], fields["expires_at"]
        assert isinstance(issued_at, int) and isinstance(expires_at, int)
        if abs(issued_at - state.wall_clock()) > policy.grant_skew:
            raise OpRefused(REFUSED, "grant issued_at is outside the jail's time window")
        if expires_at - issued_at > policy.grant_max_lifetime:
            raise OpRefused(REFUSED, "grant lifetime exceeds the jail's limit")
    elif kind == "checkpoint":
        _check_origin(state, data)


def _check_origin(state: JailState, body: bytes) -> None:
    origin = body.split(b"\n", 1)[0].decode("utf-8", "replace")
    if origin not in state.origins or not structures.is_checkpoint_body(body, origin=origin):
        raise OpRefused(REFUSED, "checkpoint origin is not this jail's log")


def op_sign_batch(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{kind: "entry_hash", data: N×32 bytes} → {signatures: N×64 bytes}, in order."""
    _check_keys(args, ("kind", "data"))
    if _str(args, "kind") != "entry_hash":
        raise OpRefused(REFUSED, "sign_batch signs entry hashes only")
    data = _bytes(args, "data")
    if not data or len(data) % 32:
        raise OpRefused(REFUSED, "data must be one or more 32-byte entry hashes")
    count = len(data) // 32
    if count > MAX_BATCH:
        raise OpRefused(BAD_REQUEST, f"at most {MAX_BATCH} entry hashes per batch")
    executor = state.split_executor
    if executor is None or count < SPLIT_THRESHOLD:
        return {"signatures": b64e(state.sign_concatenated(data))}
    middle = (count // 2) * 32
    second = executor.submit(state.sign_concatenated, data[middle:])
    first = state.sign_concatenated(data[:middle])
    return {"signatures": b64e(first + second.result())}


def op_sign_checkpoint(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{body, consistency_proof?} → {signature} over a C2SP checkpoint body (same check as
    kind "checkpoint").

    With a witness (``--witness-file``), the body must extend the checkpoint this jail signed
    last for its origin: ``consistency_proof`` (a list of base64url 32-byte hashes) proves
    that tree a prefix of the new one (crypto_jail/witness.py).
    """
    names = ("body", "consistency_proof") if "consistency_proof" in args else ("body",)
    _check_keys(args, names)
    body = _bytes(args, "body")
    if not structures.is_checkpoint_body(body):
        raise OpRefused(REFUSED, "not a signable structure of kind checkpoint")
    _check_origin(state, body)
    if state.witness is None:
        return {"signature": b64e(state.sign_bytes(body))}
    proof = _proof(args) if "consistency_proof" in args else None
    return {"signature": b64e(state.witness.sign(body, proof, state.sign_bytes, durable=True))}


def _proof(args: Mapping[str, Any]) -> list[bytes]:
    raw = args["consistency_proof"]
    if not isinstance(raw, list) or len(raw) > MAX_PROOF:
        raise OpRefused(BAD_REQUEST, f"consistency_proof must be a list of at most "
                                     f"{MAX_PROOF} hashes")
    return [_hash(h) for h in raw]


def _hash(value: object) -> bytes:
    raw = b64d(value, name="consistency_proof")
    if len(raw) != 32:
        raise OpRefused(BAD_REQUEST, "consistency_proof hashes must be 32 bytes")
    return raw


def op_witnessed(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{origin} → {body, signature} of the newest checkpoint this jail signed for ``origin``
    (public data), or {body: null} when it witnessed none (or keeps no witness). A jail with a
    witness also names its file (``file``, as given to ``--witness-file``), so a service whose
    log it refuses can tell the operator which file a restore on purpose moves aside.

    The signature comes only for an origin this jail signs checkpoints of (as
    ``sign_checkpoint``): what the file holds for another is handed out unsigned."""
    _check_keys(args, ("origin",))
    origin = _str(args, "origin")
    witness = state.witness
    if witness is None:
        return {"body": None, "witness": False}
    body = witness.witnessed(origin)
    answer: dict[str, Any] = {"body": None, "witness": True, "file": str(witness.path)}
    if body is not None:
        answer["body"] = b64e(body)
        if origin in state.origins and structures.is_checkpoint_body(body, origin=origin):
            answer["signature"] = b64e(state.sign_bytes(body))
    return answer


def _open_sealed(state: JailState, sealed: bytes) -> bytes:
    keystore = state.keystore
    try:
        clear: bytes = nacl.bindings.crypto_box_seal_open(
            sealed, keystore.box_public, bytes(keystore.box_private)
        )
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
        raise OpRefused(DECRYPT_FAILED, "sealed box does not open with this node's key") from exc
    return clear


def op_open_sealed(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{sealed} → {ok: true, length}: whether a sealed token opens; the token stays inside."""
    _check_keys(args, ("sealed",))
    clear = _open_sealed(state, _bytes(args, "sealed"))
    return {"ok": True, "length": len(clear)}


@dataclass(frozen=True, slots=True)
class _HandshakeInput:
    suite: str
    grant: bytes
    fields: dict[str, object]
    prologue: bytes
    token: bytes
    remote_static: bytes


def _handshake_input(state: JailState, args: Mapping[str, Any], role: str) -> _HandshakeInput:
    suite = _str(args, "suite")
    grant = _bytes(args, "grant")
    try:
        fields = tokens.check_canonical_grant(grant)
    except ValueError as exc:
        raise OpRefused(BAD_REQUEST, "grant is not a canonical v3 grant") from exc
    if fields["suite"] != suite:
        raise OpRefused(BAD_REQUEST, "suite does not match the grant")
    if suite not in SUITES:
        raise OpRefused(BAD_REQUEST, "unsupported suite")
    if fields[role] != state.public["node_id"]:
        raise OpRefused(REFUSED, f"this node is not the grant's {role}")
    signature = _bytes(args, "grant_signature", SIGNATURE_LEN)
    remote_static = _bytes(args, "remote_static", 32)
    token = _open_sealed(state, _bytes(args, "sealed_token"))
    if len(token) != tokens.TOKEN_LEN:
        raise OpRefused(REFUSED, "the sealed token has the wrong length")
    return _HandshakeInput(
        suite, grant, fields, PROLOGUE_PREFIX + grant + signature, token, remote_static
    )


def _keys(send: bytes, recv: bytes, handshake_hash: bytes) -> dict[str, str]:
    return {"send_key": b64e(send), "recv_key": b64e(recv), "handshake_hash": b64e(handshake_hash)}


def op_noise_initiate(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{suite, grant, grant_signature, sealed_token, remote_static} → {handle, message}.

    KKpsk0 message 1 (Noise rev 34 §9.4) with psk = token_a, which arrives sealed to us.
    """
    _check_keys(args, ("suite", "grant", "grant_signature", "sealed_token", "remote_static"))
    given = _handshake_input(state, args, "initiator")
    try:
        handshake = HandshakeState(
            pattern=PATTERN, suite=given.suite, initiator=True, prologue=given.prologue,
            s=state.for_peer(given.remote_static), rs=given.remote_static, psk=given.token,
        )
        message = handshake.write_message()
    except NoiseError as exc:
        raise OpRefused(HANDSHAKE_FAILED, "could not start the handshake") from exc
    return {"handle": state.remember(handshake), "message": b64e(message)}


def op_noise_respond(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{suite, grant, grant_signature, sealed_token, remote_static, message} → msg 2 and keys.

    token_a = derive_token_a(token_b, grant_id, grant_hash) (DESIGN §5) is the PSK; a wrong
    token, key, grant or tampered message makes message 1 fail to decrypt → handshake_failed.
    Keys are from the responder's view: send = responder→initiator, recv = initiator→responder.
    """
    _check_keys(
        args, ("suite", "grant", "grant_signature", "sealed_token", "remote_static", "message")
    )
    given = _handshake_input(state, args, "responder")
    message = _bytes(args, "message")
    grant_id = tokens.decode_grant_id(str(given.fields["grant_id"]))
    token_a = tokens.derive_token_a(given.token, grant_id, tokens.grant_hash(given.grant))
    try:
        handshake = HandshakeState(
            pattern=PATTERN, suite=given.suite, initiator=False, prologue=given.prologue,
            s=state.for_peer(given.remote_static), rs=given.remote_static, psk=token_a,
        )
        handshake.read_message(message)
        reply = handshake.write_message()
        i_to_r, r_to_i = handshake.split()
        result = _keys(r_to_i.key, i_to_r.key, handshake.handshake_hash)
    except NoiseError as exc:
        raise OpRefused(HANDSHAKE_FAILED, "handshake message 1 was refused") from exc
    result["message"] = b64e(reply)
    return result


def op_noise_finish(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{handle, message} → {send_key, recv_key, handshake_hash} from the initiator's view.

    The handle is used once: it is gone afterwards whether message 2 verified or not.
    """
    _check_keys(args, ("handle", "message"))
    handle = _str(args, "handle")
    message = _bytes(args, "message")
    handshake = state.take(handle)
    try:
        handshake.read_message(message)
        i_to_r, r_to_i = handshake.split()
        return _keys(i_to_r.key, r_to_i.key, handshake.handshake_hash)
    except NoiseError as exc:
        raise OpRefused(HANDSHAKE_FAILED, "handshake message 2 was refused") from exc


def _label_ad(args: Mapping[str, Any]) -> bytes:
    label = _str(args, "label")
    if not 1 <= len(label) <= MAX_LABEL:
        raise OpRefused(BAD_REQUEST, f"label must be 1-{MAX_LABEL} characters")
    return WRAP_AD_PREFIX + label.encode("utf-8")


def op_wrap(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{label, plaintext} → {wrapped}: XChaCha20-Poly1305 under the wrap key, AD bound to label.

    wrapped = 0x01 ‖ 24-byte random nonce ‖ ciphertext+tag.
    """
    _check_keys(args, ("label", "plaintext"))
    ad = _label_ad(args)
    plaintext = _bytes(args, "plaintext")
    nonce = state.random_bytes(_NONCE_LEN)
    sealed: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, ad, nonce, state.keystore.wrap_key
    )
    return {"wrapped": b64e(WRAP_VERSION + nonce + sealed)}


def op_unwrap(state: JailState, args: Mapping[str, Any]) -> dict[str, Any]:
    """{label, wrapped} → {plaintext}; decrypt_failed for a wrong label, key or any tampering."""
    _check_keys(args, ("label", "wrapped"))
    ad = _label_ad(args)
    wrapped = _bytes(args, "wrapped")
    if len(wrapped) < 1 + _NONCE_LEN + _TAG_LEN or wrapped[:1] != WRAP_VERSION:
        raise OpRefused(DECRYPT_FAILED, "wrapped value does not open")
    nonce, sealed = wrapped[1 : 1 + _NONCE_LEN], wrapped[1 + _NONCE_LEN :]
    try:
        plaintext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, ad, nonce, state.keystore.wrap_key
        )
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
        raise OpRefused(DECRYPT_FAILED, "wrapped value does not open") from exc
    return {"plaintext": b64e(plaintext)}


Op = Callable[[JailState, Mapping[str, Any]], dict[str, Any]]

OPS: dict[str, Op] = {
    "public_keys": op_public_keys,
    "sign": op_sign,
    "sign_batch": op_sign_batch,
    "sign_many": op_sign_many,
    "sign_checkpoint": op_sign_checkpoint,
    "witnessed": op_witnessed,
    "open_sealed": op_open_sealed,
    "noise_initiate": op_noise_initiate,
    "noise_respond": op_noise_respond,
    "noise_finish": op_noise_finish,
    "wrap": op_wrap,
    "unwrap": op_unwrap,
}


def dispatch(state: JailState, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Run one whitelisted operation; OpRefused(unknown_op) for anything else."""
    handler = OPS.get(op)
    if handler is None:
        raise OpRefused(UNKNOWN_OP, "no such operation")
    return handler(state, args)
