"""Configuration: ``OPENRED_*`` environment variables over the data directory's ``.env`` file.

Precedence, highest first: the process environment, then ``DATA_DIR/.env`` (written by
``openred directory init``), then the defaults below. An empty value, in the environment or
the file, is "not given": an empty variable in the environment does not mask the file's
(a flag excepted: an empty flag in the environment is off, as it always was).
Every service shares :class:`ServiceSettings` (where it listens, its public URL, request
limits, its jail); each service adds its own fields in a subclass — :class:`DirectorySettings`
here, a ``NodeSettings`` beside it — and its own ``_from_values``. Values are parsed
strictly: a malformed value is a :class:`~openred.errors.ConfigurationError` naming the
variable, never a silent default.

Shared variables:

==================================  ==========================================================
``OPENRED_DATA_DIR``                data directory (CLI ``--data-dir`` wins over it)
``OPENRED_HOST`` / ``OPENRED_PORT``   where Hypercorn listens (127.0.0.1, 8700 for a directory)
``OPENRED_PUBLIC_URL``              the URL clients address (RFC 9421 ``@target-uri`` is
                                    rebuilt from it); default ``http://HOST:PORT``
``OPENRED_ALLOW_PRIVATE_URLS``      1 to accept loopback and private addresses as API URLs
``OPENRED_SIGNATURE_WINDOW``        seconds a signed request's ``created`` may be off (60)
``OPENRED_MAX_BODY_BYTES``          largest request body (65536); larger gets 413
``OPENRED_JAIL_SOCKET``             the jail's Unix socket (default ``DATA_DIR/jail/jail.sock``);
                                    set, with no keystore in ``DATA_DIR``: the jail a service
                                    manager runs there, only connected to
                                    (``openred.directory.keys.jail_is_external``)
``OPENRED_JAIL_PASSPHRASE_FILE``    file holding the keystore passphrase (default
                                    ``DATA_DIR/jail-passphrase`` when it exists)
``OPENRED_JAIL_NO_SECCOMP``         1 to start the jail without seccomp (platforms without it)
==================================  ==========================================================

The directory's own variables are listed on :class:`DirectorySettings`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from openred.errors import ConfigurationError
from openred.files import write_private

__all__ = [
    "MAX_INTEGER",
    "DirectorySettings",
    "ServiceSettings",
    "read_env_file",
    "write_env_file",
]

ENV_FILE = ".env"
PREFIX = "OPENRED_"
MAX_INTEGER = 2**53 - 1
"""The largest integer any setting takes: a float holds it exactly (budgets, intervals and
sizes are divided or converted to floats; 400 digits would raise OverflowError there)."""
_LINE = re.compile(r"(?:export\s+)?([A-Z][A-Z0-9_]*)\s*=\s*(.*)")
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


MAX_ENV_BYTES = 1 << 20

PUSH_TIMEOUT = 5
"""Seconds a directory waits for a node's answer to one push of a grant half (the default of
``OPENRED_PUSH_TIMEOUT``). A node's answer is budgeted against it: the consistency proof it may
fetch from the directory meanwhile gets half of it, every attempt and backoff included
(:data:`openred.node.services.PROOF_FETCH_BUDGET`), so it answers — a 503 when the proof did
not come in time — while the push still waits."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (``#`` comments, optional quotes, an optional
    ``export`` prefix, a UTF-8 byte order mark and CRLF line ends allowed; the last of a
    repeated key wins); {} if absent.

    Only a regular file (a symbolic link to one is fine) of at most ``MAX_ENV_BYTES`` is read:
    a FIFO at that name made every command wait forever, a link to ``/dev/zero`` read until
    memory ran out. Opened non-blocking, so a FIFO is refused instead of waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigurationError(f"cannot read {path}: not a regular file")
            data = f.read(MAX_ENV_BYTES + 1)
        if len(data) > MAX_ENV_BYTES:
            raise ConfigurationError(f"cannot read {path}: too large (over {MAX_ENV_BYTES} "
                                     "bytes)")
        text = data.decode("utf-8-sig")  # an editor's byte order mark is no part of line 1
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ConfigurationError(f"{path}:{number}: not a KEY=VALUE line")
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def write_env_file(path: Path, values: Mapping[str, str], *, header: str = "") -> None:
    """Write a ``.env`` file (mode 0600, replaced atomically)."""
    for key, value in values.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or "\n" in value:
            raise ConfigurationError(f"cannot write {key!r} to a .env file")
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={value}" for key, value in values.items()]
    write_private(path, "\n".join(lines) + "\n")


