"""Cipher methods by epoch (DESIGN §6): named Noise suites and the rule that picks one.

The seed project rotated between ``cipher_alpha`` … ``cipher_delta``; here each method is a
standard Noise suite, so rotation never weakens anything:

======  ==============================
alpha   ``25519_ChaChaPoly_SHA256``
beta    ``25519_AESGCM_SHA256``
gamma   ``25519_ChaChaPoly_BLAKE2b``
delta   ``25519_AESGCM_BLAKE2b``
======  ==============================

Modules add methods with :meth:`MethodRegistry.register`; a method is only ever a name for a
suite that :data:`crypto_jail.noise.SUITES` implements.

:func:`select_crypto_method` is pure: the caller passes the time (UTC-aware) and, for the
``seeded`` mode, the network seed. The ``n`` methods are taken in registration order
(alpha, beta, gamma, delta first), and every mode reduces modulo ``n``:

- ``hourly``: ``(hour + day) % n`` with the UTC hour (0-23) and UTC day of month (1-31) —
  exactly the seed project's ``(hour + day) % 4`` for the default registry;
- ``weekday``: ``weekday() % n`` (Monday = 0, UTC);
- ``seeded``: ``HMAC-SHA256(seed, epoch) mod n`` where ``epoch`` is the number of whole UTC
  hours since the Unix epoch as 8 bytes big-endian. Without a seed (or with one shorter than
  16 bytes) this is a configuration mistake and raises :class:`~openred.errors.ConfigurationError`.

An unknown mode raises :class:`~openred.errors.UnknownSuite`; a naive datetime raises
``ValueError`` (time must be UTC-aware, DESIGN §1: the clock is passed in).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

from crypto_jail.noise import SUITES
from openred.errors import ConfigurationError, UnknownSuite

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_REGISTRY",
    "MIN_SEED_LEN",
    "MODES",
    "MethodRegistry",
    "select_crypto_method",
    "selection_epoch",
]

DEFAULT_METHODS: Mapping[str, str] = {
    "alpha": "25519_ChaChaPoly_SHA256",
    "beta": "25519_AESGCM_SHA256",
    "gamma": "25519_ChaChaPoly_BLAKE2b",
    "delta": "25519_AESGCM_BLAKE2b",
}

MODES = ("hourly", "weekday", "seeded")
MIN_SEED_LEN = 16


class MethodRegistry:
    """Method names → Noise suite names, in registration order."""

    def __init__(self, methods: Mapping[str, str] | None = None) -> None:
        self._methods: dict[str, str] = {}
        for name, suite in (DEFAULT_METHODS if methods is None else methods).items():
            self.register(name, suite)

    def register(self, name: str, suite: str) -> None:
        """Add a method; refuses a taken name or a suite the Noise code does not implement."""
        if not name or not name.isidentifier():
            raise UnknownSuite(f"method name must be a non-empty identifier, got {name!r}")
        if name in self._methods:
            raise UnknownSuite(f"method {name!r} is already registered")
        if suite not in SUITES:
            raise UnknownSuite(f"suite {suite!r} is not implemented")
        self._methods[name] = suite

    def suite(self, name: str) -> str:
        """The Noise suite name of method ``name``."""
        try:
            return self._methods[name]
        except KeyError:
            raise UnknownSuite(f"unknown cipher method {name!r}") from None

    def names(self) -> tuple[str, ...]:
        """Method names in registration order (the order selection indexes into)."""
        return tuple(self._methods)

    def copy(self) -> MethodRegistry:
        return MethodRegistry(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[str]:
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)


DEFAULT_REGISTRY = MethodRegistry()


def _as_utc(timestamp: datetime) -> datetime:
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware (UTC)")
    return timestamp.astimezone(UTC)


def selection_epoch(timestamp: datetime) -> int:
    """Whole UTC hours since the Unix epoch: the epoch number the ``seeded`` mode hashes."""
    seconds = int(_as_utc(timestamp).timestamp())
    if seconds < 0:
        raise ValueError("timestamp is before the Unix epoch")
    return seconds // 3600


def select_crypto_method(
    timestamp: datetime,
    mode: str = "hourly",
    *,
    seed: bytes | None = None,
    registry: MethodRegistry = DEFAULT_REGISTRY,
) -> str:
    """The cipher method name for ``timestamp`` under ``mode`` (see the module docstring)."""
    when = _as_utc(timestamp)
    names = registry.names()
    if not names:
        raise UnknownSuite("no cipher methods are registered")
    if mode == "hourly":
        index = when.hour + when.day
    elif mode == "weekday":
        index = when.weekday()
    elif mode == "seeded":
        if seed is None or len(seed) < MIN_SEED_LEN:
            raise ConfigurationError(
                f"the seeded cipher-method mode needs a network seed of at least "
                f"{MIN_SEED_LEN} bytes"
            )
        epoch = selection_epoch(when).to_bytes(8, "big")
        index = int.from_bytes(hmac.digest(seed, epoch, "sha256"), "big")
    else:
        raise UnknownSuite(f"unknown cipher-method selection mode {mode!r}")
    return names[index % len(names)]
