"""RFC 9421 HTTP Message Signatures for requests that carry authority (DESIGN §3).

OpenRed's profile, built with the ``http-message-signatures`` library:

* one signature, label ``openred``, algorithm ``ed25519`` (RFC 9421 §3.3.6);
* covered components, in this order: ``@method``, ``@target-uri``, ``content-digest``;
  the body is bound through ``Content-Digest: sha-256=:<base64>:`` (RFC 9530 §2);
* signature parameters, in this order: ``created`` (unix seconds), ``keyid`` (the signer's
  node id, or ``directory``), ``alg="ed25519"`` and ``nonce`` (16–128 base64url characters,
  random per request). ``keyid`` and ``alg`` are signed too, as RFC 9421 §2.3 allows, so a
  verifier never has to guess either.

No private key lives in this process: :func:`sign_request` builds the signature base here and
hands its bytes to an async ``sign_base`` callable (the crypto jail's ``sign`` operation with
kind ``http_signature_base``), which checks them with
``crypto_jail.structures.is_http_signature_base`` before signing. That module documents the
exact bytes of a signature base.

:class:`RequestVerifier` checks, in numbered steps, and raises
:class:`~openred.errors.RequestSignatureError` with the precise reason for the first failure;
``now`` is passed in, never read from the clock.

The ``url`` of an :class:`HttpRequest` must be the absolute URL the client addressed
(``@target-uri``, RFC 9421 §2.2.2); a server behind a proxy rebuilds it from its public
base URL, never from untrusted forwarding headers.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import heapq
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

import http_sf
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureAlgorithm,
    HTTPSignatureKeyResolver,
)

from crypto_jail.structures import is_http_signature_base
from openred.crypto.identity import SignKey
from openred.errors import InvalidSignature, NonceCacheFull, RequestSignatureError

__all__ = [
    "ALGORITHM",
    "COVERED_COMPONENTS",
    "DEFAULT_WINDOW_SECONDS",
    "LABEL",
    "CheckedSignature",
    "FastParts",
    "HttpRequest",
    "NonceCache",
    "RequestVerifier",
    "SignBase",
    "fast_parts",
    "new_nonce",
    "sign_request",
    "within_window",
]

ALGORITHM: Final = "ed25519"
LABEL: Final = "openred"
COVERED_COMPONENTS: Final = ("@method", "@target-uri", "content-digest")
DEFAULT_WINDOW_SECONDS: Final = 60
MAX_HEADER_LEN: Final = 2048
"""A real Signature-Input is ~200 characters and a Signature ~100; refuse much more unparsed."""

_PARAMETERS: Final = frozenset({"created", "keyid", "alg", "nonce"})
_SIGNATURE_FIELDS: Final = frozenset({"signature", "signature-input", "content-digest"})
_NONCE_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KEYID_RE: Final = re.compile(r"[a-z2-7]{32}|directory")

# The fast path (see RequestVerifier._verify_fast): headers exactly as sign_request writes them.
_PCT = r"%[0-9A-Fa-f]{2}"
_URL_CHARS = r"\-A-Za-z0-9._~!$&'()*+,;=:@/"
_FAST_URL: Final = re.compile(
    rf"https?://[A-Za-z0-9.-]+(?::[0-9]{{1,5}})?/(?:[{_URL_CHARS}]|{_PCT})*"
    rf"(?:\?(?:[{_URL_CHARS}?]|{_PCT})*)?"
)
_FAST_METHOD: Final = re.compile(r"[A-Z]{1,16}")
_FAST_INPUT: Final = re.compile(
    r'openred=(\("@method" "@target-uri" "content-digest"\);created=(0|[1-9][0-9]{0,14})'
    r';keyid="([a-z2-7]{32}|directory)";alg="ed25519";nonce="([A-Za-z0-9_-]{16,128})")'
)
_FAST_SIGNATURE: Final = re.compile(r"openred=:([A-Za-z0-9+/]{86}==):")
_FAST_DIGEST: Final = re.compile(r"sha-256=:[A-Za-z0-9+/]{43}=:")
_MAX_CREATED: Final = 253_402_300_799
"""The last second of year 9999: the library's datetime cannot sign a later ``created``."""

