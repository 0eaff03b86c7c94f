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

The CLI keeps its admin token in ``DATA_DIR/admin-token`` (0600, :func:`write_admin_token`).
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
    "ADMIN_TOKEN_FILE",
    "ADMIN_TOKEN_HEADER",
    "SECOND_FACTOR",
    "TOTP_HEADER",
    "TOTP_STATE_FILE",
    "ensure_admin_key",
    "is_sensitive",
    "read_admin_key",
    "read_admin_token",
    "require_bearer",
    "require_second_factor",
    "sensitive",
    "write_admin_token",
]

ADMIN_KEY_FILE = "admin-key"
ADMIN_KEY = "openred.admin.key"
"""Key of the expected bearer key (str) in the admin app's ``config``."""

SECOND_FACTOR = "openred.admin.second_factor"
"""Key of the authentication module's ``OperatorAuth`` in the admin app's ``extensions``."""
TOTP_STATE_FILE = "operator-totp.json"
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
ADMIN_TOKEN_HEADER = "X-OpenRed-Admin-Token"  # noqa: S105 - a header name
TOTP_HEADER = "X-OpenRed-TOTP"

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
                        code=request.headers.get(TOTP_HEADER) or None)


def sensitive(func: F) -> F:
    """Mark an admin route as sensitive: the bearer key and the second factor when enrolled."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        require_bearer()
        await require_second_factor()
        return await func(*args, **kwargs)

    wrapper.__openred_sensitive__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def is_sensitive(func: Callable[..., Any]) -> bool:
    """Whether ``func`` was marked with :func:`sensitive`."""
    return bool(getattr(func, "__openred_sensitive__", False))


def write_admin_token(data_dir: Path, token: str, expires_at: int) -> Path:
    """Keep the CLI's admin token in ``DATA_DIR/admin-token``, created 0600."""
    path = data_dir / ADMIN_TOKEN_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"{token} {expires_at}\n")
    tmp.replace(path)
    return path


def read_admin_token(data_dir: Path, now: float) -> str | None:
    """The CLI's admin token if there is one, unexpired, and not readable by others."""
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigurationError(f"{path} is readable by others: remove it and log in again")
        token, _, expires = path.read_text(encoding="utf-8").strip().partition(" ")
    except FileNotFoundError:
        return None
    if not token or not expires.isdigit() or int(expires) <= now:
        return None
    return token
