"""The directory's key, kept in its own crypto jail (DESIGN §2, §7).

``init`` creates the keystore (Argon2id-encrypted with a passphrase) through
``python -I -m crypto_jail init``; ``start_jail`` runs the jail under a
:class:`~openred.crypto.client.JailSupervisor` and hands the passphrase over a pipe. The
passphrase comes from ``OPENRED_JAIL_PASSPHRASE`` (removed from this process's environment once
read) or from the passphrase file (``OPENRED_JAIL_PASSPHRASE_FILE``, default
``DATA_DIR/jail-passphrase``, mode 0600) that ``openred directory init`` writes when no
passphrase is given — convenient for development; in production a service manager passes it as a
credential instead.

A service whose data directory holds no keystore but whose ``OPENRED_JAIL_SOCKET`` is set uses
the jail a service manager runs there under a user of its own
(``deploy/systemd/openred-directory-jail.service``, ``openred-jail@.service``): it never starts,
stops or adopts that jail, it only connects to the socket, and at start it waits up to
:data:`EXTERNAL_JAIL_WAIT` seconds for the jail to answer (:func:`jail_is_external`,
:func:`open_external_jail`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

from openred.crypto.client import JailClient, JailSupervisor
from openred.crypto.jail_owner import orphaned_jail, record_owner, stop_orphan
from openred.errors import ConfigurationError, JailError, JailRefused, JailUnavailable
from openred.settings import ServiceSettings
from openred.store.chain import origin_for

__all__ = [
    "EXTERNAL_JAIL_WAIT",
    "check_jail_seals_grants",
    "connect_jail",
    "create_keystore",
    "jail_is_external",
    "open_external_jail",
    "open_jail",
    "read_passphrase",
    "start_jail",
]

logger = logging.getLogger("openred.crypto.jail")

PASSPHRASE_ENV = "OPENRED_JAIL_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
KDF_ENV = "OPENRED_JAIL_KDF"
EXTERNAL_JAIL_WAIT = 30.0
"""Seconds a service waits at start for a jail it does not run (the service manager may still
be starting it: a passphrase jail derives its key with Argon2id before it binds the socket)."""
SERVICE_JAIL_CONNECTIONS = 16
"""One jail connection per request a loaded directory serves at once (the jail answers each
connection on its own thread): with the default 4, concurrent grants queued for a slot behind
each other's grant, push and entry signatures."""


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
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return raw.rstrip(b"\r\n")


def passphrase_available(settings: ServiceSettings) -> bool:
    """Whether :func:`read_passphrase` will find a passphrase (without consuming it)."""
    return bool(os.environ.get(PASSPHRASE_ENV)) or settings.passphrase_path.is_file()


def create_keystore(settings: ServiceSettings, *, kdf: str | None = None) -> None:
    """Create the keystore (and, without a passphrase in the environment or in the passphrase
    file, a passphrase file with a random passphrase).

    A passphrase file already there (``OPENRED_JAIL_PASSPHRASE_FILE``, default
    ``DATA_DIR/jail-passphrase``: the operator's own, or one a failed ``init`` left) is used, not
    a reason to crash; one this call wrote is removed again if the keystore is not created, so
    ``init`` can simply be run again.
    """
    keystore = settings.keystore_path
    if keystore.exists():
        raise ConfigurationError(f"{keystore} exists already: this directory is initialized")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    written: Path | None = None
    if not passphrase and settings.passphrase_path.exists():
        passphrase = read_passphrase(settings).decode("utf-8", "replace")
    elif not passphrase:
        passphrase = secrets.token_urlsafe(32)
        written = settings.passphrase_path
        try:
            fd = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {written}: {exc.strerror or exc}") from None
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
        if written is not None:
            written.unlink(missing_ok=True)
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
    return supervisor, JailClient(socket, supervisor=supervisor,
                                  max_connections=SERVICE_JAIL_CONNECTIONS)


def jail_is_external(settings: ServiceSettings) -> bool:
    """Whether the service's jail is run by someone else (a service manager, as its own user).

    So it is when ``OPENRED_JAIL_SOCKET`` names the socket and the data directory holds no
    keystore: the keystore belongs to the jail's user (``crypto_jail init`` made it there, or
    it was handed over after ``init``), and without it this process could not start a jail.
    """
    return settings.jail_socket is not None and not settings.keystore_path.exists()