SignBase = Callable[[bytes], Awaitable[bytes]]
"""Signs a signature base with the caller's Ed25519 key (the jail) and returns 64 bytes."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A framework-neutral HTTP request: what a Quart or aiohttp adapter converts to and from."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), field lines joined by ``, ``."""
        values = [v for k, v in self.headers.items() if k.lower() == name.lower()]
        return ", ".join(values) if values else None


class _Message:
    """The mutable message view the library reads (method, url, headers)."""

    def __init__(self, method: str, url: str, headers: dict[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers


class _Ed25519(HTTPSignatureAlgorithm):
    """Ed25519 verification through :meth:`SignKey.verify`; signing happens only in the jail."""

    algorithm_id = ALGORITHM

    def __init__(self, public_key: object = None, private_key: object = None) -> None:
        if private_key is not None or not isinstance(public_key, SignKey):
            raise HTTPMessageSignaturesException("only a SignKey public key is accepted here")
        self._key = public_key

    def sign(self, message: bytes) -> bytes:
        raise HTTPMessageSignaturesException("private keys live in the crypto jail")

    def verify(self, signature: bytes, message: bytes) -> None:
        self._key.verify(signature, message)


class _OneKey(HTTPSignatureKeyResolver):
    """Resolves the single key the verifier already looked up for this request's keyid."""

    def __init__(self, key: SignKey) -> None:
        self._key = key

    def resolve_public_key(self, key_id: str) -> SignKey:
        return self._key

    def resolve_private_key(self, key_id: str) -> None:
        raise HTTPMessageSignaturesException("private keys live in the crypto jail")


class _InjectedClockVerifier(HTTPMessageVerifier):
    """The library's verifier minus its wall-clock check: RequestVerifier checks ``created``."""

    def validate_created_and_expires(self, sig_input: object, max_age: object = None) -> None:
        return None


_SIGNER: Final = HTTPMessageSigner(signature_algorithm=_Ed25519)


def new_nonce() -> str:
    """A fresh random nonce (128 bits, base64url) for one request; for the edges only."""
    return secrets.token_urlsafe(16)


def _check_keyid(keyid: str) -> None:
    if not isinstance(keyid, str) or not _KEYID_RE.fullmatch(keyid):
        raise RequestSignatureError("keyid must be a node id or 'directory'")


def _check_nonce(nonce: object) -> str:
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise RequestSignatureError("nonce must be 16-128 base64url characters")
    return nonce


async def sign_request(
    req: HttpRequest, *, keyid: str, sign_base: SignBase, now: int, nonce: str
) -> HttpRequest:
    """Return ``req`` with Content-Digest, Signature-Input and Signature headers added.

    Any Content-Digest, Signature-Input or Signature already on ``req`` is replaced. The
    signature base (documented in ``crypto_jail.structures``) is signed by ``sign_base``.
    """
    _check_keyid(keyid)
    _check_nonce(nonce)
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise RequestSignatureError("created must be a non-negative integer")
    headers = {k: v for k, v in req.headers.items() if k.lower() not in _SIGNATURE_FIELDS}
    if (now <= _MAX_CREATED and _FAST_METHOD.fullmatch(req.method)
            and _FAST_URL.fullmatch(req.url)):
        return await _sign_fast(req, headers, keyid=keyid, sign_base=sign_base, now=now,
                                nonce=nonce)
    return await _sign_library(req, headers, keyid=keyid, sign_base=sign_base, now=now,
                               nonce=nonce)


async def _sign_fast(
    req: HttpRequest, headers: dict[str, str], *, keyid: str, sign_base: SignBase, now: int,
    nonce: str,
) -> HttpRequest:
    """sign_request for a plain method and URL: the library's exact headers, built directly.

    For such a request the library's output is fixed text (tested byte for byte against
    :func:`_sign_library` over randomized requests); building it here saves the library's
    generic parsing and re-serialization on every outbound request.
    """
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(req.body).digest()).decode() + ":"
    params = (f'("@method" "@target-uri" "content-digest");created={now};keyid="{keyid}"'
              f';alg="{ALGORITHM}";nonce="{nonce}"')
    base = (f'"@method": {req.method}\n"@target-uri": {req.url}\n'
            f'"content-digest": {digest}\n"@signature-params": {params}').encode("ascii")
    if not is_http_signature_base(base):
        raise RequestSignatureError("cannot sign request: signature base outside the profile")
    signature = await sign_base(base)
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise RequestSignatureError("sign_base must return a 64-byte Ed25519 signature")
    headers["Content-Digest"] = digest
    headers["Signature-Input"] = f"{LABEL}={params}"
    headers["Signature"] = f"{LABEL}=:{base64.b64encode(signature).decode()}:"
    return HttpRequest(req.method, req.url, headers, req.body)


async def _sign_library(
    req: HttpRequest, headers: dict[str, str], *, keyid: str, sign_base: SignBase, now: int,
    nonce: str,
) -> HttpRequest:
    """sign_request through the library (any request the fast path does not take)."""
    message = _Message(req.method, req.url, headers)
    try:
        prepared = _SIGNER.prepare(
            message,
            key_id=keyid,
            created=datetime.datetime.fromtimestamp(now, tz=datetime.UTC),
            nonce=nonce,
            label=LABEL,
            covered_component_ids=COVERED_COMPONENTS,
            body=req.body,
        )
    except (HTTPMessageSignaturesException, ValueError, TypeError) as exc:
        raise RequestSignatureError(f"cannot sign request: {exc}") from exc
    if not is_http_signature_base(prepared.signature_base):
        # The jail would refuse it; fail here with a clearer message (e.g. a non-http(s) URL).
        raise RequestSignatureError("cannot sign request: signature base outside the profile")
    signature = await sign_base(prepared.signature_base)
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise RequestSignatureError("sign_base must return a 64-byte Ed25519 signature")
    try:
        _SIGNER.apply(message, prepared, signature)
    except HTTPMessageSignaturesException as exc:
        raise RequestSignatureError(f"cannot sign request: {exc}") from exc
    return HttpRequest(req.method, req.url, dict(message.headers), req.body)


class NonceCache:
    """Remembers ``(keyid, nonce)`` pairs while a signature carrying them could still verify.

    An entry for a signature created at ``created`` lives until ``created + window``: after
    that the ``created`` check alone refuses the request, so forgetting it is safe. The cache
    is bounded, in total (``max_entries``) and per signer (``max_per_signer``, default a
    hundredth of the total): a signer whose quota is full of live entries cannot remember
    another nonce, but every other signer still can. A full cache or quota refuses new
    entries (fail closed) rather than evicting a live entry, which would reopen that nonce to
    replay, and says so with :class:`~openred.errors.NonceCacheFull` (a 503: retry later),
    not a signature error. Pure: ``now`` is passed in.
    """

    def __init__(self, *, window_seconds: int = DEFAULT_WINDOW_SECONDS,
                 max_entries: int = 100_000, max_per_signer: int | None = None) -> None:
        if max_per_signer is None:
            max_per_signer = max(1, max_entries // 100)
        if window_seconds <= 0 or max_entries <= 0 or max_per_signer <= 0:
            raise ValueError("window_seconds, max_entries and max_per_signer must be positive")
        self.window_seconds = window_seconds
        self.max_entries = max_entries
        self.max_per_signer = min(max_per_signer, max_entries)
        self._expiry: dict[tuple[str, str], int] = {}
        self._per_signer: dict[str, int] = {}
        self._heap: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self._expiry

    def purge(self, now: int) -> None:
        """Forget every entry whose signature can no longer pass the ``created`` check."""
        heap = self._heap
        while heap and heap[0][0] < now:
            expiry, keyid, nonce = heapq.heappop(heap)
            if self._expiry.get((keyid, nonce)) == expiry:
                del self._expiry[(keyid, nonce)]
                left = self._per_signer[keyid] - 1
                if left:
                    self._per_signer[keyid] = left
                else:
                    del self._per_signer[keyid]

    def count(self, keyid: str) -> int:
        """How many live nonces of ``keyid`` are remembered."""
        return self._per_signer.get(keyid, 0)

    def live(self, now: int) -> list[tuple[str, str, int]]:
        """Every entry still live at ``now``: ``(keyid, nonce, expiry)`` (to save at a stop)."""
        self.purge(now)
        return [(keyid, nonce, expiry) for (keyid, nonce), expiry in self._expiry.items()]

    def restore(self, entries: Iterable[tuple[str, str, int]], now: int) -> int:
        """Remember saved :meth:`live` entries again (those still live); how many were taken.

        Entries already known are kept as they are. The entries come from a file, which
        another process of the same user may have written: each lives at most until
        ``now + 2 × window`` (no signature this cache can still be asked about was created
        later than ``now + window``), and more live entries of one signer than its quota is
        ``ValueError`` with nothing restored (a file :meth:`remember` could not have filled:
        the caller then refuses older signatures) — otherwise a planted file held a signer's
        quota full for good (its requests 503, the entries saved again at every stop), and
        dropping the extra entries instead would reopen their nonces to replay.
        """
        entries = list(entries)
        per_signer: dict[str, int] = {}
        for keyid, _, expiry in entries:
            if expiry >= now:
                per_signer[keyid] = count = per_signer.get(keyid, 0) + 1
                if count > self.max_per_signer:
                    raise ValueError(f"more live nonces of {keyid!r} than its quota")
        taken = 0
        latest = now + 2 * self.window_seconds
        for keyid, nonce, expiry in entries:
            key = (keyid, nonce)
            if expiry < now or key in self._expiry or len(self._expiry) >= self.max_entries:
                continue
            expiry = min(expiry, latest)
            self._expiry[key] = expiry
            self._per_signer[keyid] = self._per_signer.get(keyid, 0) + 1
            heapq.heappush(self._heap, (expiry, keyid, nonce))
            taken += 1
        return taken

    def remember(self, keyid: str, nonce: str, *, created: int, now: int) -> None:
        """Record a nonce; RequestSignatureError if it was seen, NonceCacheFull if no room."""
        self.purge(now)
        key = (keyid, nonce)
        if key in self._expiry:
            raise RequestSignatureError("nonce replayed inside the window")
        if self._per_signer.get(keyid, 0) >= self.max_per_signer:
            raise NonceCacheFull(f"nonce quota of {keyid!r} is full; try again later")
        if len(self._expiry) >= self.max_entries:
            raise NonceCacheFull("nonce cache full; try again later")
        expiry = created + self.window_seconds
        self._expiry[key] = expiry
        self._per_signer[keyid] = self._per_signer.get(keyid, 0) + 1
        heapq.heappush(self._heap, (expiry, keyid, nonce))


@dataclass(frozen=True, slots=True)
class CheckedSignature:
    """A request's exact-form signature, verified ahead (by a SignatureChecker, off the loop).

    ``parts`` are :func:`fast_parts` of ``request``; ``valid`` whether ``parts``' signature
    verifies over their base under the key whose raw bytes are ``key``. The verifier uses
    ``valid`` only for that very request object and key, and verifies inline otherwise.
    """

    request: HttpRequest
    parts: FastParts
    key: bytes
    valid: bool


@dataclass(frozen=True, slots=True)
class _SignatureInput:
    keyid: str
    created: int
    nonce: str


class RequestVerifier:
    """Verifies OpenRed request signatures and returns the verified ``keyid``."""

    def __init__(
        self,
        resolve_key: Callable[[str], SignKey | None],
        *,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        nonce_cache: NonceCache | None = None,
        not_before: int | None = None,
        admit: Callable[[str], None] | None = None,
    ) -> None:
        self._resolve_key = resolve_key
        self.window_seconds = window_seconds
        # Called with the keyid once its signature verified, before its nonce is remembered:
        # a request it refuses (a rate limit) takes no room in the nonce cache.
        self._admit = admit
        # Signatures created before this instant are refused: the nonce cache cannot know
        # whether it saw them (it started empty after them; see InboundVerifier).
        self.not_before = not_before
        # Not `or`: an empty NonceCache is falsy (it has __len__), and a shared one must be used.
        if nonce_cache is None:
            nonce_cache = NonceCache(window_seconds=window_seconds)
        self.nonce_cache = nonce_cache
        if self.nonce_cache.window_seconds < window_seconds:
            raise ValueError("the nonce cache must remember nonces for the whole window")

    def verify(self, req: HttpRequest, now: int, *,
               checked: CheckedSignature | None = None) -> str:
        """Return the keyid that signed ``req``; raise RequestSignatureError saying why not.

        A request whose signature headers are exactly what :func:`sign_request` writes takes
        a fast path (:meth:`_verify_fast`) that accepts it only when every check below
        passes; anything else, and every failure, goes through the numbered steps, so the
        answer and its reason are always theirs.
        """
        keyid = self._verify_fast(req, now, checked)
        if keyid is not None:
            return keyid
        return self._verify_general(req, now)

    def _verify_fast(self, req: HttpRequest, now: int,
                     checked: CheckedSignature | None = None) -> str | None:
        """The keyid if ``req`` is in the exact profile form and passes every check, else None.

        Same checks as :meth:`_verify_general`, in the same order, without the library: the
        profile form leaves one possible signature base (RFC 9421 §2.5), built here from the
        exact header text (``fast_signature_base``, tested byte for byte against the
        library's). Returns None, never raises, on any doubt or failure (the general path
        then decides and says why), except what ``admit`` raises, NonceCacheFull and a
        replayed nonce, which are decided last exactly as there.
        """
        if checked is not None and checked.request is not req:
            checked = None
        parts = fast_parts(req) if checked is None else checked.parts
        if parts is None:
            return None
        base, created, keyid, nonce, signature, digest = parts
        if not within_window(created, now, self.window_seconds, self.not_before):
            return None
        key = self._resolve_key(keyid)
        if key is None:
            return None
        expected = "sha-256=:" + base64.b64encode(hashlib.sha256(req.body).digest()).decode() + ":"
        if digest != expected:
            return None
        if checked is not None and checked.key == key.raw:
            if not checked.valid:
                return None
        else:
            try:
                key.verify(signature, base)
            except InvalidSignature:
                return None
        if self._admit is not None:
            self._admit(keyid)
        self.nonce_cache.remember(keyid, nonce, created=created, now=now)
        return keyid

    def _verify_general(self, req: HttpRequest, now: int) -> str:
        """The numbered checks, with the library building and verifying the signature base."""
        # 1. The three fields are present and of sane size.
        fields = {}
        for name in ("Signature-Input", "Signature", "Content-Digest"):
            value = req.header(name)
            if value is None:
                raise RequestSignatureError(f"missing {name} header")
            if len(value) > MAX_HEADER_LEN:
                raise RequestSignatureError(f"{name} header longer than {MAX_HEADER_LEN}")
            fields[name] = value
        # 2. Signature-Input holds one signature in our profile (RFC 9421 §4.1).
        params = self._parse_signature_input(fields["Signature-Input"])
        # 3. created within ±window of now (DESIGN §3).
        if params.created > now + self.window_seconds:
            raise RequestSignatureError("created is in the future beyond the window")
        if params.created < now - self.window_seconds:
            raise RequestSignatureError("created is older than the window")
        if self.not_before is not None and params.created < self.not_before:
            raise RequestSignatureError(
                "created before this service started, so its nonce cannot be checked: "
                "sign the request again")
        # 4. The keyid names a key we know.
        key = self._resolve_key(params.keyid)
        if key is None:
            raise RequestSignatureError(f"unknown key {params.keyid!r}")
        # 5. The Ed25519 signature over the signature base (RFC 9421 §3.2).
        message = _Message(req.method, req.url, dict(req.headers))
        verifier = _InjectedClockVerifier(signature_algorithm=_Ed25519, key_resolver=_OneKey(key))
        try:
            results = verifier.verify(
                message, max_age=None, require_components=COVERED_COMPONENTS
            )
        except (HTTPMessageSignaturesException, ValueError, TypeError) as exc:
            if isinstance(exc.__cause__, InvalidSignature) or not str(exc):
                raise RequestSignatureError("bad signature") from exc
            if isinstance(exc, TypeError) or isinstance(exc.__cause__, TypeError):
                # Python's words about the library's code, not about the request
                raise RequestSignatureError("bad signature: a covered component is malformed"
                                            ) from exc
            raise RequestSignatureError(f"bad signature: {exc}") from exc
        # 6. The signed Content-Digest matches the body (RFC 9530 §2).
        try:
            verifier.verify_body(message, results, req.body)
        except (HTTPMessageSignaturesException, ValueError, TypeError) as exc:
            raise RequestSignatureError("content-digest does not match the body") from exc
        # 7. The caller admits the signer (its rate limit), then the nonce was not seen inside
        #    the window (only now, so forgeries and refused requests cannot fill the cache).
        if self._admit is not None:
            self._admit(params.keyid)
        self.nonce_cache.remember(params.keyid, params.nonce, created=params.created, now=now)
        return params.keyid

    def _parse_signature_input(self, value: str) -> _SignatureInput:
        try:
            parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary")
        except (ValueError, TypeError, UnicodeError) as exc:
            raise RequestSignatureError("malformed Signature-Input header") from exc
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise RequestSignatureError("Signature-Input must hold exactly one signature")
        ((_, member),) = parsed.items()
        if not isinstance(member, tuple) or not isinstance(member[0], list):
            raise RequestSignatureError("Signature-Input member is not an inner list")
        components, params = member
        covered = set(_component_names(components))
        missing = [c for c in COVERED_COMPONENTS if c not in covered]
        if missing:
            raise RequestSignatureError(f"signature does not cover {', '.join(missing)}")
        unexpected = sorted(set(params) - _PARAMETERS)
        if unexpected:
            raise RequestSignatureError(f"unexpected signature parameters {unexpected}")
        if params.get("alg") != ALGORITHM:
            raise RequestSignatureError(f"alg must be {ALGORITHM!r}")
        keyid = params.get("keyid")
        if not isinstance(keyid, str):
            raise RequestSignatureError("keyid missing")
        created = params.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            raise RequestSignatureError("created missing or not an integer")
        if "nonce" not in params:
            raise RequestSignatureError("nonce missing")
        return _SignatureInput(keyid=keyid, created=created, nonce=_check_nonce(params["nonce"]))


def _single_header(req: HttpRequest, name: str) -> str | None:
    """The value of header ``name`` when exactly one field line carries it."""
    found = None
    for key, value in req.headers.items():
        if key.lower() == name:
            if found is not None:
                return None
            found = value
    return found


def _signature_headers(req: HttpRequest) -> tuple[str, str, str] | None:
    """(Signature-Input, Signature, Content-Digest) when one field line carries each.

    The three :func:`_single_header` lookups in one pass over the headers.
    """
    found: dict[str, str] = {}
    for key, value in req.headers.items():
        name = key.lower()
        if name in _SIGNATURE_FIELDS:
            if name in found:
                return None
            found[name] = value
    if len(found) != 3:
        return None
    return found["signature-input"], found["signature"], found["content-digest"]


def within_window(created: int, now: int, window_seconds: int, not_before: int | None) -> bool:
    """Whether a signature ``created`` then is inside the window around ``now`` and not before
    ``not_before`` (what the fast path accepts; the general path says which bound failed)."""
    return (now - window_seconds <= created <= now + window_seconds
            and (not_before is None or created >= not_before))


FastParts = tuple[bytes, int, str, str, bytes, str]
"""(signature base, created, keyid, nonce, signature, content-digest) of an exact-form request."""


def fast_parts(req: HttpRequest) -> FastParts | None:
    """:data:`FastParts` of ``req``, or None when it is not in the exact form."""
    fields = _signature_headers(req)
    if fields is None:
        return None
    sig_input, sig_value, digest = fields
    m_input = _FAST_INPUT.fullmatch(sig_input)
    m_sig = _FAST_SIGNATURE.fullmatch(sig_value)
    if (m_input is None or m_sig is None or _FAST_DIGEST.fullmatch(digest) is None
            or _FAST_METHOD.fullmatch(req.method) is None or _FAST_URL.fullmatch(req.url) is None):
        return None
    try:
        signature = base64.b64decode(m_sig.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    # One spelling per signature: non-zero padding bits are left to the general path.
    if base64.b64encode(signature).decode("ascii") != m_sig.group(1):
        return None
    params, created, keyid, nonce = m_input.groups()
    base = (f'"@method": {req.method}\n"@target-uri": {req.url}\n'
            f'"content-digest": {digest}\n"@signature-params": {params}').encode("ascii")
    return base, int(created), keyid, nonce, signature, digest


def fast_signature_base(req: HttpRequest) -> bytes | None:
    """The signature base the fast path verifies for ``req`` (None: not in the exact form)."""
    parts = fast_parts(req)
    return None if parts is None else parts[0]


def _component_names(components: Iterable[object]) -> Iterator[str]:
    for item in components:
        # Each inner-list member is (bare item, parameters); a parameterized component such
        # as "content-digest";key="sha-256" is not the whole field, so it does not count.
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and not item[1]:
            yield item[0]
