"""The CLI's client of a node's local admin API (DESIGN §10).

:class:`AdminClient` reads the admin URL (``DATA_DIR/admin-url``, written by a serving node)
and the bearer key (``DATA_DIR/admin-key``) from the data directory and makes synchronous JSON
calls. A node that is not running is :class:`~openred.errors.NodeNotRunning`; an RFC 9457
problem answer is :class:`~openred.errors.RequestRefused` with the problem's status, slug and
detail — so a command prints one clear line either way.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from openred.errors import ConfigurationError, NodeNotRunning, RequestRefused
from openred.node.admin_keys import read_admin_key

__all__ = ["ADMIN_URL_FILE", "AdminClient"]

ADMIN_URL_FILE = "admin-url"


class AdminClient:
    """Synchronous calls to ``/admin/v1/...`` with the data directory's bearer key."""

    def __init__(self, base_url: str, key: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.timeout = timeout

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
        return cls(url, key, timeout=timeout)

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
                     **({"Content-Type": "application/json"} if data is not None else {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeNotRunning(f"the node's admin API at {self.base_url} does not answer "
                                 f"({reason}): is `openred node serve` running?") from None


def _refusal(exc: urllib.error.HTTPError) -> RequestRefused:
    slug, detail = "admin-error", f"the node answered {exc.code}"
    try:
        obj = json.loads(exc.read())
    except (ValueError, OSError):
        obj = None
    if isinstance(obj, dict):
        if isinstance(obj.get("type"), str):
            slug = obj["type"].rsplit(":", 1)[-1]
        if isinstance(obj.get("detail"), str):
            detail = obj["detail"]
    return RequestRefused(exc.code, slug, detail)
