"""Private files replaced atomically: what every part writes beside its database.

Nonce caches, session ledgers, ``.env`` files, the operator's keys and the jail's owner note are
small files only this user may read, rewritten whole. :func:`write_private` is the one way they
are written.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


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