async def open_external_jail(
    settings: ServiceSettings, *, wait: float = EXTERNAL_JAIL_WAIT,
    max_connections: int = SERVICE_JAIL_CONNECTIONS,
) -> JailClient:
    """A client of the jail a service manager runs on ``settings.socket_path``, once it answers.

    Never starts, stops or adopts that jail (no :mod:`openred.crypto.jail_owner` record is
    read or written). Waits up to ``wait`` seconds for it to answer, then raises
    :class:`~openred.errors.JailUnavailable` saying which socket and what to do. While the
    service runs, the client waits for the socket again whenever the jail is restarted.
    """
    socket = settings.socket_path
    # One try per round (no reconnect wait inside the client): the loop below waits and says so.
    probe = JailClient(socket, timeout=min(5.0, max(wait, 0.1)), reconnect_timeout=0.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    announced = False
    try:
        while True:
            try:
                keys = await asyncio.wait_for(probe.public_keys(),
                                              max(deadline - loop.time(), 0.1))
                break
            except (JailError, TimeoutError) as exc:
                if loop.time() >= deadline:
                    # Unreachable or silent says nothing more; a refusal or bad answer does.
                    why = "" if isinstance(exc, JailUnavailable | TimeoutError) else f" ({exc})"
                    raise JailUnavailable(
                        f"no jail answers on {socket}{why}. "
                        f"{settings.keystore_path} does not exist, so this service uses the "
                        "jail its service manager runs on that socket as the jail's own user "
                        "(deploy/systemd/openred-directory-jail.service for a directory): "
                        "start it, and check that this user may reach the socket "
                        "(--socket-group, --allow-user)") from None
                if not announced:
                    logger.warning("waiting up to %.0f s for the jail on %s (run by the "
                                   "service manager)", wait, socket)
                    announced = True
                await asyncio.sleep(0.1)
    finally:
        await probe.close()
    client = JailClient(socket, max_connections=max_connections)
    try:
        keeps, _ = await client.witnessed(origin_for(keys.node_id))
    except BaseException:
        await client.close()
        raise
    if not keeps:
        logger.warning("the jail on %s keeps no witness (--witness-file): a log rolled back "
                       "or truncated while this service is stopped would not be noticed", socket)
    return client


_UNSIGNABLE_SEALED_GRANT = {"kind": "grant", "data": "e30",  # b"{}": no grant, never signed
                            "seal_to": ["A" * 42 + "A", "A" * 42 + "A"]}


async def check_jail_seals_grants(jail: JailClient, socket: Path) -> None:
    """ConfigurationError unless the jail mints and seals grant tokens (``seal_to``).

    A jail from before that refuses ``seal_to`` as an unexpected argument, which refuses the
    whole coalesced ``sign_many`` call: every grant and every push signature and checkpoint
    batched with one would fail until the jail is restarted. Asked with an item no jail signs
    (``{}`` is no grant): a jail that knows ``seal_to`` refuses that item only; an older one
    refuses the call. Nothing is signed either way."""
    try:
        answer = await jail.call("sign_many", {"items": [_UNSIGNABLE_SEALED_GRANT]})
    except JailRefused as exc:
        if "seal_to" not in exc.detail:
            raise
        raise ConfigurationError(
            f"the jail on {socket} is older than this directory: it cannot seal grant tokens "
            "(sign_many seal_to); restart it with this version (systemctl restart "
            "openred-directory-jail)") from None
    results = answer.get("results")
    if not (isinstance(results, list) and len(results) == 1 and isinstance(results[0], dict)
            and "error" in results[0]):
        raise ConfigurationError(f"the jail on {socket} signed what is no grant: "
                                 "it is not a jail this directory can use")


async def open_jail(settings: ServiceSettings) -> tuple[JailSupervisor | None, JailClient]:
    """The service's jail: the one a service manager runs (:func:`jail_is_external`; no
    supervisor, never stopped by this process), else a jail started and supervised here."""
    if jail_is_external(settings):
        return None, await open_external_jail(settings)
    return await start_jail(settings)


async def connect_jail(
    settings: ServiceSettings,
) -> tuple[JailSupervisor | None, JailClient]:
    """A client of the jail a running service already supervises, or a new jail of our own.

    A jail left by a supervisor that died (see :mod:`openred.crypto.jail_owner`) is stopped
    first: this service then starts and supervises its own. A jail the service manager runs
    (:func:`jail_is_external`) is only connected to, never stopped. A jail found answering on
    the socket is adopted only if it serves the node of this data directory's keystore
    (ConfigurationError otherwise: another node's jail, or another process, is there).
    """
    if jail_is_external(settings):
        return None, await open_external_jail(settings, max_connections=4)
    socket = settings.socket_path
    orphan = orphaned_jail(socket)
    if orphan is not None:
        await stop_orphan(orphan, socket)
    if socket.exists():
        client = JailClient(socket, timeout=5.0)
        try:
            keys = await asyncio.wait_for(client.public_keys(), 5.0)
        except (JailError, TimeoutError):
            await client.close()
        else:
            try:
                _check_found_jail(settings, str(keys.node_id))
            except BaseException:
                await client.close()
                raise
            return None, client
    return await start_jail(settings)


def keystore_node_id(path: Path) -> str | None:
    """The node id in the clear ``public`` block of the keystore at ``path``, or None when the
    file cannot be read as a keystore (then starting a jail on it reports why)."""
    try:
        # O_NONBLOCK: a FIFO at the path is refused by the jail, never waited on here.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            doc = json.loads(handle.read(64 * 1024))
        except (OSError, ValueError, RecursionError):
            return None
    public = doc.get("public") if isinstance(doc, dict) else None
    node_id = public.get("node_id") if isinstance(public, dict) else None
    return node_id if isinstance(node_id, str) else None


def _check_found_jail(settings: ServiceSettings, node_id: str) -> None:
    """Refuse a jail found answering on the socket that serves another keystore than ours."""
    own = keystore_node_id(settings.keystore_path)
    if own is not None and own != node_id:
        raise ConfigurationError(
            f"the jail answering on {settings.socket_path} serves node {node_id}, but "
            f"{settings.keystore_path} holds node {own}: another node's jail, or another "
            "process, is on this service's socket (give each data directory its own "
            "OPENRED_JAIL_SOCKET, and stop what runs there)"
        )
