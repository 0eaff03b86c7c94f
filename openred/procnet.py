"""Who owns a TCP socket on this machine, from ``/proc/net/tcp{,6}`` (Linux).

The CLI asks which users listen on the admin port before it sends the admin key there
(:func:`listeners`); the node asks which user opened a connection to its admin API
(:func:`connection_owner`), so that wrong TOTP codes sent by another user of the machine do
not lock out the operator at the node itself. Where the tables do not exist (not Linux) or
do not show the socket (another network namespace), the answer is None: nobody in particular.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

__all__ = ["connection_owner", "listeners"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_PROC_NET = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"


def _proc_address(text: str) -> Address:
    """An address of /proc/net/tcp{,6} (hex, each 32-bit word in host byte order)."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _unmapped(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _reaches_loopback(addr: Address) -> bool:
    addr = _unmapped(addr)
    return addr.is_loopback or addr.is_unspecified


def _endpoint(text: str) -> tuple[Address, int]:
    host, _, hexport = text.partition(":")
    return _unmapped(_proc_address(host)), int(hexport, 16)


def _rows() -> list[list[str]] | None:
    """The socket rows of both tables (fields split); None without ``/proc/net/tcp``."""
    if not _PROC_NET[0].exists():
        return None
    rows: list[list[str]] = []
    for table in _PROC_NET:
        try:
            lines = table.read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        rows.extend(fields for line in lines if len(fields := line.split()) >= 8)
    return rows


def listeners(port: int) -> list[int] | None:
    """The uids of the sockets listening on loopback (or any address) at ``port``; None where
    the system does not say (no ``/proc/net/tcp``: not Linux)."""
    rows = _rows()
    if rows is None:
        return None
    uids = []
    for fields in rows:
        if fields[3] != _LISTEN:
            continue
        addr, found = _endpoint(fields[1])
        if found == port and _reaches_loopback(addr):
            uids.append(int(fields[7]))
    return uids


def connection_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid of the socket at ``client`` connected to ``server`` (both as a server sees
    them), or None if this machine's tables do not show it."""
    try:
        want = (_unmapped(ipaddress.ip_address(client[0])), int(client[1]),
                _unmapped(ipaddress.ip_address(server[0])), int(server[1]))
    except (ValueError, TypeError, IndexError):
        return None
    for fields in _rows() or ():
        if fields[3] == _LISTEN:
            continue
        seen = (*_endpoint(fields[1]), *_endpoint(fields[2]))
        if seen == want:
            return int(fields[7])
    return None