def _shown(value: str) -> str:
    """A setting's value quoted in an error: repr (control characters escaped), clipped."""
    return repr(value if len(value) <= 64 else value[:64] + "…")


def _public_url(value: str) -> str:
    """``OPENRED_PUBLIC_URL`` checked: every signed request's ``@target-uri`` is rebuilt from
    it, so a value no client can sign for (``not a url``, a query, a user) made a service that
    ran and refused every signed request as a bad signature."""
    if not value:
        return value
    problem = ""
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        problem = "holds spaces or control characters"
    else:
        try:
            parts = urlsplit(value)  # raises itself on "[::1" or "[not-an-address]"
            parts.port  # noqa: B018 - a bad port raises
        except ValueError:
            problem = "has a bad host or port"
        else:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problem = "is not an http(s) URL with a host"
            elif "@" in parts.netloc or "?" in value or "#" in value:
                problem = "has a user, a query or a fragment"
    if problem:
        raise ConfigurationError(f"{PREFIX}PUBLIC_URL={_shown(value)} {problem} (use "
                                 "https://HOST[:PORT][/PATH], the URL clients reach)")
    return value


class _Values:
    """Looks variables up in the environment, then the .env file; parses them strictly."""

    def __init__(self, env: Mapping[str, str], file_values: Mapping[str, str]) -> None:
        self._env = env
        self._file = file_values

    def raw(self, name: str) -> str | None:
        """The environment's value, else the file's. An empty variable in the environment
        is "not given" (as an empty value is everywhere): it used to mask the file's value,
        so ``OPENRED_PUBLIC_URL=`` from a compose file or unit dropped the .env's URL."""
        key = PREFIX + name
        if self._env.get(key):
            return self._env[key]
        return self._file.get(key, self._env.get(key))

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None or value == "" else value

    def optional(self, name: str) -> str | None:
        value = self.raw(name)
        return None if value is None or value == "" else value

    def integer(self, name: str, default: int, *, minimum: int = 0,
                maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None or value == "":
            return default
        # ASCII digits only: int() also reads 8_700 and full-width or other scripts' digits.
        try:
            if not _INTEGER.fullmatch(value.strip()):
                raise ValueError(value)
            number = int(value.strip(), 10)  # ValueError past 4300 digits too
        except ValueError:
            raise ConfigurationError(f"{PREFIX}{name}={_shown(value)} is not an integer") from None
        if number < minimum:
            raise ConfigurationError(f"{PREFIX}{name} must be at least {minimum}")
        maximum = MAX_INTEGER if maximum is None else min(maximum, MAX_INTEGER)
        if number > maximum:
            raise ConfigurationError(f"{PREFIX}{name} must be at most {maximum}")
        return number

    def seconds_or_never(self, name: str, default: int | None) -> int | None:
        value = self.raw(name)
        if value is not None and value.strip().lower() == "never":
            return None
        if value is None or value == "":
            return default
        return self.integer(name, 0, minimum=1)

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean. Unlike other values, an empty one in the environment is given: it has
        always read as off, and a flag blanked there to switch off the ``.env``'s ``1``
        (``OPENRED_ALLOW_PRIVATE_URLS``, the SSRF guard; ``OPENRED_JAIL_NO_SECCOMP``) must not
        fail open."""
        key = PREFIX + name
        value = self._env[key] if self._env.get(key) == "" else self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigurationError(f"{PREFIX}{name}={_shown(value)} is not a boolean (use 1 or 0)")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """What every OpenRed service needs: where it listens, its limits, its jail."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8700
    public_url: str = ""
    allow_private_urls: bool = False
    signature_window: int = 60
    max_body_bytes: int = 65536
    jail_socket: Path | None = None
    jail_passphrase_file: Path | None = None
    jail_no_seccomp: bool = False

    DEFAULT_PORT = 8700

    @property
    def base_url(self) -> str:
        """The public URL without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def keystore_path(self) -> Path:
        return self.data_dir / "keystore.json"

    @property
    def socket_path(self) -> Path:
        return self.jail_socket or self.data_dir / "jail" / "jail.sock"

    @property
    def jail_witness_path(self) -> Path | None:
        """Where a jail this service starts keeps its checkpoint witness (None: it keeps none).

        Beside the keystore: the jail signs only checkpoints that extend the last one it signed,
        and the store refuses at open a log that does not hold that one (crypto_jail/witness.py;
        a backup restored on purpose means moving this file aside first).
        """
        return self.data_dir / "keystore.witness"

    @property
    def passphrase_path(self) -> Path:
        return self.jail_passphrase_file or self.data_dir / "jail-passphrase"

    @classmethod
    def load(
        cls, data_dir: Path | str | None = None, *, environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Self:
        """Settings from ``environ`` (default: the process's), ``DATA_DIR/.env`` and defaults."""
        env = dict(os.environ if environ is None else environ)
        directory = Path(data_dir or env.get(PREFIX + "DATA_DIR") or "openred-data")
        values = _Values(env, read_env_file(directory / ENV_FILE))
        settings = cls._from_values(directory, values)
        return replace(settings, **overrides) if overrides else settings

    @classmethod
    def _shared(cls, data_dir: Path, v: _Values) -> dict[str, Any]:
        socket = v.optional("JAIL_SOCKET")
        passphrase = v.optional("JAIL_PASSPHRASE_FILE")
        return {
            "data_dir": data_dir,
            "host": v.text("HOST", "127.0.0.1"),
            "port": v.integer("PORT", cls.DEFAULT_PORT, minimum=0, maximum=65535),
            "public_url": _public_url(v.text("PUBLIC_URL", "")),
            "allow_private_urls": v.flag("ALLOW_PRIVATE_URLS"),
            "signature_window": v.integer("SIGNATURE_WINDOW", 60, minimum=1),
            "max_body_bytes": v.integer("MAX_BODY_BYTES", 65536, minimum=1024),
            "jail_socket": Path(socket) if socket else None,
            "jail_passphrase_file": Path(passphrase) if passphrase else None,
            "jail_no_seccomp": v.flag("JAIL_NO_SECCOMP"),
        }

    @classmethod
    def _from_values(cls, data_dir: Path, v: _Values) -> Self:
        return cls(**cls._shared(data_dir, v))


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectorySettings(ServiceSettings):
    """The directory's settings (DESIGN §4, §5).

    ==================================  =======================================================
    ``OPENRED_HEARTBEAT_INTERVAL``      seconds between a node's heartbeats (60)
    ``OPENRED_STALE_AFTER``             silence before active → stale (2 × interval)
    ``OPENRED_EXPIRE_AFTER``            silence before stale → expired (86400, or ``never``)
    ``OPENRED_STATUS_CHECK_INTERVAL``   how often the status task runs (10)
    ``OPENRED_GRANT_TTL``               seconds a grant stays usable (300, at most 86400)
    ``OPENRED_SUITE_MODE``              hourly | weekday | seeded (hourly)
    ``OPENRED_SUITE_SEED``              network seed for ``seeded`` (hex, ≥ 16 bytes)
    ``OPENRED_RATE_WINDOW``             rate-limit window in seconds (60)
    ``OPENRED_RATE_PER_INITIATOR``      grants one node may request per window (30)
    ``OPENRED_RATE_PER_TARGET``         grants naming one target per window (60), shared
                                        fairly by the client networks asking (at most
                                        twice that in all)
    ``OPENRED_RATE_PER_CLIENT``         signed requests one node may make per window (600)
    ``OPENRED_PUSH_ATTEMPTS``           tries per token push (3)
    ``OPENRED_PUSH_TIMEOUT``            seconds per push attempt (5, :data:`PUSH_TIMEOUT`;
                                        nodes answer within half of the default: a
                                        shorter one can give up on a node still
                                        fetching its consistency proof)
    ``OPENRED_PUSHES_PER_NETWORK``      pushes in flight for grants one client network
                                        (IPv4 address, IPv6 /64) asked for (8: 4 grants)
    ``OPENRED_PUSHES_IN_FLIGHT``        pushes in flight in all, and the push client's
                                        connection pool (256)
    ``OPENRED_SIGNATURE_WORKER``        verify request and record signatures in a worker
                                        process, off the event loop (1; 0: inline)
    ==================================  =======================================================
    """

    heartbeat_interval: int = 60
    stale_after: int = 120
    expire_after: int | None = 86400
    status_check_interval: float = 10.0
    grant_ttl: int = 300
    suite_mode: str = "hourly"
    suite_seed: bytes | None = None
    rate_window: int = 60
    rate_per_initiator: int = 30
    rate_per_target: int = 60
    rate_per_client: int = 600
    push_attempts: int = 3
    push_timeout: float = float(PUSH_TIMEOUT)
    pushes_per_network: int = 8
    pushes_in_flight: int = 256
    signature_worker: bool = True

    @classmethod
    def _from_values(cls, data_dir: Path, v: _Values) -> Self:
        interval = v.integer("HEARTBEAT_INTERVAL", 60, minimum=1)
        seed_text = v.optional("SUITE_SEED")
        try:
            seed = bytes.fromhex(seed_text) if seed_text else None
        except ValueError:
            raise ConfigurationError("OPENRED_SUITE_SEED is not hexadecimal") from None
        mode = v.text("SUITE_MODE", "hourly")
        if mode not in ("hourly", "weekday", "seeded"):
            raise ConfigurationError(f"OPENRED_SUITE_MODE={_shown(mode)}: use hourly, weekday or "
                                     "seeded")
        if mode == "seeded" and (seed is None or len(seed) < 16):
            raise ConfigurationError("OPENRED_SUITE_MODE=seeded needs OPENRED_SUITE_SEED "
                                     "(at least 16 bytes, hex)")
        stale = v.integer("STALE_AFTER", 2 * interval, minimum=1)
        expire = v.seconds_or_never("EXPIRE_AFTER", 86400)
        if expire is not None and expire <= stale:
            raise ConfigurationError("OPENRED_EXPIRE_AFTER must be longer than "
                                     "OPENRED_STALE_AFTER (or never)")
        return cls(
            **cls._shared(data_dir, v),
            heartbeat_interval=interval,
            stale_after=stale,
            expire_after=expire,
            status_check_interval=float(v.integer("STATUS_CHECK_INTERVAL", 10, minimum=1)),
            # Nodes refuse grants living longer (openred.crypto.grants.MAX_TTL).
            grant_ttl=v.integer("GRANT_TTL", 300, minimum=1, maximum=86400),
            suite_mode=mode,
            suite_seed=seed,
            rate_window=v.integer("RATE_WINDOW", 60, minimum=1),
            rate_per_initiator=v.integer("RATE_PER_INITIATOR", 30, minimum=1),
            rate_per_target=v.integer("RATE_PER_TARGET", 60, minimum=1),
            rate_per_client=v.integer("RATE_PER_CLIENT", 600, minimum=1),
            push_attempts=v.integer("PUSH_ATTEMPTS", 3, minimum=1),
            push_timeout=float(v.integer("PUSH_TIMEOUT", PUSH_TIMEOUT, minimum=1)),
            pushes_per_network=v.integer("PUSHES_PER_NETWORK", 8, minimum=2),
            pushes_in_flight=v.integer("PUSHES_IN_FLIGHT", 256, minimum=2),
            signature_worker=v.flag("SIGNATURE_WORKER", default=True),
        )
