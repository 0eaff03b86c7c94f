"""Keyed limits, pure and shared: the directory's (issue 7 §5: per initiator and per target),
the node's (handshake refusals, offers, operator logins) and messaging's per-peer budgets.

Pure and in memory: ``now`` is passed in. :class:`RateLimiter` keeps each key's recent hits; a
hit beyond ``limit`` inside ``window`` seconds is refused with the seconds until the oldest hit
leaves the window (the Retry-After). :class:`FairShare` is a per-key budget shared fairly by the
parties (client networks) that use it. :class:`InFlight` bounds work under way per key and in
all. The tables are bounded: keys whose hits all left the window are dropped as they are swept.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Allowance", "FairShare", "Held", "InFlight", "RateLimiter", "client_key"]

T = TypeVar("T")

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


def _sweep(table: dict[str, T], last: Callable[[T], float], horizon: float,
           max_keys: int) -> None:
    """Drop the keys of ``table`` last used at ``horizon`` or before; if it still holds
    ``max_keys``, forget the stalest live one (a bounded table beats a memory bomb)."""
    for key in [k for k, v in table.items() if last(v) <= horizon]:
        del table[key]
    if len(table) >= max_keys:
        del table[min(table, key=lambda k: last(table[k]))]


def _last_hit(hits: deque[float]) -> float:
    return hits[-1] if hits else -math.inf


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
                _sweep(self._hits, _last_hit, now - self.window, self.max_keys)
            hits = self._hits[key] = deque()
        hits.append(now)

    def release(self, key: str) -> None:
        """Take back ``key``'s newest hit: one recorded up front, before awaiting what decides
        whether it counts (so that attempts made at once cannot all pass :meth:`retry_after`
        before the first is recorded), and that turned out not to count."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()



class Allowance:
    """At most ``limit`` units per key in a burst, refilled at ``limit`` per ``window`` seconds.

    A token bucket per key: two floats, whatever the limit (:class:`RateLimiter` keeps every
    hit, too much for budgets of 100,000 messages an hour). A key unused for ``window`` seconds
    is full again, and only then dropped from the table. :meth:`retry_after` then :meth:`take`
    with no await in between: charges made at once cannot all pass before the first is taken.
    """

    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self.rate = limit / window
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        """key → (units left, when counted)."""

    def _left(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            return float(self.limit)
        left, at = bucket
        return min(float(self.limit), left + max(0.0, now - at) * self.rate)

    def retry_after(self, key: str, now: float, units: int = 1) -> float | None:
        """Seconds until ``units`` fit ``key``'s budget (None: they fit now; nothing recorded).

        More units than ``limit`` are counted as ``limit`` (they fit a full budget)."""
        missing = min(units, self.limit) - self._left(key, now)
        return None if missing <= 0 else max(missing / self.rate, 0.001)

    def take(self, key: str, now: float, units: int = 1) -> None:
        """Take ``units`` from ``key``'s budget (checked with :meth:`retry_after` first)."""
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            _sweep(self._buckets, _counted_at, now - self.window, self.max_keys)
        self._buckets[key] = (self._left(key, now) - min(units, self.limit), now)


def _counted_at(bucket: tuple[float, float]) -> float:
    return bucket[1]


class _Shares:
    """One key's hits in the window, oldest first, and how many of them each party holds."""

    __slots__ = ("counts", "hits")

    def __init__(self) -> None:
        self.hits: deque[tuple[float, str]] = deque()
        self.counts: dict[str, int] = {}

    def last(self) -> float:
        """When the newest hit was made (-inf: none)."""
        return self.hits[-1][0] if self.hits else -math.inf

    def expire(self, horizon: float) -> None:
        hits, counts = self.hits, self.counts
        while hits and hits[0][0] <= horizon:
            party = hits.popleft()[1]
            left = counts[party] - 1
            if left:
                counts[party] = left
            else:
                del counts[party]


class FairShare:
    """A budget of ``limit`` hits per key in any ``window`` seconds, shared by its parties.

    A party (a client network) may add a hit to a key (a target) while it holds fewer than
    ``limit // k`` of the key's hits in the window (at least one), ``k`` being the parties that
    hold hits on the key, itself counted; the key takes at most ``2 × limit`` in all. A party
    alone gets the whole ``limit``; a party that has not used the key yet gets in even when
    others spent ``limit`` (until ``k`` exceeds ``limit`` or the key holds ``2 × limit``), and
    parties that keep asking settle at ``limit // k`` each. Each hit costs a dict lookup and an
    append; a refusal scans the key's hits (at most ``2 × limit``) for its Retry-After.
    """

    def __init__(self, limit: int, window: float, *, max_keys: int = 100_000) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.ceiling = 2 * limit
        self.window = window
        self.max_keys = max_keys
        self._keys: dict[str, _Shares] = {}

    def retry_after(self, key: str, party: str, now: float) -> float | None:
        """Seconds ``party`` should wait if it may not add a hit to ``key`` now, else None."""
        shares = self._keys.get(key)
        if shares is None:
            return None
        shares.expire(now - self.window)
        used = shares.counts.get(party, 0)
        parties = len(shares.counts) + (used == 0)
        if used < max(1, self.limit // parties) and len(shares.hits) < self.ceiling:
            return None
        # Until the party's oldest hit leaves the window (the key's oldest, if it holds none).
        oldest = next((t for t, p in shares.hits if p == party), shares.hits[0][0])
        return max(oldest + self.window - now, 0.001)

    def hit(self, key: str, party: str, now: float) -> None:
        """Record one hit of ``party`` on ``key``."""
        shares = self._keys.get(key)
        if shares is None:
            if len(self._keys) >= self.max_keys:
                _sweep(self._keys, _Shares.last, now - self.window, self.max_keys)
            shares = self._keys[key] = _Shares()
        shares.hits.append((now, party))
        shares.counts[party] = shares.counts.get(party, 0) + 1



class InFlight:
    """At most ``per_key`` units under way per key and ``total`` in all (pushes in flight)."""

    def __init__(self, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("per_key and total must be positive")
        self.per_key = per_key
        self.total = total
        self.used = 0
        self._held: dict[str, int] = {}

    def blocked(self, key: str, n: int) -> str | None:
        """Why ``n`` more units for ``key`` may not start now (``"key"`` or ``"total"``), or
        None."""
        if self._held.get(key, 0) + n > self.per_key:
            return "key"
        if self.used + n > self.total:
            return "total"
        return None

    def enter(self, key: str, n: int) -> Held:
        """Take ``n`` units for ``key`` (checked with :meth:`blocked` first, no await between)."""
        self._held[key] = self._held.get(key, 0) + n
        self.used += n
        return Held(self, key, n)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def _leave(self, key: str, n: int) -> None:
        left = self._held[key] - n
        if left:
            self._held[key] = left
        else:
            del self._held[key]
        self.used -= n


class Held:
    """Units taken from an :class:`InFlight`; each is given back once (idempotent at the end)."""

    __slots__ = ("_gate", "count", "key")

    def __init__(self, gate: InFlight, key: str, count: int) -> None:
        self._gate = gate
        self.key = key
        self.count = count

    def release(self, n: int = 1) -> None:
        """Give back ``n`` units (fewer if fewer are held)."""
        n = min(n, self.count)
        if n > 0:
            self.count -= n
            self._gate._leave(self.key, n)

    def release_all(self) -> None:
        self.release(self.count)
