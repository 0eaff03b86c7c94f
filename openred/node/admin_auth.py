"""Who may use the node's local admin API (DESIGN §10): the bearer key, and ``@sensitive``.

The admin key is a random secret in ``DATA_DIR/admin-key`` (mode 0600), created by ``openred
node init`` (or by ``serve`` when missing). Every admin request must carry it as
``Authorization: Bearer <key>``; :func:`require_bearer` checks it in constant time and refuses
with 401 (RFC 9457) otherwise. Routes that change something or reveal message contents are
also marked :func:`sensitive`: for now that means "the bearer key, checked again at the route"
(so a sensitive route stays protected even if mounted on an app without the global check); a
second factor for enrolled operators is added here by the authentication module.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from quart import current_app, request

from openred.errors import RequestRefused
from openred.node.admin_keys import ADMIN_KEY_FILE, ensure_admin_key, read_admin_key

__all__ = [
    "ADMIN_KEY",
    "ADMIN_KEY_FILE",
    "ensure_admin_key",
    "is_sensitive",
    "read_admin_key",
    "require_bearer",
    "sensitive",
]

ADMIN_KEY = "openred.admin.key"
"""Key of the expected bearer key (str) in the admin app's ``config``."""

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


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


def sensitive(func: F) -> F:
    """Mark an admin route as sensitive: it requires the bearer key (and, later, a 2nd factor)."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_bearer()
        return await func(*args, **kwargs)

    wrapper.__openred_sensitive__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def is_sensitive(func: Callable[..., Any]) -> bool:
    """Whether ``func`` was marked with :func:`sensitive`."""
    return bool(getattr(func, "__openred_sensitive__", False))
