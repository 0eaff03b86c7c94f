"""Session ciphers (DESIGN §6): the two Noise transport keys as explicit-counter AEAD channels.

A :class:`SessionCipher` is one node's end of a session: a sending key and a receiving key (the
two outputs of Noise Split), the suite's AEAD from :mod:`crypto_jail.noise`, an explicit 64-bit
counter on every message (the Noise nonce, Noise rev 34 §5.1, so messages may arrive out of
order), and a :class:`ReplayWindow` on the receiving side.

Counter and epochs
    The 64-bit counter carries the key epoch in its upper 32 bits: ``counter = epoch << 32 |
    index``. Epoch 0 uses the Split key itself; each later epoch's key is
    ``HKDF-SHA256(previous epoch key, salt=empty, info=b"openred/v3 session epoch" ‖
    epoch.to_bytes(8, "big"))`` and the previous key is dropped, so a leaked key does not
    decrypt earlier epochs. The sender moves on with :meth:`SessionCipher.rotate` (the node
    calls it on its own schedule, e.g. hourly) or automatically when an epoch's 2^32 counters
    are used up; the receiver reads the epoch from the counter and follows deterministically
    (at most :data:`MAX_EPOCH_SKIP` epochs ahead). Each direction has its own key chain.
    Rotation moves the counter to the new epoch's start, so messages still in flight from the
    old epoch fall below the replay window and are refused: rotate when the channel is quiet.
    Counter 2^64-1 is reserved by Noise and never sent.

Replay window
    WireGuard-style RFC 6479 ring of :data:`WINDOW_BITS` bits (64 blocks of 64), which tracks
    the last ``WINDOW_BITS - 64`` = 4032 counters exactly: check before decrypting, mark only
    after the AEAD accepted the message.

Persistence
    :meth:`SessionCipher.to_state` serializes keys, epochs, counters and the window (versioned;
    the node has the jail ``wrap`` it before it touches disk). A saved state can be restored
    any number of times (a crash, a copied backup, two processes), so the state alone cannot
    say which nonces were used after it was saved. A durable :class:`SessionLedger` records,
    per session, two high-water marks *before* they are used:

    * the highest send epoch ever entered: every epoch a sender moves into — by
      :meth:`~SessionCipher.rotate`, by running out of counters, or by
      :meth:`~SessionCipher.from_state` — is first reserved with
      :meth:`SessionLedger.reserve_send_epoch`, which returns an epoch above every one it
      returned before for that session. Restoring the same state twice therefore gives two
      different fresh epochs, hence two different keys: no (key, nonce) pair is used twice.
    * a bound on the receive counters accepted: before :meth:`~SessionCipher.decrypt` returns
      a message whose counter is above the recorded mark, it raises the mark to that counter
      plus ``recv_reserve`` (default :data:`RECV_RESERVE`, 64; one durable
      :meth:`SessionLedger.raise_recv_mark` per ``recv_reserve`` messages in order). A
      restored receiver refuses every counter up to the recorded mark, so no message accepted
      after the save is accepted again.

    A crash between a reservation and its use only wastes it: an epoch (of 2^32) or up to
    ``recv_reserve`` of the peer's next counters, which the restored side refuses as replays
    (the peer's messages in that gap are lost, never accepted twice). A crash between
    ``from_state`` and saving the new state is the same case: the next restore reserves yet
    another epoch. Bind the ledger when the session is created (``ledger=``, ``session_id=``)
    if its state will ever be saved: a sender that rotated unbound after a save is not known
    to the ledger. :class:`FileSessionLedger` is a small durable ledger (one fsynced JSON
    file); a node may keep the same marks in its own store.

Errors: :class:`~openred.errors.ReplayDetected` for a counter seen before, below the window or
from a retired epoch; :class:`~openred.errors.DecryptionFailed` for anything the AEAD refuses
(tampered ciphertext, AD or counter, wrong key); :class:`~openred.errors.CryptoError` for an
exhausted session or malformed saved state; :class:`~openred.errors.InvalidKey` for bad keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto_jail.noise import SUITES, CipherFunction, Suite
from openred.errors import CryptoError, DecryptionFailed, InvalidKey, ReplayDetected, UnknownSuite

__all__ = [
    "EPOCH_INFO",
    "EPOCH_SHIFT",
    "MAX_COUNTER",
    "MAX_EPOCH",
    "MAX_EPOCH_SKIP",
    "RECV_RESERVE",
    "STATE_VERSION",
    "WINDOW_BITS",
    "FileSessionLedger",
    "MemorySessionLedger",
    "ReplayWindow",
    "SessionCipher",
    "SessionLedger",
    "derive_epoch_key",
]

KEY_LEN: Final = 32
EPOCH_SHIFT: Final = 32
MAX_COUNTER: Final = 2**64 - 1  # reserved by Noise (§5.1): never used as a nonce
MAX_EPOCH: Final = MAX_COUNTER >> EPOCH_SHIFT
MAX_EPOCH_SKIP: Final = 1024
WINDOW_BITS: Final = 4096
EPOCH_INFO: Final = b"openred/v3 session epoch"
STATE_MAGIC: Final = b"ORSC"
STATE_VERSION: Final = 1
_BLOCK_BITS: Final = 64
RECV_RESERVE: Final = 64
"""How far past an accepted counter the durable receive mark is raised in one write."""

_Aead = ChaCha20Poly1305 | AESGCM
_TAG_LEN: Final = 16  # both suites' AEADs


class SessionLedger(Protocol):
    """Durable per-session high-water marks (see the module doc); each call returns only once
    what it records would survive a crash."""

    def reserve_send_epoch(self, session_id: str, at_least: int) -> int:
        """Record and return an epoch >= ``at_least`` above every one returned before."""
        ...

    def raise_recv_mark(self, session_id: str, mark: int) -> None:
        """Record that counters up to ``mark`` may have been accepted (marks only grow)."""
        ...

    def recv_mark(self, session_id: str) -> int:
        """The recorded receive mark (-1 if none)."""
        ...


class MemorySessionLedger:
    """A :class:`SessionLedger` in memory: for tests, or a process that never restores."""

    def __init__(self) -> None:
        self.send: dict[str, int] = {}
        self.recv: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve_send_epoch(self, session_id: str, at_least: int) -> int:
        with self._lock:
            epoch = max(at_least, self.send.get(session_id, -1) + 1)
            self.send[session_id] = epoch
            return epoch

    def raise_recv_mark(self, session_id: str, mark: int) -> None:
        with self._lock:
            self.recv[session_id] = max(mark, self.recv.get(session_id, -1))

    def recv_mark(self, session_id: str) -> int:
        with self._lock:
            return self.recv.get(session_id, -1)

    def forget(self, session_ids: Iterable[str]) -> int:
        """Drop every mark of ``session_ids``; how many sessions had any.

        Only for sessions that can never be restored or used again (the node forgets a session
        once it ended — expired or renewed — and its row was cleaned, see
        :mod:`openred.node.cleaning`): a session forgotten and then restored from a saved state
        would reserve a send epoch it may have used before.
        """
        with self._lock:
            return _drop(self.send, self.recv, session_ids)


def _drop(send: dict[str, int], recv: dict[str, int], session_ids: Iterable[str]) -> int:
    dropped = 0
    for session_id in set(session_ids):
        had = send.pop(session_id, None) is not None
        had = recv.pop(session_id, None) is not None or had
        dropped += had
    return dropped


class FileSessionLedger(MemorySessionLedger):
    """A :class:`SessionLedger` in one JSON file, replaced atomically and fsynced per change.

    Every change re-reads the file under an exclusive ``flock`` on a lock file beside it, so
    several processes (or two restores racing) sharing one ledger file never hand out the
    same epoch. Changes are rare (an epoch change, or every :data:`RECV_RESERVE` messages
    received); a busy node with many sessions keeps the same marks in its own database.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError) as exc:
            raise CryptoError(f"session ledger {self.path} is unreadable") from exc
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(name), dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in doc[name].values())
            for name in ("send", "recv")
        ):
            raise CryptoError(f"session ledger {self.path} is malformed")
        self.send, self.recv = dict(doc["send"]), dict(doc["recv"])

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread and no other process: the file as it is now, for one change."""
        with self._lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._load()
                yield
            finally:
                os.close(fd)  # releases the flock

    def _persist(self) -> None:
        data = json.dumps({"send": self.send, "recv": self.recv}, sort_keys=True).encode()
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def reserve_send_epoch(self, session_id: str, at_least: int) -> int:
        with self._exclusive():
            epoch = max(at_least, self.send.get(session_id, -1) + 1)
            self.send[session_id] = epoch
            self._persist()
            return epoch

    def raise_recv_mark(self, session_id: str, mark: int) -> None:
        with self._exclusive():
            if mark > self.recv.get(session_id, -1):
                self.recv[session_id] = mark
                self._persist()

    def recv_mark(self, session_id: str) -> int:
        with self._exclusive():
            return self.recv.get(session_id, -1)

    def forget(self, session_ids: Iterable[str]) -> int:
        """Drop every mark of ``session_ids`` from the file (one fsynced replacement, none when
        the file names none of them); how many sessions had any. See
        :meth:`MemorySessionLedger.forget` for when this is safe."""
        wanted = set(session_ids)
        if not wanted or not self.path.exists():  # no file: nothing recorded to forget
            return 0
        with self._exclusive():
            dropped = _drop(self.send, self.recv, wanted)
            if dropped:
                self._persist()
            return dropped


def derive_epoch_key(previous: bytes, epoch: int) -> bytes:
    """The key of ``epoch`` from the key of ``epoch - 1`` (HKDF-SHA256, RFC 5869)."""
    hkdf = HKDF(
        algorithm=SHA256(), length=KEY_LEN, salt=b"", info=EPOCH_INFO + epoch.to_bytes(8, "big")
    )
    return hkdf.derive(previous)


class ReplayWindow:
    """RFC 6479 sliding-window replay check over a ring of 64-bit blocks.

    The ring holds ``size`` bits (``size // 64`` blocks); counters in ``(top - width, top]``
    where ``width = size - 64`` are tracked exactly, older ones are refused. :meth:`check`
    never changes state; :meth:`mark` is called only once the message authenticated
    (RFC 6479 §2: the window is updated after the integrity check).
    """

    __slots__ = ("_blocks", "_mask", "_top", "size", "width")

    def __init__(
        self, size: int = WINDOW_BITS, *, top: int = -1, blocks: list[int] | None = None
    ) -> None:
        nblocks = size // _BLOCK_BITS
        if size < 2 * _BLOCK_BITS or nblocks * _BLOCK_BITS != size or nblocks & (nblocks - 1):
            raise ValueError("window size must be a power-of-two number of 64-bit blocks (>= 2)")
        if blocks is not None and (
            len(blocks) != nblocks or not all(0 <= b < 1 << _BLOCK_BITS for b in blocks)
        ):
            raise ValueError("window blocks do not match the window size")
        if top < -1:
            raise ValueError("window top out of range")
        self.size = size
        self.width = size - _BLOCK_BITS
        self._mask = nblocks - 1
        self._top = top
        self._blocks = [0] * nblocks if blocks is None else list(blocks)

    @property
    def top(self) -> int:
        """The highest counter accepted so far (-1 before the first)."""
        return self._top

    def check(self, counter: int) -> None:
        """Raise ReplayDetected if ``counter`` was accepted before or is below the window."""
        top = self._top
        if counter > top:
            return
        if top - counter >= self.width:
            raise ReplayDetected("counter is below the replay window")
        if (self._blocks[(counter >> 6) & self._mask] >> (counter & 63)) & 1:
            raise ReplayDetected("counter was already received")

    def mark(self, counter: int) -> None:
        """Record ``counter`` as received (after :meth:`check` and successful decryption)."""
        blocks, mask = self._blocks, self._mask
        index = counter >> 6
        if counter > self._top:
            current = self._top >> 6
            if index != current:
                # Moving into new blocks: clear the ring slots they reuse (RFC 6479 §2).
                for block in range(current + 1, min(index, current + mask + 1) + 1):
                    blocks[block & mask] = 0
            self._top = counter
        blocks[index & mask] |= 1 << (counter & 63)

    def accepts(self, counter: int) -> bool:
        """Whether :meth:`check` would pass."""
        try:
            self.check(counter)
        except ReplayDetected:
            return False
        return True

    def blocks(self) -> list[int]:
        """A copy of the ring (for serialization)."""
        return list(self._blocks)


def _suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnknownSuite(f"unknown Noise suite {name!r}") from None


def _open_into(aead: _Aead, nonce: bytes, ciphertext: bytes, ad: bytes,
               into: bytearray) -> bytes | memoryview:
    """The AEAD's open into ``into`` (see :meth:`SessionCipher.decrypt_into`)."""
    try:
        size = len(ciphertext) - _TAG_LEN
        if size < 0:
            raise ValueError("shorter than a tag")
        if len(into) < size:
            try:
                into.extend(bytes(size - len(into)))
            except BufferError:  # still viewed by the caller: a new object this time
                return aead.decrypt(nonce, ciphertext, ad)
        view = memoryview(into)[:size]
        aead.decrypt_into(nonce, ciphertext, ad, view)
        return view
    except (InvalidTag, ValueError, OverflowError, TypeError):
        raise DecryptionFailed("message does not authenticate") from None


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        raise InvalidKey(f"session keys are {KEY_LEN} bytes")
    return bytes(key)


class SessionCipher:
    """One end of a session: encrypt with an explicit counter, decrypt once per counter."""

    __slots__ = (
        "_cipher",
        "_future",
        "_ledger",
        "_nonce",
        "_recv_aead",
        "_recv_epoch",
        "_recv_key",
        "_recv_mark",
        "_recv_reserve",
        "_send_aead",
        "_send_counter",
        "_send_epoch",
        "_send_key",
        "_send_limit",
        "_session_id",
        "_suite_name",
        "_window",
    )

    def __init__(
        self,
        suite: str,
        send_key: bytes,
        recv_key: bytes,
        *,
        send_epoch: int = 0,
        send_counter: int | None = None,
        recv_epoch: int = 0,
        window: ReplayWindow | None = None,
        ledger: SessionLedger | None = None,
        session_id: str = "",
        recv_reserve: int = RECV_RESERVE,
    ) -> None:
        if ledger is not None and not session_id:
            raise CryptoError("a session bound to a ledger needs its session_id")
        if recv_reserve < 1:
            raise CryptoError("recv_reserve must be positive")
        self._recv_reserve = recv_reserve
        self._ledger = ledger
        self._session_id = session_id
        # Counters above this mark need a ledger write before they are accepted.
        self._recv_mark = MAX_COUNTER if ledger is None else ledger.recv_mark(session_id)
        self._suite_name = suite
        self._cipher: CipherFunction = _suite(suite).cipher
        self._nonce = self._cipher.pack_nonce
        if not 0 <= send_epoch <= MAX_EPOCH or not 0 <= recv_epoch <= MAX_EPOCH:
            raise CryptoError("epoch out of range")
        if send_counter is None:
            send_counter = send_epoch << EPOCH_SHIFT
        if send_counter >> EPOCH_SHIFT != send_epoch or send_counter > MAX_COUNTER:
            raise CryptoError("send counter does not belong to the send epoch")
        self._send_epoch = send_epoch
        self._send_counter = send_counter
        self._set_send_key(_check_key(send_key))
        self._recv_epoch = recv_epoch
        self._recv_key = _check_key(recv_key)
        self._recv_aead: _Aead = self._cipher.aead_class(self._recv_key)
        self._future: list[bytes] = []  # keys of epochs recv_epoch+1, +2, … derived so far
        self._window = window if window is not None else ReplayWindow()

    @classmethod
    def from_split(
        cls,
        suite: str,
        *,
        initiator: bool,
        initiator_to_responder: bytes,
        responder_to_initiator: bytes,
        ledger: SessionLedger | None = None,
        session_id: str = "",
        recv_reserve: int = RECV_RESERVE,
    ) -> SessionCipher:
        """The session for one side from the two Noise Split keys (Noise §5.2)."""
        if initiator:
            send, recv = initiator_to_responder, responder_to_initiator
        else:
            send, recv = responder_to_initiator, initiator_to_responder
        return cls(suite, send, recv, ledger=ledger, session_id=session_id,
                   recv_reserve=recv_reserve)

    # -- properties --

    @property
    def suite(self) -> str:
        return self._suite_name

    @property
    def send_epoch(self) -> int:
        return self._send_epoch

    @property
    def send_counter(self) -> int:
        """The counter the next :meth:`encrypt` will use."""
        return self._send_counter

    @property
    def recv_epoch(self) -> int:
        return self._recv_epoch

    @property
    def window(self) -> ReplayWindow:
        return self._window

    # -- the hot path --

    def encrypt(self, plaintext: bytes, *, ad: bytes = b"") -> tuple[int, bytes]:
        """Seal ``plaintext``; returns (counter, ciphertext ‖ tag) to send together."""
        counter = self._send_counter
        if counter >= self._send_limit:
            self._advance_send(self._send_epoch + 1)
            counter = self._send_counter
        self._send_counter = counter + 1
        return counter, self._send_aead.encrypt(self._nonce(counter), plaintext, ad)

    def decrypt(self, counter: int, ciphertext: bytes, *, ad: bytes = b"") -> bytes:
        """Open a message sent with ``counter``; each counter is accepted at most once."""
        window = self._window
        top = self._admit(counter)
        if counter >> EPOCH_SHIFT == self._recv_epoch:
            try:
                plaintext = self._recv_aead.decrypt(self._nonce(counter), ciphertext, ad)
            except (InvalidTag, ValueError, OverflowError, TypeError):
                raise DecryptionFailed("message does not authenticate") from None
        else:
            plaintext = self._decrypt_other_epoch(counter, ciphertext, ad)
        if counter > self._recv_mark:  # authenticated: record it durably before accepting
            self._raise_recv_mark(counter)
        index = counter >> 6
        if counter > top and index == top >> 6:
            # In order within the current 64-bit block: the same bit mark() would set.
            window._blocks[index & window._mask] |= 1 << (counter & 63)
            window._top = counter
        else:
            window.mark(counter)
        return plaintext

    def decrypt_into(self, counter: int, ciphertext: bytes, into: bytearray, *,
                     ad: bytes = b"") -> bytes | memoryview:
        """:meth:`decrypt`, with the plaintext written into ``into``: no new object its size.

        Same checks, same refusals, same marks, in the same order; returns a memoryview of
        ``into``'s first ``len(ciphertext) - 16`` bytes. ``into`` grows when it is too short,
        unless something still views it: then, and for a counter of another epoch, the
        plaintext is a new bytes object as from :meth:`decrypt`. After a refusal ``into``
        holds garbage.
        """
        self._admit(counter)
        if counter >> EPOCH_SHIFT != self._recv_epoch:
            return self.decrypt(counter, ciphertext, ad=ad)
        plaintext = _open_into(self._recv_aead, self._nonce(counter), ciphertext, ad, into)
        if counter > self._recv_mark:  # authenticated: record it durably before accepting
            self._raise_recv_mark(counter)
        self._window.mark(counter)
        return plaintext

    def _admit(self, counter: int) -> int:
        """Refuse a counter out of range or seen before; the window's top before this one."""
        window = self._window
        top = window._top
        if counter > top:  # in order: a new top is always fresh, so check() is skipped
            if counter >= MAX_COUNTER:
                raise DecryptionFailed("counter out of range")
        elif counter < 0:
            raise DecryptionFailed("counter out of range")
        else:
            window.check(counter)
        return top

    def _decrypt_other_epoch(self, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
        epoch = counter >> EPOCH_SHIFT
        aead = self._aead_for(epoch)
        try:
            plaintext: bytes = aead.decrypt(self._nonce(counter), ciphertext, ad)
        except (InvalidTag, ValueError, OverflowError, TypeError):
            raise DecryptionFailed("message does not authenticate") from None
        self._commit_recv_epoch(epoch, aead)
        return plaintext

    def _raise_recv_mark(self, counter: int) -> None:
        assert self._ledger is not None
        mark = min(counter + self._recv_reserve, MAX_COUNTER - 1)
        self._ledger.raise_recv_mark(self._session_id, mark)
        self._recv_mark = mark

    # -- epochs --

    def rotate(self, epoch: int | None = None) -> int:
        """Move sending to ``epoch`` (default: the next one); returns the new send epoch."""
        target = self._send_epoch + 1 if epoch is None else epoch
        if not self._send_epoch < target <= self._send_epoch + MAX_EPOCH_SKIP:
            raise CryptoError(
                f"can only rotate forward by 1..{MAX_EPOCH_SKIP} epochs "
                f"(now {self._send_epoch}, asked {target})"
            )
        self._advance_send(target)
        return self._send_epoch

    def _set_send_key(self, key: bytes) -> None:
        self._send_key = key
        self._send_aead: _Aead = self._cipher.aead_class(key)
        # The last epoch stops one short: counter 2^64-1 is reserved.
        self._send_limit = min((self._send_epoch + 1) << EPOCH_SHIFT, MAX_COUNTER)

    def _advance_send(self, target: int) -> None:
        if target > MAX_EPOCH or self._send_counter >= MAX_COUNTER:
            raise CryptoError("session counter space exhausted; renew the session")
        if self._ledger is not None:  # reserved durably before the first nonce of the epoch
            target = self._ledger.reserve_send_epoch(self._session_id, target)
            if target > MAX_EPOCH:
                raise CryptoError("session counter space exhausted; renew the session")
        key = self._send_key
        for epoch in range(self._send_epoch + 1, target + 1):
            key = derive_epoch_key(key, epoch)
        self._send_epoch = target
        self._send_counter = target << EPOCH_SHIFT
        self._set_send_key(key)

    def _aead_for(self, epoch: int) -> _Aead:
        if epoch < self._recv_epoch:
            raise ReplayDetected("counter belongs to a retired epoch")
        ahead = epoch - self._recv_epoch
        if ahead > MAX_EPOCH_SKIP:
            raise DecryptionFailed("counter is too many epochs ahead")
        # Future keys are derivable from the current one anyway, so caching them costs no
        # forward secrecy and stops forged far-ahead counters from costing HKDF work each time.
        while len(self._future) < ahead:
            previous = self._future[-1] if self._future else self._recv_key
            self._future.append(
                derive_epoch_key(previous, self._recv_epoch + len(self._future) + 1)
            )
        return self._cipher.aead_class(self._future[ahead - 1])

    def _commit_recv_epoch(self, epoch: int, aead: _Aead) -> None:
        ahead = epoch - self._recv_epoch
        self._recv_key = self._future[ahead - 1]
        del self._future[:ahead]
        self._recv_epoch = epoch
        self._recv_aead = aead

    # -- persistence --

    def to_state(self) -> bytes:
        """Versioned bytes of keys, epochs, counters and window (wrap them before storing)."""
        suite = self._suite_name.encode("ascii")
        window = self._window
        size = window.size
        return b"".join(
            (
                _HEADER.pack(STATE_MAGIC, STATE_VERSION, len(suite)),
                suite,
                _BODY.pack(
                    self._send_key,
                    self._send_epoch,
                    self._send_counter,
                    self._recv_key,
                    self._recv_epoch,
                    size,
                    window.top + 1,
                ),
                struct.pack(f">{size // _BLOCK_BITS}Q", *window.blocks()),
            )
        )

    @classmethod
    def from_state(
        cls, data: bytes, *, ledger: SessionLedger, session_id: str,
        recv_reserve: int = RECV_RESERVE,
    ) -> SessionCipher:
        """Restore :meth:`to_state` output bound to ``ledger`` (see the module doc).

        Sending resumes in a fresh epoch the ledger reserves (never one used before, however
        often this state is restored); receiving refuses every counter up to the ledger's
        receive mark.
        """
        try:
            magic, version, suite_len = _HEADER.unpack_from(data, 0)
            if magic != STATE_MAGIC or version != STATE_VERSION:
                raise CryptoError("session state has an unknown format or version")
            offset = _HEADER.size
            suite = bytes(data[offset : offset + suite_len]).decode("ascii")
            offset += suite_len
            (send_key, send_epoch, send_counter, recv_key, recv_epoch, size, top1) = (
                _BODY.unpack_from(data, offset)
            )
            offset += _BODY.size
            if size < 2 * _BLOCK_BITS or size % _BLOCK_BITS or len(data) != offset + size // 8:
                raise CryptoError("session state has the wrong length")
            blocks = list(struct.unpack_from(f">{size // _BLOCK_BITS}Q", data, offset))
            window = ReplayWindow(size, top=top1 - 1, blocks=blocks)
            session = cls(
                suite,
                send_key,
                recv_key,
                send_epoch=send_epoch,
                send_counter=send_counter,
                recv_epoch=recv_epoch,
                window=window,
                ledger=ledger,
                session_id=session_id,
                recv_reserve=recv_reserve,
            )
        except (struct.error, UnicodeDecodeError, ValueError, UnknownSuite, InvalidKey) as exc:
            raise CryptoError("session state is malformed") from exc
        if window.top >= 0 and window.top >> EPOCH_SHIFT > recv_epoch:
            raise CryptoError("session state is inconsistent")
        floor = session._recv_mark
        if floor > window.top:
            # Anything up to the mark may have been accepted after this state was saved.
            session._window = ReplayWindow(
                size, top=floor, blocks=[(1 << _BLOCK_BITS) - 1] * (size // _BLOCK_BITS)
            )
        session._advance_send(session._send_epoch + 1)
        return session


_HEADER = struct.Struct(">4sBB")
# send key, send epoch, send counter, recv key, recv epoch, window bits, window top + 1
_BODY = struct.Struct(">32sIQ32sIHQ")
