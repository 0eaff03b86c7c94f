"""Verify an inbound Quart request's RFC 9421 signature (DESIGN §3).

The ``@target-uri`` a client signed is rebuilt from the service's configured public base URL
and the raw path and query of the request, never from the ``Host`` or forwarding headers, so a
request signed for one service cannot be replayed to another one (see openred.crypto.httpsig).
The key is resolved asynchronously (a database lookup) after the ``keyid`` is read from
``Signature-Input``; the checks themselves are :class:`~openred.crypto.httpsig.RequestVerifier`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import http_sf
from quart import Request

from openred.crypto.checks import SignatureChecker
from openred.crypto.httpsig import (
    DEFAULT_WINDOW_SECONDS,
    MAX_HEADER_LEN,
    CheckedSignature,
    HttpRequest,
    NonceCache,
    RequestVerifier,
    fast_parts,
    within_window,
)
from openred.crypto.identity import SignKey
from openred.errors import RequestSignatureError
from openred.files import write_private

__all__ = [
    "NONCES_FILE", "InboundVerifier", "KeyResolver", "restore_nonces", "save_nonces",
    "scope_http_request", "to_http_request",
]

logger = logging.getLogger("openred.web")

KeyResolver = Callable[[str], Awaitable[SignKey | None]]
"""Looks up the public key a ``keyid`` names (None when unknown)."""

NONCES_FILE = "nonces.json"
"""The live request nonces a cleanly stopped service leaves in its data directory."""


def _target_uri(public_url: str, request: Request) -> str:
    return scope_target_uri(public_url, request.scope, request.path)


def scope_target_uri(public_url: str, scope: Any, path: str) -> str:
    """``@target-uri``: the public URL, then the raw path (``path`` if none) and query.

    Only for a request target in origin-form (a path, RFC 9112 §3.2.1), or in absolute-form
    naming this service's public URL (RFC 9112 §3.2.2: then that URI is the target URI).
    Anything else is RequestSignatureError: Quart still routes ``api/v3/...``, ``x:/api/...``
    or ``http://elsewhere/api/...`` by the path it parses out of them, and glued to the public
    URL such a target made the URI of another host (``http://dir.example`` + ``api/v3/x`` is
    ``http://dir.exampleapi/v3/x``), so a signature made for that host verified here.
    """
    raw_path = scope.get("raw_path") or path.encode("utf-8")
    text = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(raw_path)
    query = scope.get("query_string", b"")
    base = public_url.rstrip("/")
    if text.startswith("/"):
        uri = base + text
    elif text.startswith(base + "/"):
        uri = text
    else:
        raise RequestSignatureError(
            "the request target is neither a path nor this service's public URL, "
            "so it cannot be signed")
    if query:
        uri += "?" + (query.decode("latin-1") if isinstance(query, bytes) else str(query))
    return uri


async def to_http_request(public_url: str, request: Request) -> HttpRequest:
    """The framework-neutral form of a Quart request (body read and cached)."""
    body = await request.get_data(cache=True, as_text=False)
    assert isinstance(body, bytes)
    return HttpRequest(request.method, _target_uri(public_url, request),
                       _joined_headers(request.headers.items()), body)


def scope_http_request(public_url: str, scope: Any, body: bytes) -> HttpRequest:
    """:func:`to_http_request` of the Quart request an ASGI HTTP/1.1 scope would become.

    For a scope Quart would not rewrite (no ``root_path``, a path starting with ``/``, HTTP/1.1
    or later): the same method, target URI and headers — Quart's ``Remote-Addr`` first, then
    every field line with its name title-cased and its value decoded as Latin-1 — as
    :func:`to_http_request` sees on the request Quart builds (tested).
    """
    client = scope.get("client") or ["<local>"]
    items: list[tuple[str, str]] = [("Remote-Addr", str(client[0]))]
    titled = _TITLED
    for name, value in scope["headers"]:
        title = titled.get(name)
        if title is None:
            if len(titled) >= _MAX_TITLED:
                titled.clear()
            title = titled[name] = name.decode("latin1").title()
        items.append((title, value.decode("latin1")))
    path: str = scope["path"]
    return HttpRequest(scope["method"], scope_target_uri(public_url, scope, path),
                       _joined_headers(items), body)


_TITLED: dict[bytes, str] = {}
_MAX_TITLED = 1024


def _joined_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each header name once, its field lines joined by ``, `` in order (one pass).

    The same as ``{name: ", ".join(headers.getlist(name)) for name in names}`` when no two
    names differ only in case, which Quart guarantees (it title-cases every name it receives);
    names that do are merged under the first spelling, as ``getlist`` would have merged them.
    """
    joined: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for name, value in items:
        folded = name.lower()
        first = spelling.setdefault(folded, name)
        joined[first] = joined[first] + ", " + value if first in joined else value
    return joined


_KEYID = re.compile(r';keyid="([a-z2-7]{32}|directory)";')


def peek_keyid(req: HttpRequest) -> str:
    """The keyid named in Signature-Input, before anything is verified (to look its key up).

    Only a hint for the key lookup: the verifier parses the header itself and accepts the
    key only for the keyid it finds, so a header that fools this peek is refused there.
    """
    value = req.header("Signature-Input")
    if value is None:
        raise RequestSignatureError("missing Signature-Input header")
    if len(value) > MAX_HEADER_LEN:
        raise RequestSignatureError(f"Signature-Input header longer than {MAX_HEADER_LEN}")
    found = _KEYID.findall(value)
    if len(found) == 1:
        return str(found[0])
    try:
        parsed = http_sf.parse(value.encode("ascii"), tltype="dictionary")
    except (ValueError, TypeError, UnicodeError) as exc:
        raise RequestSignatureError("malformed Signature-Input header") from exc
    if not isinstance(parsed, dict) or len(parsed) != 1:
        raise RequestSignatureError("Signature-Input must hold exactly one signature")
    ((_, member),) = parsed.items()
    if not isinstance(member, tuple) or len(member) != 2 or not isinstance(member[1], dict):
        raise RequestSignatureError("Signature-Input member is not an inner list")
    keyid = member[1].get("keyid")
    if not isinstance(keyid, str):
        raise RequestSignatureError("keyid missing")
    return keyid


class InboundVerifier:
    """Checks signed requests to one service: its public URL, window and nonce cache."""

    def __init__(
        self,
        public_url: str,
        *,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
        nonce_cache: NonceCache | None = None,
        not_before: int | None = None,
        checker: SignatureChecker | None = None,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        # Where an exact-form request's Ed25519 signature is verified (a worker process, off
        # the event loop); None: inline, in RequestVerifier.
        self.checker = checker
        self.window_seconds = window_seconds
        self.clock = clock
        # Signatures created before this instant are refused (see :meth:`restore`).
        self.not_before = not_before
        # Not `or`: an empty NonceCache is falsy (it has __len__), and a given one must be used.
        if nonce_cache is None:
            nonce_cache = NonceCache(window_seconds=window_seconds)
        self.nonce_cache = nonce_cache

    async def verify(self, request: Request, resolve: KeyResolver) -> tuple[str, HttpRequest]:
        """(verified keyid, the request) or RequestSignatureError saying why not."""
        req = await to_http_request(self.public_url, request)
        return await self.verify_http(req, resolve), req

    async def verify_http(self, req: HttpRequest, resolve: KeyResolver,
                          admit: Callable[[str], None] | None = None) -> str:
        """Verify a framework-neutral request; the keyid that signed it.

        ``admit(keyid)`` runs once the signature verified and before the nonce is remembered
        (a rate limit that refuses: the refused request takes no room in the nonce cache).
        """
        keyid = peek_keyid(req)
        key = await resolve(keyid)

        def one(wanted: str) -> SignKey | None:
            return key if wanted == keyid else None

        checked = None
        if key is not None and self.checker is not None:
            parts = fast_parts(req)
            # Only a signature the fast path would verify (inside the window) goes out.
            if parts is not None and within_window(parts[1], int(self.clock()),
                                                   self.window_seconds, self.not_before):
                valid = await self.checker.check(key, parts[4], parts[0])
                checked = CheckedSignature(req, parts, key.raw, valid)
        verifier = RequestVerifier(one, window_seconds=self.window_seconds,
                                   nonce_cache=self.nonce_cache, not_before=self.not_before,
                                   admit=admit)
        return verifier.verify(req, int(self.clock()), checked=checked)

    def save(self, path: Path) -> None:
        """Write the live nonces to ``path`` (0600, atomically), for :meth:`restore`."""
        entries = self.nonce_cache.live(int(self.clock()))
        write_private(path, json.dumps({"v": 1, "window": self.window_seconds,
                                        "entries": entries}, separators=(",", ":")))

    def restore(self, path: Path) -> bool:
        """Start from the nonces a stopped process saved at ``path``, or refuse older signatures.

        The nonce cache of a new process is empty, so a request signed and answered just before
        a restart would verify again after it (a replay inside the window). With the file a
        clean stop saved (:meth:`save`) those nonces are known again; the file is consumed.
        Without it (a crash, a first start) nothing signed before this process started can be
        known fresh: ``not_before`` becomes the second it started in, and older signatures get
        401 (an honest client signs again). What remains open after a crash: a signature made
        in that very second, or dated ahead of the crashed process's clock (by up to the
        window), that it had accepted. A file saved under a shorter window (or not saying
        which) counts as none: its nonces would be forgotten while their signatures still pass
        this window. True when the file was restored.
        """
        now = self.clock()
        restored = False
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = [(str(k), str(n), int(e)) for k, n, e in data["entries"]]
            if data.get("v") != 1:
                raise ValueError("unknown version")
            window = data.get("window")
            if type(window) is not int or window < self.window_seconds:
                raise ValueError(f"saved under a signature window of {window!r} s, not "
                                 f"{self.window_seconds} s")
            self.nonce_cache.restore(entries, int(now))
            restored = True
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
            logger.warning("saved nonces in %s unreadable (%s): refusing older signatures",
                           path, exc)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if not restored:
            self.not_before = int(now)
        return restored


def restore_nonces(verifier: InboundVerifier, data_dir: Path) -> bool:
    """Know again the nonces a cleanly stopped server saved, or refuse older signatures.

    For the serving process only, when it starts: a replay across a restart is refused either
    way (:meth:`InboundVerifier.restore`). A command that opens a service beside its server
    (``openred directory revoke``, ``openred node init``) must neither restore nor save: it
    would consume the server's file, or leave an empty one that a crashed server's next start
    would trust. True when the file was restored.
    """
    return verifier.restore(data_dir / NONCES_FILE)


def save_nonces(verifier: InboundVerifier, data_dir: Path) -> None:
    """Save the live nonces for the next start (the serving process, when it stops).

    A failure is logged: the next start then finds no file and refuses older signatures.
    """
    try:
        verifier.save(data_dir / NONCES_FILE)
    except OSError as exc:
        logger.warning("could not save the nonce cache: %s", exc)
