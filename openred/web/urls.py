"""Which URLs a service may call (SSRF defence, issue 7 §7).

An ``api_url`` must be ``http`` or ``https`` with a host, no user info, no fragment. Its host is
checked as an address:

* always refused: link-local (169.254.0.0/16, fe80::/10, including the cloud metadata address
  169.254.169.254), the unspecified address, multicast, reserved and broadcast ranges, and the
  IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) when the embedded
  address is refused;
* refused unless ``allow_private`` (``OPENRED_ALLOW_PRIVATE_URLS=1``): loopback, RFC 1918,
  carrier-grade NAT (100.64.0.0/10), unique-local IPv6 (fc00::/7) and the other
  special-purpose ranges Python calls private;
* a DNS name is checked by resolving it: every address it resolves to must pass (one bad
  address refuses the name). ``localhost`` and names under ``.localhost`` count as loopback.

A name can later resolve elsewhere (DNS rebinding), so the outbound client checks the addresses
again at connection time with :class:`SafeResolver`: a check at registration alone would not do.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from openred.errors import UnsafeUrl

__all__ = ["MAX_URL_LEN", "SafeResolver", "check_address", "check_url_syntax", "normalize_url"]

MAX_URL_LEN = 512
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IPv6 metadata
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
}


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
    local = address.is_loopback or address.is_private or not address.is_global
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


async def _resolve(host: str, port: int) -> list[IPAddress]:
    resolver = DefaultResolver()
    try:
        results = await resolver.resolve(host, port, socket.AF_UNSPEC)
    except OSError as exc:
        raise UnsafeUrl(f"host {host} does not resolve") from exc
    finally:
        await resolver.close()
    return list(_addresses(results))


def _addresses(results: Iterable[ResolveResult]) -> Iterable[IPAddress]:
    for item in results:
        found = _host_address(str(item["host"]))
        if found is not None:
            yield found


class SafeResolver(AbstractResolver):
    """aiohttp resolver that refuses to connect to addresses :func:`check_address` refuses.

    Used by the outbound client, so a name that passed at registration and later resolves to
    a private or metadata address (DNS rebinding) is still not reached.
    """

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
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
        results = await self._inner.resolve(host, port, family)
        kept = []
        for item in results:
            found = _host_address(str(item["host"]))
            if found is None:
                continue
            check_address(found, allow_private=self._allow_private)
            kept.append(item)
        if not kept:
            raise UnsafeUrl(f"host {host} has no address a service may call")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _result(hostname: str, host: str, port: int, address: IPAddress) -> ResolveResult:
    family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
    return ResolveResult(hostname=hostname, host=host, port=port, family=family, proto=0,
                         flags=socket.AI_NUMERICHOST)
