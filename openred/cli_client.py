"""The CLI's client of a node's local admin API (DESIGN §10).

:class:`AdminClient` reads the admin URL (``DATA_DIR/admin-url``, written by a serving node)
and the bearer key (``DATA_DIR/admin-key``) from the data directory and makes synchronous JSON
calls. A node that is not running is :class:`~openred.errors.NodeNotRunning`; an RFC 9457
problem answer is :class:`~openred.errors.RequestRefused` with the problem's status, slug and
detail — so a command prints one clear line either way.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from openred.errors import ConfigurationError, NodeNotRunning, RequestRefused
from openred.modules.authentication.files import ADMIN_TOKEN_HEADER, read_admin_token
from openred.node.admin_keys import ADMIN_KEY_FILE, read_admin_key
from openred.procnet import listeners

__all__ = ["ADMIN_URL_FILE", "MAX_ANSWER", "AdminClient", "check_listener", "listeners",
           "printable"]

ADMIN_URL_FILE = "admin-url"
MAX_ANSWER = 64 * 1024 * 1024
"""The largest answer read (bytes): whatever listens at the admin URL cannot fill the CLI's
memory or keep it reading forever."""

answers_read = 0
"""How many admin API answers this process parsed: a command that fails on the shape of what it
got after one (``openred.cli.AnswerGuard``) blames the answer, in one line."""

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (ESC, BEL, CR, C1 …, and the
    bidirectional overrides) shown as ``\\xNN`` / ``\\uNNNN`` instead of acted upon; newline and
    tab kept. Every string the CLI prints from an answer goes through here (a node relays text
    from peers, and anything may be squatting a stopped node's port)."""
    return _UNPRINTABLE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
        else f"\\u{ord(m.group()):04x}", text)


def check_listener(url: str, allowed: set[int]) -> None:
    """Refuse to send the admin key to ``url`` unless what listens there runs as one of the
    ``allowed`` users (ours, or the owner of the data directory's key).

    ``admin-url`` outlives a node that was killed, and its port is predictable: another user of
    the machine could listen there and collect the bearer key (and admin token) of the next
    command. Another user cannot listen under our uid.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.port is None:
        raise ConfigurationError(f"the admin URL {url!r} has no port")
    uids = listeners(parts.port)
    if uids is None:
        return
    if not uids:
        raise NodeNotRunning(f"nothing listens at {url}: is `openred node serve` running?")
    foreign = sorted(set(uids) - allowed)
    if foreign:
        raise RequestRefused(
            403, "admin-port-foreign",
            f"the admin port {parts.port} is held by another user (uid "
            f"{', '.join(map(str, foreign))}), not by the node: the admin key is not sent")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is not followed (urllib's default handler re-sends every header, the bearer
    key included, to wherever ``Location`` points): the 3xx becomes an HTTPError."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
"""Direct to the admin URL, never through a proxy from the environment (``http_proxy``: it
would receive the bearer key) and never after a redirect (the admin API never redirects)."""


class AdminClient:
    """Synchronous calls to ``/admin/v1/...`` with the data directory's bearer key."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 30.0,
                 admin_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.admin_token = admin_token
        """Sent as X-OpenRed-Admin-Token (``openred auth login``) for sensitive actions."""

    @classmethod
    def from_data_dir(cls, data_dir: Path, *, timeout: float = 30.0) -> AdminClient:
        """The client of the node serving from ``data_dir``; NodeNotRunning if none is."""
        if not data_dir.is_dir():
            raise ConfigurationError(f"{data_dir} does not exist: run `openred node init`")
        key = read_admin_key(data_dir)
        try:
            url = (data_dir / ADMIN_URL_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise NodeNotRunning(f"the node in {data_dir} is not running "
                                 "(start it with `openred node serve`)") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read {data_dir / ADMIN_URL_FILE}: "
                                     f"{exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise ConfigurationError(f"cannot read {data_dir / ADMIN_URL_FILE}: "
                                     "not UTF-8 text") from None
        check_listener(url, {os.geteuid(), (data_dir / ADMIN_KEY_FILE).stat().st_uid})
        return cls(url, key, timeout=timeout,
                   admin_token=read_admin_token(data_dir, time.time()))

    def get(self, path: str, **query: Any) -> Any:
        params = {k: v for k, v in query.items() if v is not None}
        suffix = "?" + urllib.parse.urlencode(params) if params else ""
        return self.request("GET", path + suffix)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call; the JSON answer. ``path`` is relative to ``/admin/v1``."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(  # noqa: S310 - http on loopback, from our own file
            f"{self.base_url}/admin/v1/{path.lstrip('/')}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.key}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {}),
                     **({ADMIN_TOKEN_HEADER: self.admin_token} if self.admin_token else {})},
        )
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                raw = _read_capped(resp, self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                if 300 <= exc.code < 400:
                    raise RequestRefused(
                        502, "admin-redirect",
                        f"the answer at {self.base_url} is a redirect ({exc.code}): the node's "
                        "admin API never redirects, so it is not the node; nothing more was "
                        "sent") from None
                raise _refusal(exc) from None
            finally:
                exc.close()  # its socket, not left to the garbage collector
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeNotRunning(f"the node's admin API at {self.base_url} does not answer "
                                 f"({reason}): is `openred node serve` running?") from None
        try:
            answer = json.loads(raw or b"null")
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            raise RequestRefused(502, "malformed-answer",
                                 f"the answer at {self.base_url} is not JSON: is it the "
                                 "node's admin API?") from None
        global answers_read
        answers_read += 1
        return answer


def _read_capped(resp: Any, timeout: float) -> bytes:
    """The body, at most MAX_ANSWER bytes and within ``timeout`` seconds in all (a per-read
    timeout alone lets a byte every few seconds keep the CLI reading forever)."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while chunk := resp.read1(1 << 16):
        size += len(chunk)
        if size > MAX_ANSWER:
            raise RequestRefused(502, "answer-too-large",
                                 f"the admin API's answer is too large (over {MAX_ANSWER} "
                                 "bytes)")
        if time.monotonic() > deadline:
            raise RequestRefused(504, "answer-too-slow",
                                 f"the admin API's answer took over {timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal(exc: urllib.error.HTTPError) -> RequestRefused:
    slug, detail = "admin-error", f"the node answered {exc.code}"
    try:
        obj = json.loads(exc.read(MAX_ANSWER))
    except (ValueError, OSError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        if isinstance(obj.get("type"), str):
            slug = obj["type"].rsplit(":", 1)[-1]
        if isinstance(obj.get("detail"), str):
            detail = obj["detail"]
    return RequestRefused(exc.code, printable(slug), printable(detail))
