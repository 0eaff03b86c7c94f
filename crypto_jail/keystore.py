"""The jail's keystore: the node's Ed25519 and X25519 private keys and its wrap key, on disk.

File format (versioned JSON, written 0600 by an atomic temp-file + fsync + link)::

    {"format": "openred-jail-keystore", "version": 1,
     "protection": "argon2id-secretbox",
     "kdf": {"name": "argon2id", "opslimit": 3, "memlimit": 268435456, "salt": "<b64url 16>"},
     "public": {"sign_key": "<b64url>", "box_key": "<b64url>", "node_id": "<base32>"},
     "ciphertext": "<b64url SecretBox(secrets JSON)>"}

The secrets JSON is ``{"sign_seed", "box_private", "wrap_key"}`` (32 bytes each, base64url).
The passphrase key is Argon2id (RFC 9106) via libsodium's ``crypto_pwhash``; the secrets are
sealed with libsodium's SecretBox (XSalsa20-Poly1305). The clear ``public`` block is only a
convenience: on load it must equal the keys derived from the decrypted secrets, so a swapped
header is detected. ``"protection": "none"`` (development only) stores ``"secrets"`` in clear.

Policy (refused with a :class:`KeystoreError` saying why):

* a passphrase shorter than :data:`MIN_PASSPHRASE` bytes when a keystore is created;
* a clear keystore opened with a passphrase (the operator believes it is encrypted: it is
  not), or whose file mode gives any access to group or others (looser than 0600);
* a KDF cost below ``interactive`` (the ``min`` level, or any weaker parameters) unless the
  caller says ``test_only=True`` (``--insecure-test-kdf`` on the command line): such a
  keystore is written with ``"test_only": true`` and is refused everywhere else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.signing

from crypto_jail.errors import KeystoreError

__all__ = [
    "KDF_LEVELS",
    "MIN_PASSPHRASE",
    "TEST_KDF_LEVELS",
    "Keystore",
    "create_keystore",
    "load_keystore",
    "node_id_for",
]

FORMAT = "openred-jail-keystore"
VERSION = 1
KDF_LEVELS: dict[str, tuple[int, int]] = {
    # name -> (opslimit, memlimit); "min" exists for tests only.
    "min": (argon2id.OPSLIMIT_MIN, argon2id.MEMLIMIT_MIN),
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
DEFAULT_KDF_LEVEL = "moderate"
TEST_KDF_LEVELS = frozenset({"min"})
"""KDF levels only a keystore marked test-only may use."""
MIN_PASSPHRASE = 12
"""Shortest passphrase (bytes) a new keystore accepts: ~70 bits as random base64 characters."""
_MIN_REAL_OPSLIMIT = argon2id.OPSLIMIT_INTERACTIVE
_MIN_REAL_MEMLIMIT = argon2id.MEMLIMIT_INTERACTIVE
# A damaged or hostile file must not make the jail burn minutes or gigabytes before failing.
_MAX_OPSLIMIT = argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE
_MAX_FILE = 64 * 1024
_WRONG = "wrong passphrase or damaged keystore"


def node_id_for(sign_public: bytes) -> str:
    """Lowercase unpadded base32 of the first 20 bytes of SHA-256(sign key) (DESIGN §2)."""
    digest = hashlib.sha256(sign_public).digest()[:20]
    return base64.b32encode(digest).decode("ascii").lower()


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64d(text: object, length: int | None) -> bytes:
    if not isinstance(text, str):
        raise KeystoreError("damaged keystore: a key field is not a string")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeystoreError("damaged keystore: a key field is not base64url") from exc
    if length is not None and len(raw) != length:
        raise KeystoreError("damaged keystore: a key field has the wrong length")
    return raw


@dataclass(frozen=True, slots=True)
class Keystore:
    """The jail's private keys in memory; ``repr`` shows public keys only."""

    signing_key: nacl.signing.SigningKey = field(repr=False)
    box_private: nacl.public.PrivateKey = field(repr=False)
    wrap_key: bytes = field(repr=False)
    insecure: bool = False
    sign_public: bytes = field(init=False)
    box_public: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.wrap_key) != 32:
            raise KeystoreError("the wrap key is 32 bytes")
        object.__setattr__(self, "sign_public", bytes(self.signing_key.verify_key))
        object.__setattr__(self, "box_public", bytes(self.box_private.public_key))

    @classmethod
    def generate(cls, *, insecure: bool = False) -> Keystore:
        """Fresh keys from the operating system's CSPRNG."""
        return cls(
            nacl.signing.SigningKey.generate(),
            nacl.public.PrivateKey.generate(),
            secrets.token_bytes(32),
            insecure,
        )

    @property
    def node_id(self) -> str:
        return node_id_for(self.sign_public)

    def public_info(self) -> dict[str, str]:
        """The public keys and node id, as printed by ``init`` and returned by ``public_keys``."""
        return {
            "sign_key": _b64e(self.sign_public),
            "box_key": _b64e(self.box_public),
            "node_id": self.node_id,
        }

    def _secrets_json(self) -> bytes:
        return json.dumps(
            {
                "sign_seed": _b64e(bytes(self.signing_key)),
                "box_private": _b64e(bytes(self.box_private)),
                "wrap_key": _b64e(self.wrap_key),
            },
            sort_keys=True,
        ).encode("ascii")


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return bytes(
        argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt, opslimit, memlimit)
    )


