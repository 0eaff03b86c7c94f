"""Who may use the node's local admin API (DESIGN §10): the bearer key, and ``@sensitive``.

The admin key is a random secret in ``DATA_DIR/admin-key`` (mode 0600), created by ``openred
node init`` (or by ``serve`` when missing). Every admin request must carry it as
``Authorization: Bearer <key>``; :func:`require_bearer` checks it in constant time and refuses
with 401 (RFC 9457) otherwise. Routes that change something or reveal message contents are
also marked :func:`sensitive`: the bearer key, checked again at the route (so a sensitive
route stays protected even if mounted on an app without the global check), and — once the
operator enrolled a TOTP second factor (``openred auth enroll``, the authentication module) —
a valid admin token (``X-OpenRed-Admin-Token``, from ``openred auth login``) or a fresh code
(``X-OpenRed-TOTP``). If a second factor is enrolled but the authentication module is not
loaded, sensitive actions are refused (503): disabling the module never drops the factor.

Before the key is looked at, :func:`require_local_caller` refuses (403 ``admin-browser``) what
a browser page sends and the CLI never does: a ``Host`` that is not a loopback name (a page on
``evil.example`` made to resolve to 127.0.0.1, DNS rebinding), an ``Origin`` header, or a
``Sec-Fetch-Site`` other than ``none``. The bearer key is not a credential a browser attaches
by itself, so this is depth, not the only wall: it keeps pages off the API even if the key is
ever typed into one, and a CORS preflight gets no ``Access-Control-Allow-*`` header.

The CLI keeps its admin token in ``DATA_DIR/admin-token`` (0600,
:mod:`openred.modules.authentication.files`).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from quart import current_app, request

from openred.errors import RequestRefused
from openred.modules.authentication.files import ADMIN_TOKEN_HEADER, TOTP_HEADER, TOTP_STATE_FILE
from openred.node.admin_keys import ADMIN_KEY_FILE, ensure_admin_key, read_admin_key
from openred.web.browsers import from_browser

__all__ = [
    "ADMIN_KEY",
    "ADMIN_KEY_FILE",
    "SECOND_FACTOR",
    "ensure_admin_key",
    "is_sensitive",
    "read_admin_key",
    "require_bearer",
    "require_local_caller",
    "require_second_factor",
    "sensitive",
]

ADMIN_KEY = "openred.admin.key"
"""Key of the expected bearer key (str) in the admin app's ``config``."""

SECOND_FACTOR = "openred.admin.second_factor"
"""Key of the authentication module's ``OperatorAuth`` in the admin app's ``extensions``."""

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def require_local_caller() -> None:
    """Refuse the current request (403) if a browser page could have sent it (module doc)."""
    if from_browser(request.headers.get("Host"), request.headers.get("Origin"),
                    request.headers.get("Sec-Fetch-Site"), loopback=True):
        raise RequestRefused(403, "admin-browser",
                             "the admin API answers local programs such as the openred CLI, "
                             "not web pages (Host, Origin or Sec-Fetch-Site say this is one)")


def require_bearer() -> None:
    """Refuse the current request (401) unless it carries the admin key as a bearer token."""
    expected: str = current_app.config[ADMIN_KEY]
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), expected.encode("utf-8")
    ):
        raise RequestRefused(401, "admin-unauthorized",
                             "the admin API needs the bearer key from the data directory",
                             extra={})


async def require_second_factor() -> None:
    """Refuse the current request unless the enrolled second factor (if any) is satisfied."""
    guard = current_app.extensions.get(SECOND_FACTOR)
    if guard is None:
        from openred.node.admin import NODE_APP
        from openred.node.routes import EXTENSION

        node_app = current_app.extensions.get(NODE_APP)
        services = node_app.extensions.get(EXTENSION) if node_app is not None else None
        data_dir = getattr(getattr(services, "settings", None), "data_dir", None)
        if isinstance(data_dir, Path) and (data_dir / TOTP_STATE_FILE).exists():
            raise RequestRefused(503, "second-factor-unavailable",
                                 "a second factor is enrolled but the authentication module "
                                 "is not loaded: enable it (OPENRED_MODULES)", retry_after=60)
        return
    await guard.require(token=request.headers.get(ADMIN_TOKEN_HEADER) or None,
                        code=request.headers.get(TOTP_HEADER) or None,
                        connection=(request.scope.get("client"), request.scope.get("server")))


def sensitive(func: F) -> F:
    """Mark an admin route as sensitive: the bearer key and the second factor when enrolled."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_local_caller()
        require_bearer()
        await require_second_factor()
        return await func(*args, **kwargs)

    wrapper.__openred_sensitive__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def is_sensitive(func: Callable[..., Any]) -> bool:
    """Whether ``func`` was marked with :func:`sensitive`."""
    return bool(getattr(func, "__openred_sensitive__", False))

