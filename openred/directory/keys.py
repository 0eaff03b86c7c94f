"""The directory's key, kept in its own crypto jail (DESIGN §2, §7).

``init`` creates the keystore (Argon2id-encrypted with a passphrase) through
``python -I -m crypto_jail init``; ``start_jail`` runs the jail under a
:class:`~openred.crypto.client.JailSupervisor` and hands the passphrase over a pipe. The
passphrase comes from ``OPENRED_JAIL_PASSPHRASE`` (removed from this process's environment once
read) or from the passphrase file (``OPENRED_JAIL_PASSPHRASE_FILE``, default
``DATA_DIR/jail-passphrase``, mode 0600) that ``openred directory init`` writes when no
passphrase is given — convenient for development; in production a service manager passes it as a
credential instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

from openred.crypto.client import JailClient, JailSupervisor
from openred.crypto.jail_owner import orphaned_jail, record_owner, stop_orphan
from openred.errors import ConfigurationError, JailError
from openred.settings import ServiceSettings

__all__ = ["connect_jail", "create_keystore", "read_passphrase", "start_jail"]

PASSPHRASE_ENV = "OPENRED_JAIL_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
KDF_ENV = "OPENRED_JAIL_KDF"


def read_passphrase(settings: ServiceSettings) -> bytes:
    """The keystore passphrase from the environment or the passphrase file."""
    value = os.environ.pop(PASSPHRASE_ENV, None)
    if value:
        return value.encode("utf-8")
    path = settings.passphrase_path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(
            f"no keystore passphrase: set {PASSPHRASE_ENV} or create {path}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    return raw.rstrip(b"\r\n")


def passphrase_available(settings: ServiceSettings) -> bool:
    """Whether :func:`read_passphrase` will find a passphrase (without consuming it)."""
    return bool(os.environ.get(PASSPHRASE_ENV)) or settings.passphrase_path.is_file()


def create_keystore(settings: ServiceSettings, *, kdf: str | None = None) -> None:
    """Create the keystore (and, without a passphrase in the environment, the passphrase file)."""
    keystore = settings.keystore_path
    if keystore.exists():
        raise ConfigurationError(f"{keystore} exists already: this directory is initialized")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        passphrase = secrets.token_urlsafe(32)
        path = settings.passphrase_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(passphrase + "\n")
    env = {**os.environ, PASSPHRASE_ENV: passphrase}
    argv = [sys.executable, "-I", "-m", "crypto_jail", "init", "--keystore", str(keystore),
            "--json"]
    if kdf or os.environ.get(KDF_ENV):
        argv += ["--kdf", kdf or os.environ[KDF_ENV]]
    result = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
        argv, env=env, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise ConfigurationError(f"creating the keystore failed: {result.stderr.strip()}")


def _socket_dir(settings: ServiceSettings) -> Path:
    socket = settings.socket_path
    socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return socket


async def start_jail(settings: ServiceSettings) -> tuple[JailSupervisor, JailClient]:
    """Start the directory's jail and a client for it (stop both when done)."""
    if not settings.keystore_path.is_file():
        raise ConfigurationError(
            f"no keystore at {settings.keystore_path}: run `openred directory init` first")
    socket = _socket_dir(settings)
    witness = settings.jail_witness_path
    supervisor = JailSupervisor(settings.keystore_path, socket,
                                passphrase=read_passphrase(settings),
                                no_seccomp=settings.jail_no_seccomp,
                                extra_args=() if witness is None
                                else ("--witness-file", str(witness)))
    await supervisor.start()
    record_owner(socket, supervisor.pid)  # so a successor can tell our orphan (jail_owner)
    # One jail connection per request a loaded directory serves at once (the jail answers
    # each connection on its own thread): with the default 4, concurrent grants queued for
    # a slot behind each other's grant, push and entry signatures.
    return supervisor, JailClient(socket, supervisor=supervisor, max_connections=16)


async def connect_jail(
    settings: ServiceSettings,
) -> tuple[JailSupervisor | None, JailClient]:
    """A client of the jail a running service already supervises, or a new jail of our own.

    A jail left by a supervisor that died (see :mod:`openred.crypto.jail_owner`) is stopped
    first: this service then starts and supervises its own.
    """
    socket = settings.socket_path
    orphan = orphaned_jail(socket)
    if orphan is not None:
        await stop_orphan(orphan, socket)
    if socket.exists():
        client = JailClient(socket, timeout=5.0)
        try:
            await asyncio.wait_for(client.public_keys(), 5.0)
        except (JailError, TimeoutError):
            await client.close()
        else:
            return None, client
    return await start_jail(settings)