def encode_keystore(
    keystore: Keystore, passphrase: bytes | None, *, kdf_level: str = DEFAULT_KDF_LEVEL,
    test_only: bool = False,
) -> bytes:
    """The file bytes for ``keystore``: encrypted under ``passphrase``, or clear if None.

    A test-only KDF level needs ``test_only=True``, which marks the file as test-only.
    """
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "public": keystore.public_info(),
    }
    if passphrase is None:
        doc["protection"] = "none"
        doc["secrets"] = json.loads(keystore._secrets_json())
    else:
        if not passphrase:
            raise KeystoreError("the passphrase is empty")
        if len(passphrase) < MIN_PASSPHRASE:
            raise KeystoreError(f"the passphrase is shorter than {MIN_PASSPHRASE} bytes")
        if kdf_level not in KDF_LEVELS:
            raise KeystoreError(f"unknown KDF level {kdf_level!r}; use one of {sorted(KDF_LEVELS)}")
        if kdf_level in TEST_KDF_LEVELS and not test_only:
            raise KeystoreError(f"KDF level {kdf_level!r} is for test keystores only "
                                "(--insecure-test-kdf)")
        if test_only:
            doc["test_only"] = True
        opslimit, memlimit = KDF_LEVELS[kdf_level]
        salt = secrets.token_bytes(argon2id.SALTBYTES)
        box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
        doc["protection"] = "argon2id-secretbox"
        doc["kdf"] = {"name": "argon2id", "opslimit": opslimit, "memlimit": memlimit,
                      "salt": _b64e(salt)}
        doc["ciphertext"] = _b64e(bytes(box.encrypt(keystore._secrets_json())))
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise KeystoreError(f"damaged keystore: field {name!r} missing or wrong type")
    return value


