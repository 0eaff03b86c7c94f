"""Private files replaced atomically: what every part writes beside its database.

Nonce caches, session ledgers, ``.env`` files, the operator's keys and the jail's owner note are
small files only this user may read, rewritten whole. :func:`write_private` is the one way they
are written.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from openred.errors import ConfigurationError

__all__ = ["SERVE_LOCK", "check_data_dir", "hold_serve_lock", "write_private"]

SERVE_LOCK = "serve.lock"


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8): mode 0600 from the start, fsynced, atomically.

    The temporary file beside it (``<name>.tmp``) is created exclusively: a file or symbolic
    link planted at that name is removed first, never followed, so the write cannot be turned
    onto another file. A reader sees the old content or the new, never a part.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_data_dir(data_dir: Path) -> None:
    """ConfigurationError if ``data_dir`` exists and other users may write into it.

    Whoever may write into the data directory may rename the ``.env``, keystore, database or
    passphrase file away and put their own there (a file's own mode does not stop that), and a
    sticky bit still lets them create one that is not there yet (``jail-passphrase`` when the
    passphrase comes from the environment, ``nonces.json``). ``init`` creates the directory
    0700; one the operator made world-writable is refused, as sshd refuses such a home. A
    group-writable one is left alone: with user-private groups (umask 002) that group is the
    user.
    """
    try:
        mode = data_dir.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigurationError(f"cannot read {data_dir}: {exc.strerror or exc}") from None
    if mode & 0o002:
        raise ConfigurationError(
            f"{data_dir} is writable by every user (mode {mode & 0o7777:04o}): any of them "
            f"could replace its .env, keystore or database; run chmod o-w {data_dir}")


def hold_serve_lock(data_dir: Path) -> int:
    """Lock ``data_dir`` for the one process that serves it, for that process's life; the fd.

    A second ``serve`` of the same data directory used to run beside the first: both appended
    to one log through one jail, and the second removed the first's ``admin-url`` when it
    stopped, so the first node's commands said it was not running. The lock
    (``DATA_DIR/serve.lock``, an exclusive ``flock`` that holds the server's pid) goes with
    the process, however it ends; a second server is refused naming the first one's pid.
    """
    path = data_dir / SERVE_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise ConfigurationError(f"{data_dir} is already served by {who}: stop it first "
                                 "(one server per data directory)") from None
    except OSError as exc:
        os.close(fd)
        raise ConfigurationError(f"cannot lock {path}: {exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd
