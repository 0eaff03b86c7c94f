"""The node's settings (DESIGN §10): the shared service settings plus the node's own.

==================================  ==========================================================
``OPENRED_DIRECTORY_URL``           the directory's base URL (where checkpoints are fetched)
``OPENRED_DIRECTORY_KEY``           the pinned directory key (base64url Ed25519, 32 bytes)
``OPENRED_MODULES``                 enabled modules, comma-separated (``messaging,file_sharing``)
``OPENRED_SESSION_LIFETIME``        seconds a session lives (86400); renewal is due at 80 %
``OPENRED_LIFECYCLE_INTERVAL``      seconds between lifecycle runs (renewal, expiry) (30)
``OPENRED_EPOCH_INTERVAL``          seconds a session's send key lives before it rotates (3600)
``OPENRED_HANDSHAKE_REFUSALS``      refused handshakes one address (IPv6: one /64) may cause
                                    per minute (30); past that it gets 429 and nothing is
                                    logged; all addresses together log ten times that at most
``OPENRED_MAX_BODY_BYTES``          largest request body (393216: a 256 KiB envelope fits)
``OPENRED_DISK_RESERVE``            bytes kept free on the log's file system: below that,
                                    nothing a peer's call causes is logged (507 ``disk-full``)
                                    (67108864: 64 MiB; 0 turns the guard off)
``OPENRED_PEER_MESSAGES_PER_HOUR``  messages one peer may have logged per hour, in bursts up
                                    to that (100000); past it 429 with Retry-After
``OPENRED_PEER_MESSAGE_BYTES_PER_HOUR``  bytes of message text one peer may have logged per
                                    hour, likewise (1073741824: 1 GiB; at least 65536)
``OPENRED_PEER_PROOFS_PER_MINUTE``  challenges (``authentication/prove``) one peer may have
                                    this node answer per minute, in bursts up to that (60);
                                    past it 429 with Retry-After
``OPENRED_PROJECTION_RETENTION``    seconds ended rows (expired/closed sessions, grant outcomes,
                                    ended file offers) stay in the projections before the
                                    lifecycle cleans them, at least 3600 (2592000: 30 days), or
                                    ``never``
==================================  ==========================================================

The shared variables (host, port, public URL, jail) are :class:`~openred.settings.
ServiceSettings`'; a node listens on port 8710 by default and its public URL is the
``api_url`` of its signed record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from openred.crypto.identity import SignKey
from openred.errors import ConfigurationError, InvalidKey
from openred.modules import parse_enabled
from openred.node.diskreserve import DISK_RESERVE
from openred.settings import ServiceSettings, _Values

__all__ = ["DEFAULT_MAX_BODY", "DEFAULT_MODULES", "DEFAULT_RETENTION", "NodeSettings"]

DEFAULT_MAX_BODY = 384 * 1024
DEFAULT_MODULES = "messaging,file_sharing"
"""Modules a node enables unless told otherwise (each acts only on an operator's command or an
established peer's request)."""
DEFAULT_RETENTION = 30 * 86400
MIN_RETENTION = 3600
PEER_MESSAGES_PER_HOUR = 100_000
"""Messages from one peer a node logs per hour (a token bucket: bursts up to this). Far above
a person's use, and ~50 times what a benchmark run sends one peer (~2,000 messages)."""
PEER_MESSAGE_BYTES_PER_HOUR = 1 << 30
"""Bytes of message text from one peer a node logs per hour (~2.7 GiB of log and inbox)."""
PEER_PROOFS_PER_MINUTE = 60
"""Challenges (``authentication/prove``) one peer may have the node answer per minute, in
bursts up to that: each costs a signature in the jail. A challenger asks again only when it
needs a fresh proof (an operator's command, a module's action)."""
MIN_PEER_MESSAGE_BYTES = 64 * 1024
"""The largest message's text (messaging's ``MAX_TEXT``): a smaller budget would refuse it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings(ServiceSettings):
    """What a node needs besides the shared settings."""

    port: int = 8710
    max_body_bytes: int = DEFAULT_MAX_BODY
    directory_url: str = ""
    directory_key: str = ""
    modules: tuple[str, ...] = field(default=tuple(parse_enabled(DEFAULT_MODULES)))
    session_lifetime: int = 86400
    lifecycle_interval: float = 30.0
    epoch_interval: int = 3600
    handshake_refusals: int = 30
    projection_retention: int | None = DEFAULT_RETENTION
    """Seconds ended rows stay in the projections (None: never cleaned)."""
    disk_reserve: int = DISK_RESERVE
    """Bytes kept free on the log's file system for the node's own events."""
    peer_messages_per_hour: int = PEER_MESSAGES_PER_HOUR
    peer_message_bytes_per_hour: int = PEER_MESSAGE_BYTES_PER_HOUR
    peer_proofs_per_minute: int = PEER_PROOFS_PER_MINUTE

    @property
    def jail_witness_path(self) -> Path | None:
        """The node's jail signs only checkpoints that extend the last one it signed, and the
        store checks the log against that one at every open (crypto_jail/witness.py)."""
        return self.data_dir / "keystore.witness"

    DEFAULT_PORT = 8710

    @property
    def directory_sign_key(self) -> SignKey:
        """The pinned directory key; ConfigurationError when missing or malformed."""
        if not self.directory_key:
            raise ConfigurationError("OPENRED_DIRECTORY_KEY is not set")
        try:
            return SignKey.from_b64url(self.directory_key)
        except (ValueError, InvalidKey) as exc:
            raise ConfigurationError("OPENRED_DIRECTORY_KEY is not an Ed25519 key") from exc

    @classmethod
    def _from_values(cls, data_dir: Path, v: _Values) -> Self:
        shared = cls._shared(data_dir, v)
        if v.optional("MAX_BODY_BYTES") is None:
            shared["max_body_bytes"] = DEFAULT_MAX_BODY
        retention = v.seconds_or_never("PROJECTION_RETENTION", DEFAULT_RETENTION)
        if retention is not None and retention < MIN_RETENTION:
            raise ConfigurationError(
                f"OPENRED_PROJECTION_RETENTION must be at least {MIN_RETENTION} (or never)")
        return cls(
            **shared,
            directory_url=v.text("DIRECTORY_URL", "").rstrip("/"),
            directory_key=v.text("DIRECTORY_KEY", ""),
            modules=tuple(parse_enabled(v.text("MODULES", DEFAULT_MODULES))),
            session_lifetime=v.integer("SESSION_LIFETIME", 86400, minimum=60),
            lifecycle_interval=float(v.integer("LIFECYCLE_INTERVAL", 30, minimum=1)),
            epoch_interval=v.integer("EPOCH_INTERVAL", 3600, minimum=60),
            handshake_refusals=v.integer("HANDSHAKE_REFUSALS", 30, minimum=1),
            projection_retention=retention,
            disk_reserve=v.integer("DISK_RESERVE", DISK_RESERVE),
            peer_messages_per_hour=v.integer("PEER_MESSAGES_PER_HOUR", PEER_MESSAGES_PER_HOUR,
                                             minimum=1),
            peer_message_bytes_per_hour=v.integer(
                "PEER_MESSAGE_BYTES_PER_HOUR", PEER_MESSAGE_BYTES_PER_HOUR,
                minimum=MIN_PEER_MESSAGE_BYTES),
            peer_proofs_per_minute=v.integer("PEER_PROOFS_PER_MINUTE", PEER_PROOFS_PER_MINUTE,
                                             minimum=1),
        )