def decode_keystore(
    data: bytes, passphrase: bytes | None, *, allow_test_only: bool = False
) -> Keystore:
    """Open keystore file bytes; KeystoreError with a printable reason on any failure.

    A test-only keystore (marked so, or with a KDF cost below ``interactive``) opens only with
    ``allow_test_only=True``.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise KeystoreError("damaged keystore: not JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeystoreError("not an OpenRed jail keystore")
    if doc.get("version") != VERSION:
        raise KeystoreError(f"unsupported keystore version {doc.get('version')!r}")
    protection = doc.get("protection")
    if protection == "none":
        if passphrase is not None:
            raise KeystoreError("a passphrase was given but this keystore is NOT encrypted; "
                                "refusing to serve it as if it were")
        secrets_doc = _field(doc, "secrets", dict)
        insecure = True
    elif protection == "argon2id-secretbox":
        if passphrase is None:
            raise KeystoreError("this keystore is encrypted: a passphrase is needed")
        kdf = _field(doc, "kdf", dict)
        opslimit, memlimit = _field(kdf, "opslimit", int), _field(kdf, "memlimit", int)
        if kdf.get("name") != "argon2id" or not (
            argon2id.OPSLIMIT_MIN <= opslimit <= _MAX_OPSLIMIT
            and argon2id.MEMLIMIT_MIN <= memlimit <= _MAX_MEMLIMIT
        ):
            raise KeystoreError("damaged keystore: KDF parameters out of range")
        weak = opslimit < _MIN_REAL_OPSLIMIT or memlimit < _MIN_REAL_MEMLIMIT
        if (weak or doc.get("test_only") is not None) and not allow_test_only:
            raise KeystoreError("this is a test-only keystore (weak KDF); refusing to serve it "
                                "without --insecure-test-kdf (or OPENRED_JAIL_INSECURE_TEST_KDF=1)")
        salt = _b64d(kdf.get("salt"), argon2id.SALTBYTES)
        ciphertext = _b64d(_field(doc, "ciphertext", str), None)
        try:
            key = _derive(passphrase, salt, opslimit, memlimit)
            clear = nacl.secret.SecretBox(key).decrypt(ciphertext)
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise KeystoreError(_WRONG) from exc
        try:
            secrets_doc = json.loads(clear)
        except ValueError as exc:  # pragma: no cover - authenticated, so only our own writer
            raise KeystoreError("damaged keystore: secrets are not JSON") from exc
        insecure = False
    else:
        raise KeystoreError(f"damaged keystore: unknown protection {protection!r}")
    if not isinstance(secrets_doc, dict):
        raise KeystoreError("damaged keystore: secrets are not an object")
    keystore = Keystore(
        nacl.signing.SigningKey(_b64d(secrets_doc.get("sign_seed"), 32)),
        nacl.public.PrivateKey(_b64d(secrets_doc.get("box_private"), 32)),
        _b64d(secrets_doc.get("wrap_key"), 32),
        insecure,
    )
    if doc.get("public") != keystore.public_info():
        raise KeystoreError("damaged keystore: public keys do not match the private keys")
    return keystore


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a NEW file at ``path``, mode 0600, atomically; refuse to overwrite.

    The bytes go to a temporary file beside it (O_EXCL, 0600), are fsynced, then hard-linked
    to ``path`` (``link`` fails if ``path`` exists, so a concurrent writer cannot be clobbered)
    and the directory is fsynced.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise KeystoreError(f"{path} exists already; refusing to overwrite a keystore")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise KeystoreError(f"{path} exists already; refusing to overwrite a keystore") from exc
        except OSError:  # a filesystem without hard links: rename after the check above
            if path.exists():
                raise KeystoreError(f"{path} exists already; refusing to overwrite") from None
            tmp.rename(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def create_keystore(
    path: Path, passphrase: bytes | None, *, kdf_level: str = DEFAULT_KDF_LEVEL,
    test_only: bool = False,
) -> Keystore:
    """Generate keys and write a new keystore at ``path`` (clear if ``passphrase`` is None)."""
    keystore = Keystore.generate(insecure=passphrase is None)
    write_new_file(Path(path), encode_keystore(keystore, passphrase, kdf_level=kdf_level,
                                               test_only=test_only))
    return keystore


def load_keystore(
    path: Path, passphrase: bytes | None, *, allow_test_only: bool = False
) -> Keystore:
    """Read and open the keystore at ``path``; KeystoreError with a printable reason otherwise."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hold the jail before it serves.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise KeystoreError(f"no keystore at {path}") from exc
    except OSError as exc:
        raise KeystoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())  # the file read, not the name
        if not stat.S_ISREG(info.st_mode):
            raise KeystoreError(f"the keystore {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        try:
            data = handle.read(_MAX_FILE + 1)
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_FILE:
        raise KeystoreError("damaged keystore: file too large")
    keystore = decode_keystore(data, passphrase, allow_test_only=allow_test_only)
    if keystore.insecure and mode & 0o077:
        raise KeystoreError(f"the clear keystore {path} has mode {mode:04o}; it must be 0600 "
                            "(chmod 600) or encrypted")
    return keystore
