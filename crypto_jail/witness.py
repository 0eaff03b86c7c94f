"""The jail as a witness of its own log: every checkpoint it signs extends the last one.

Without it, a process that can talk to the jail (a compromised node: docs/threat-model.md) can
rewrite the node's whole history — re-sign every entry hash *and* every checkpoint of a forged
log — and ``audit_tools verify`` finds nothing, because nothing outside the database remembers
what the log was. The jail does: it keeps, per origin, the tree head of the newest checkpoint
it signed (its origin, size and root lines: the body without extension lines), in memory and
in a small file beside the keystore, and signs a new
checkpoint only when

* its size is larger and a consistency proof (RFC 9162 §2.1.4) from the witnessed tree to the
  new one verifies, or
* its size and root are the witnessed ones (signing the same checkpoint again).

A smaller tree, another root at the same size, or a larger tree without a valid proof is
refused: a forked or rolled-back log never gets a checkpoint again. ``witnessed`` hands the
witnessed body out (public data) so the node can check, each time it opens its log, that the
file still holds what the jail signed (a log rolled back or rewritten while the node was
stopped is refused).

The file has two fixed-size slots (no rename, which the jail's seccomp filter does not allow),
each with a counter and a SHA-256 of its contents; the newest intact slot wins. A write goes to
the slot that does *not* hold the newest content made durable (``fsync``), so a torn write —
or a power loss before an ``fsync`` — leaves that one: the witness can come back older than
what was signed, never damaged and never ahead. A file that cannot be read at all is an error
at start (the jail does not silently forget what it witnessed), and so is a path that is not
a regular file of the jail's user (a FIFO, a symbolic link), one larger than two slots, or one
that group or others may write (whoever may write it may roll the witness back).

How durable a new checkpoint must be before its signature leaves is the caller's ``durable``
(docs/decisions.md, "The directory's jail witnesses its log"): always written to the file
first (so it survives the death of any process), and ``fsync``-ed too unless ``durable`` is
False. Lagging is safe because a checkpoint is only ever signed over entries its log has
already committed: after a power loss the witness is at most as new as the log, never newer
(which would stop an intact log from opening).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from crypto_jail.errors import BAD_REQUEST, REFUSED, JailFailure, OpRefused
from crypto_jail.structures import is_checkpoint_body

__all__ = ["SLOT_SIZE", "Witness", "WitnessError", "holds_checkpoints", "verify_consistency"]

SLOT_SIZE = 4096
_MAGIC = b"openred-jail-witness/1\n"
_NODE = b"\x01"
MAX_PROOF = 64  # hashes: a consistency proof of trees below 2**63 entries is shorter


class WitnessError(JailFailure):
    """The witness file cannot be read or written (the message is printable)."""


def _checkpoint(body: bytes) -> tuple[str, int, bytes]:
    """(origin, size, root) of a body already checked by ``structures.is_checkpoint_body``."""
    origin, size, root = body.decode("utf-8").split("\n")[:3]
    return origin, int(size), base64.b64decode(root)


def _head(body: bytes) -> bytes:
    """The tree head of a checkpoint body: its origin, size and root lines (no extensions)."""
    return b"".join(line + b"\n" for line in body.split(b"\n")[:3])


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2 for 0 < old_size < new_size: whether the old tree is a prefix."""
    if not 0 < old_size < new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _node(c, fr)
            sr = _node(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def holds_checkpoints(data: bytes) -> bool:
    """Whether a witness file's ``data`` holds a slot naming any checkpoint: read only, for
    ``openred directory init``, which finishes an init stopped before its log began (an empty
    witness) but never one whose log the jail has signed a checkpoint of."""
    return any(parsed is not None and parsed[1]
               for parsed in (Witness._parse_slot(data[i * SLOT_SIZE:(i + 1) * SLOT_SIZE])
                              for i in (0, 1)))


class Witness:
    """The newest checkpoint body signed per origin, kept durably in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._bodies: dict[str, bytes] = {}
        self._counter = 0
        # The slot holding the newest content known durable, and whether a newer one was
        # written (not synced) since: the next write goes to the other slot.
        self._durable_slot = 0
        self._dirty = False
        self._fd = self._open(path)
        try:
            found = self._load(os.pread(self._fd, 2 * SLOT_SIZE, 0))
            if found:
                # What was read may be a write a previous jail never synced (it died, the
                # machine did not): make it the durable slot before writing the other one.
                os.fsync(self._fd)
            else:
                # An intact slot from the start, so that no torn write can leave none.
                self._write_slot(0, self._slot(0, {}))
                self._sync(0)
        except OSError as exc:
            os.close(self._fd)
            raise WitnessError(
                f"cannot read the witness file {path}: {exc.strerror or exc}") from None
        except OpRefused as exc:
            os.close(self._fd)
            raise WitnessError(f"{path}: {exc.detail}") from None
        except BaseException:
            os.close(self._fd)
            raise

    @staticmethod
    def _open(path: Path) -> int:
        """Open (create) the file, which must be a regular file of this user that no one else
        may write and no larger than a witness: else WitnessError, before a byte is read.

        Not through a symbolic link, and without blocking on a FIFO planted at the path.
        """
        flags = (os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise WitnessError(
                f"cannot open the witness file {path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WitnessError(f"the witness file {path} is not a regular file")
            if info.st_size > 2 * SLOT_SIZE:
                raise WitnessError(f"{path} is not a witness file ({info.st_size} bytes; a "
                                   f"witness has at most {2 * SLOT_SIZE})")
            if info.st_uid != os.geteuid():
                raise WitnessError(f"the witness file {path} belongs to uid {info.st_uid}, "
                                   "not to this jail's user")
            if info.st_mode & 0o022:
                raise WitnessError(f"the witness file {path} has mode "
                                   f"{stat.S_IMODE(info.st_mode):04o}: others could roll it "
                                   "back (chmod 600)")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _load(self, data: bytes) -> bool:
        """Read the newest intact slot of the file's ``data``; whether the file held one."""
        best: tuple[int, dict[str, bytes]] | None = None
        for index in (0, 1):
            slot = data[index * SLOT_SIZE:(index + 1) * SLOT_SIZE]
            parsed = self._parse_slot(slot)
            if parsed is not None and (best is None or parsed[0] > best[0]):
                best = parsed
                self._durable_slot = index
        if best is None:
            if data.strip(b"\x00"):
                raise WitnessError(f"the witness file {self.path} is damaged: no slot is intact "
                                   "(move it away only if the log itself verifies)")
            return False
        # An intact slot is no proof of origin (its SHA-256 is no MAC): ``witnessed`` signs what
        # the file holds, so it must hold checkpoint bodies of their origins and nothing else.
        for origin, body in best[1].items():
            if not is_checkpoint_body(body, origin=origin):
                raise WitnessError(f"the witness file {self.path} holds something that is not a "
                                   f"checkpoint of {origin!r}: it was not written by a jail")
        self._counter, self._bodies = best
        return True

    @staticmethod
    def _parse_slot(slot: bytes) -> tuple[int, dict[str, bytes]] | None:
        if not slot.startswith(_MAGIC) or len(slot) < len(_MAGIC) + 32:
            return None
        digest, rest = slot[len(_MAGIC):len(_MAGIC) + 32], slot[len(_MAGIC) + 32:]
        length = int.from_bytes(rest[:4], "big")
        content = rest[4:4 + length]
        if len(content) != length or hashlib.sha256(content).digest() != digest:
            return None
        try:
            record = json.loads(content)
            bodies = {str(o): base64.b64decode(b, validate=True)
                      for o, b in record["checkpoints"].items()}
            return int(record["counter"]), bodies
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None

    @staticmethod
    def _slot(counter: int, bodies: dict[str, bytes]) -> bytes:
        content = json.dumps({
            "counter": counter,
            "checkpoints": {o: base64.b64encode(b).decode() for o, b in sorted(bodies.items())},
        }, separators=(",", ":")).encode()
        slot = _MAGIC + hashlib.sha256(content).digest() + len(content).to_bytes(4, "big") + content
        if len(slot) > SLOT_SIZE:
            raise OpRefused(REFUSED, "the witness holds too many origins")
        return slot

    def _write_slot(self, index: int, slot: bytes) -> None:
        try:
            os.lseek(self._fd, index * SLOT_SIZE, os.SEEK_SET)
            data = slot.ljust(SLOT_SIZE, b"\x00")
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            raise OpRefused(REFUSED, f"the witness file cannot be written: {exc.strerror or exc}") \
                from None

    def _sync(self, written: int) -> None:
        """``fsync``; slot ``written`` (the last one written) is then the durable one."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise OpRefused(REFUSED, f"the witness file cannot be synced: {exc.strerror or exc}") \
                from None
        self._durable_slot = written
        self._dirty = False

    def _store(self, bodies: dict[str, bytes], *, durable: bool) -> None:
        counter = self._counter + 1
        target = 1 - self._durable_slot
        self._write_slot(target, self._slot(counter, bodies))
        self._counter = counter
        self._dirty = True
        if durable:
            self._sync(target)

    def witnessed(self, origin: str) -> bytes | None:
        """The tree head (origin, size and root lines) of the newest checkpoint signed for
        ``origin``, or None. A file written before heads were kept may give a whole body."""
        with self._lock:
            return self._bodies.get(origin)

    def sign(self, body: bytes, proof: Sequence[bytes] | None,
             sign: Callable[[bytes], bytes], *, durable: bool = True) -> bytes:
        """Check ``body`` extends the witnessed checkpoint, sign it, remember it; the signature.

        The body must already have passed the jail's origin and structure checks. It is in the
        file before the signature is returned, and synced to disk too when ``durable`` (a
        ``durable`` call also syncs a body written before without, signing it again).
        """
        origin, size, root = _checkpoint(body)
        if proof is not None and len(proof) > MAX_PROOF:
            raise OpRefused(BAD_REQUEST, f"at most {MAX_PROOF} consistency proof hashes")
        with self._lock:
            held = self._bodies.get(origin)
            if held is not None:
                _, held_size, held_root = _checkpoint(held)
                if size < held_size:
                    raise OpRefused(REFUSED, f"this jail signed a checkpoint of size {held_size} "
                                             "already: a log never shrinks")
                if size == held_size:
                    if root != held_root:
                        raise OpRefused(REFUSED, f"this jail signed another root at size {size}")
                elif not verify_consistency(held_size, size, held_root, root, proof or ()):
                    raise OpRefused(REFUSED, f"no valid consistency proof from the checkpoint "
                                             f"this jail signed last (size {held_size})")
            signature = sign(body)
            # Only the tree head is kept: it is all the next check needs, and a body's
            # extension lines (up to 8 KiB) would crowd the other origins out of the slot.
            head = _head(body)
            if held != head:
                self._store({**self._bodies, origin: head}, durable=durable)
                self._bodies[origin] = head
            elif durable and self._dirty:
                self._sync(1 - self._durable_slot)
            return signature

    def close(self) -> None:
        """Sync what was written without (a jail that stops cleanly leaves it durable)."""
        with self._lock:
            try:
                if self._dirty:
                    self._sync(1 - self._durable_slot)
            except OpRefused:
                pass  # it stays what the page cache holds: at worst older after a power loss
            finally:
                os.close(self._fd)
