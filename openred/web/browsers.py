"""Telling a browser page from a local program by what it sends (no web framework here).

A program such as the ``openred`` CLI or Prometheus sends a ``Host`` naming the address it
connects to, no ``Origin`` and no ``Sec-Fetch-Site`` (or ``none``). A web page's requests carry
its own host name in ``Host`` (a page on ``evil.example`` made to resolve to 127.0.0.1: DNS
rebinding), and a browser adds ``Origin`` to cross-origin requests and ``Sec-Fetch-Site``
(``same-origin``, ``same-site``, ``cross-site``) to every fetch. Used by the node's admin API
and the metrics listener.
"""

from __future__ import annotations

__all__ = ["LOOPBACK_NAMES", "from_browser", "host_name", "is_loopback_host"]

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", ""})
"""Host names (``Host`` without its port, lower case) a loopback service answers to; empty is
an HTTP/1.0 client that sent none (a browser always sends one)."""


def host_name(host: str) -> str:
    """``Host`` without its port, lower case (``[v6]`` kept in brackets)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if ":" in host else host


def is_loopback_host(host: str) -> bool:
    """Whether a listener bound to ``host`` is reachable only from this machine."""
    import ipaddress

    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def from_browser(host: str | None, origin: str | None, fetch_site: str | None, *,
                 loopback: bool) -> bool:
    """Whether a request with these ``Host``, ``Origin`` and ``Sec-Fetch-Site`` headers (None:
    absent) is one a browser page could have sent.

    ``loopback``: the service listens on loopback only, so any ``Host`` but a loopback name is
    a page's (a service on another address is named by whatever name its clients use).
    """
    return (loopback and host is not None and host_name(host) not in LOOPBACK_NAMES) or (
        origin is not None
    ) or (fetch_site is not None and fetch_site != "none")
