"""Which URLs a service may call (SSRF defence, issue 7 §7).

An ``api_url`` must be ``http`` or ``https`` with a host, no user info, no fragment. Its host is
checked as an address:

* always refused: link-local (169.254.0.0/16, fe80::/10, including the cloud metadata address
  169.254.169.254), the other cloud metadata and host-agent addresses (``_METADATA``), the
  unspecified address, multicast, reserved and broadcast ranges, and the IPv6 forms that
  embed an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) when the embedded address is
  refused;
* refused unless ``allow_private`` (``OPENRED_ALLOW_PRIVATE_URLS=1``): loopback, RFC 1918,
  carrier-grade NAT (100.64.0.0/10), unique-local IPv6 (fc00::/7), site-local IPv6
  (fec0::/10) and the other special-purpose ranges Python calls private;
* a DNS name is checked by resolving it: every address it resolves to must pass (one bad
  address refuses the name). ``localhost`` and names under ``.localhost`` count as loopback.

A name can later resolve elsewhere (DNS rebinding), so the outbound client checks the addresses
again at connection time with :class:`SafeResolver`: a check at registration alone would not do.

The names are chosen by nodes, and so are their DNS servers: a zone that never answers held a
``getaddrinfo`` thread for as long as the system resolver tries. Lookups therefore run on
small pools of their own (one for registrations, one for connections, :class:`Lookups`), never
the event loop's default executor, with a time limit (:data:`RESOLVE_TIMEOUT`); a pool whose
threads are all taken refuses at once (:class:`~openred.errors.ServiceBusy`, 503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

from openred.errors import ServiceBusy, UnsafeUrl

__all__ = ["MAX_URL_LEN", "Lookups", "SafeResolver", "check_address", "check_url_syntax",
           "normalize_url"]

MAX_URL_LEN = 512
_AI_ADDRCONFIG = getattr(socket, "AI_ADDRCONFIG", 0)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6 metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
    ipaddress.ip_address("168.63.129.16"),  # Azure WireServer (host agent; a public address)
    ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud legacy metadata
}
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
"""Deprecated (RFC 3879) but still routed inside some networks; Python calls it global."""


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 (RFC 6052)
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def check_address(address: IPAddress, *, allow_private: bool) -> None:
    """Raise UnsafeUrl unless a service may connect to ``address``."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            raise UnsafeUrl(f"address {address} carries a zone (link-local scope)")
        inner = _embedded_v4(address)
        if inner is not None:
            # The packet goes to the embedded IPv4 address: that is the one to judge.
            check_address(inner, allow_private=allow_private)
            return
    if address in _METADATA:
        raise UnsafeUrl(f"address {address} is a cloud metadata endpoint")
    if address.is_link_local:
        raise UnsafeUrl(f"address {address} is link-local")
    if address.is_unspecified or address.is_multicast or (
        address.is_reserved and not address.is_loopback
    ):
        raise UnsafeUrl(f"address {address} cannot be a node's address")
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        raise UnsafeUrl("the broadcast address cannot be a node's address")
    local = address.is_loopback or address.is_private or not address.is_global or (
        isinstance(address, ipaddress.IPv6Address) and address in _SITE_LOCAL)
    if local and not allow_private:
        raise UnsafeUrl(
            f"address {address} is private or loopback (set OPENRED_ALLOW_PRIVATE_URLS=1 "
            "to allow it on a private network)"
        )


def _host_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url_syntax(url: str) -> tuple[str, str, int]:
    """Raise UnsafeUrl unless ``url`` is http(s) with a host; return (scheme, host, port)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LEN:
        raise UnsafeUrl(f"a URL is 1-{MAX_URL_LEN} characters")
    if any(ch <= " " or ch == "\x7f" or ch == "\\" for ch in url) or not url.isascii():
        raise UnsafeUrl("a URL is printable ASCII without spaces or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"malformed URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl("the URL scheme must be http or https")
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("the URL must not carry user information")
    if parts.fragment or parts.query:
        raise UnsafeUrl("an API URL has no query or fragment")
    if port == 0:
        raise UnsafeUrl("port 0 is not a port")
    if "%" in host:
        raise UnsafeUrl("the URL host carries a zone (link-local scope)")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, host, port or default


def normalize_url(url: str) -> str:
    """An API base URL without a trailing slash (records carry it like this)."""
    return url[:-1] if url.endswith("/") else url


def _is_localhost_name(host: str) -> bool:
    host = host.rstrip(".").lower()
    return host == "localhost" or host.endswith(".localhost")


_PASSED_MAX = 4096
_passed: set[tuple[bool, str]] = set()
"""URLs whose host is an address or a localhost name that passed :func:`check_url` (bounded).

