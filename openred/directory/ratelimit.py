"""A keyed sliding-window rate limiter (issue 7 §5: per initiator and per target).

Pure and in memory: ``now`` is passed in. Each key keeps the instants of its recent hits; a hit
beyond ``limit`` inside ``window`` seconds is refused with the seconds until the oldest hit
leaves the window (the Retry-After). The table is bounded: keys whose hits all left the window
are dropped as the table is swept.
"""

from __future__ import annotations

import ipaddress
from collections import deque

__all__ = ["RateLimiter", "client_key"]

IPV6_CLIENT_PREFIX = 64
"""An IPv6 client is its /64: one subscriber line or host is given a whole /64 (RFC 6177), so
a limit per address would give it 2^64 fresh budgets."""
_KEYS: dict[str, str] = {}
_KEYS_MAX = 65536


def client_key(address: str | None) -> str:
    """The rate-limit key of a client address: ``address:`` + the IPv4 address, or the IPv6 /64.

    An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client) is its IPv4
    address; a zone id is dropped; anything that is not an address (a Unix socket's
    ``<local>``) is kept as it is. Memoized (bounded): a dict lookup per registration.
    """
    text = str(address)
    key = _KEYS.get(text)
    if key is None:
        key = "address:" + _network(text)
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[text] = key
    return key


def _network(text: str) -> str:
    try:
        found = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return text
    if isinstance(found, ipaddress.IPv6Address):
        if found.ipv4_mapped is not None:
            return str(found.ipv4_mapped)
        return str(ipaddress.IPv6Network((found, IPV6_CLIENT_PREFIX), strict=False))
    return str(found)


class RateLimiter:
    """At most ``limit`` hits per key in any ``window`` seconds."""

    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds to wait if ``key`` is at its limit now, else None (nothing recorded)."""
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) < self.limit:
            return None
        return max(hits[0] + self.window - now, 0.001)

    def hit(self, key: str, now: float) -> None:
        """Record one hit for ``key``."""
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._sweep(now)
            hits = self._hits[key] = deque()
        hits.append(now)

    def release(self, key: str) -> None:
        """Take back ``key``'s newest hit: one recorded up front, before awaiting what decides
        whether it counts (so that attempts made at once cannot all pass :meth:`retry_after`
        before the first is recorded), and that turned out not to count."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()

    def _sweep(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:
            # Still full of live keys: forget the stalest (a bounded table beats a memory bomb).
            stalest = min(self._hits, key=lambda k: self._hits[k][-1])
            del self._hits[stalest]
