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
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from quart import current_app, request

from openred.errors import ConfigurationError, RequestRefused

__all__ = [
    "ADMIN_KEY",
    "ADMIN_KEY_FILE",
    "ensure_admin_key",
    "is_sensitive",
    "read_admin_key",
    "require_bearer",
    "sensitive",
]

ADMIN_KEY_FILE = "admin-key"
ADMIN_KEY = "openred.admin.key"
"""Key of the expected bearer key (str) in the admin app's ``config``."""

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def ensure_admin_key(data_dir: Path) -> str:
    """The admin key in ``data_dir``, created (0600) when missing."""
    path = data_dir / ADMIN_KEY_FILE
    if not path.exists():
        key = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_admin_key(data_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key + "\n")
        return key
    return read_admin_key(data_dir)


def read_admin_key(data_dir: Path) -> str:
    """The admin key; ConfigurationError when absent, empty or readable by others."""
    path = data_dir / ADMIN_KEY_FILE
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigurationError(f"no admin key at {path}: run `openred node init`") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigurationError(f"{path} is readable by others: chmod 600 it")
    if not key:
        raise ConfigurationError(f"{path} is empty")
    return key


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