For those the check is a pure function of the URL and ``allow_private`` (no DNS), so a URL
that passed once passes again; a refused URL is never remembered, and a DNS name is never
remembered (it is resolved and judged at every call)."""


def _remember(key: tuple[bool, str]) -> None:
    if len(_passed) >= _PASSED_MAX:
        _passed.clear()
    _passed.add(key)


async def check_url(url: str, *, allow_private: bool, resolve: bool = True) -> None:
    """Raise UnsafeUrl unless a service may call ``url`` (its host resolved when a name)."""
    key = (allow_private, url)
    if key in _passed:
        return
    _, host, port = check_url_syntax(url)
    address = _host_address(host)
    if address is not None:
        check_address(address, allow_private=allow_private)
        _remember(key)
        return
    if _is_localhost_name(host):
        check_address(ipaddress.ip_address("127.0.0.1"), allow_private=allow_private)
        _remember(key)
        return
    if not resolve:
        return
    addresses = await _resolve(host, port)
    if not addresses:
        raise UnsafeUrl(f"host {host} does not resolve")
    for found in addresses:
        check_address(found, allow_private=allow_private)


RESOLVE_TIMEOUT = 5.0
"""Seconds a name may take to resolve (a node's name: its DNS servers are the node's choice)."""

AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


class Lookups:
    """``getaddrinfo`` on a pool of ``threads`` threads of its own, ``pending`` lookups at most.

    A lookup the system resolver does not finish within :data:`RESOLVE_TIMEOUT` (counting any
    wait for a thread) is abandoned by its caller: its thread stays busy until the resolver
    gives up, a lookup still waiting for a thread is dropped. When ``pending`` lookups are
    running or waiting, a new one is refused at once with
    :class:`~openred.errors.ServiceBusy` rather than queued behind them. Thread-safe; usable
    from any event loop.
    """

    def __init__(self, name: str, threads: int, pending: int) -> None:
        self.name = name
        self.threads = threads
        self.pending = max(pending, threads)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._busy = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        """Lookups running or waiting now (abandoned ones included until they end)."""
        return self._busy

    def _done(self, _: object) -> None:
        with self._lock:
            self._busy -= 1

    async def getaddrinfo(self, host: str, port: int, family: int = socket.AF_UNSPEC,
                          flags: int = 0) -> list[AddrInfo]:
        """The resolver's answer; OSError as it raises, UnsafeUrl on timeout, ServiceBusy."""
        with self._lock:
            if self._busy >= self.pending:
                raise ServiceBusy(f"too many {self.name} DNS lookups in progress; retry later")
            self._busy += 1
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.threads, thread_name_prefix=f"openred-dns-{self.name}")
            pool = self._pool
        try:
            future = pool.submit(_getaddrinfo, host, port, family, flags)
        except BaseException:
            self._done(None)
            raise
        # Exactly once: when the lookup ends, or when it is dropped before it started.
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), RESOLVE_TIMEOUT)
        except TimeoutError as exc:
            raise UnsafeUrl(
                f"host {host} did not resolve within {RESOLVE_TIMEOUT:g} s") from exc


def _getaddrinfo(host: str, port: int, family: int, flags: int) -> list[AddrInfo]:
    infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, flags)
    return [(int(f), int(t), proto, name, tuple(a)) for f, t, proto, name, a in infos]


REGISTRATION_LOOKUPS = Lookups("registration", 4, pending=16)
"""Lookups of names being registered (:func:`check_url`)."""
CONNECTION_LOOKUPS = Lookups("connection", 8, pending=64)
"""Lookups of names being connected to (:class:`SafeResolver`)."""


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await REGISTRATION_LOOKUPS.getaddrinfo(host, port)
    except OSError as exc:
        raise UnsafeUrl(f"host {host} does not resolve") from exc
    return [found for info in infos if (found := _host_address(str(info[4][0]))) is not None]


class SafeResolver(AbstractResolver):
    """aiohttp resolver that refuses to connect to addresses :func:`check_address` refuses.

    Used by the outbound client, so a name that passed at registration and later resolves to
    a private or metadata address (DNS rebinding) is still not reached.
    """

    def __init__(self, *, allow_private: bool, lookups: Lookups | None = None) -> None:
        self._lookups = CONNECTION_LOOKUPS if lookups is None else lookups
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = _host_address(host)
        if address is not None:
            check_address(address, allow_private=self._allow_private)
            return [_result(host, str(address), port, address)]
        if _is_localhost_name(host):
            check_address(ipaddress.ip_address("127.0.0.1"), allow_private=self._allow_private)
        # aiohttp's ThreadedResolver, on a pool of its own with a time limit (see Lookups).
        infos = await self._lookups.getaddrinfo(host, port, family, _AI_ADDRCONFIG)
        kept = []
        for info_family, _, proto, _, sockaddr in infos:
            found = _host_address(str(sockaddr[0]))
            if found is None:
                continue
            check_address(found, allow_private=self._allow_private)  # refuses zone ids too
            kept.append(ResolveResult(
                hostname=host, host=str(found), port=int(sockaddr[1]),
                family=socket.AddressFamily(info_family), proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV))
        if not kept:
            raise UnsafeUrl(f"host {host} has no address a service may call")
        return kept

    async def close(self) -> None:
        return None


def _result(hostname: str, host: str, port: int, address: IPAddress) -> ResolveResult:
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    return ResolveResult(hostname=hostname, host=host, port=port, family=family, proto=0,
                         flags=socket.AI_NUMERICHOST)
