"""The operator's second-factor files and header names (no web framework imported here).

``DATA_DIR/operator-totp.json`` holds the enrolled TOTP secret, wrapped by the jail
(:mod:`.operator`); ``DATA_DIR/admin-token`` (0600) the CLI's short-lived admin token, which
:class:`~openred.cli_client.AdminClient` sends as ``X-OpenRed-Admin-Token``.
"""

from __future__ import annotations

import os
from pathlib import Path

from openred.errors import ConfigurationError

__all__ = [
    "ADMIN_TOKEN_FILE",
    "ADMIN_TOKEN_HEADER",
    "TOTP_HEADER",
    "TOTP_STATE_FILE",
    "read_admin_token",
    "write_admin_token",
]

TOTP_STATE_FILE = "operator-totp.json"
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 - a file name, not a secret
ADMIN_TOKEN_HEADER = "X-OpenRed-Admin-Token"  # noqa: S105 - a header name
TOTP_HEADER = "X-OpenRed-TOTP"


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
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}; remove it and log in "
                                 "again") from exc
    except UnicodeDecodeError:
        raise ConfigurationError(f"cannot read {path}: not UTF-8 text; remove it and log in "
                                 "again") from None
    # An expiry is a Unix time in seconds: 20 digits is past 2^64; more cannot be parsed.
    if (not token or not (expires.isascii() and expires.isdigit()) or len(expires) > 20
            or int(expires) <= now):
        return None
    return token
