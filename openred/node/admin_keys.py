"""The admin key file ``DATA_DIR/admin-key`` (0600): created by ``openred node init``, read by
the node (to check bearer tokens) and by the CLI (to send them). No web framework imported here,
so the CLI starts fast.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from openred.errors import ConfigurationError

__all__ = ["ADMIN_KEY_FILE", "ensure_admin_key", "read_admin_key"]

ADMIN_KEY_FILE = "admin-key"


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
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigurationError(f"cannot read {path}: not UTF-8 text") from None
    if mode & 0o077:
        raise ConfigurationError(f"{path} is readable by others: chmod 600 it")
    if not key:
        raise ConfigurationError(f"{path} is empty")
    return key
