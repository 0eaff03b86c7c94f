"""SSRF defence: which API URLs a service accepts and which addresses it will connect to."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from openred.errors import UnsafeUrl
from openred.web.urls import SafeResolver, check_address, check_url, check_url_syntax

ALWAYS_REFUSED = [
    "169.254.169.254", "169.254.0.1", "fe80::1", "::", "0.0.0.0", "224.0.0.1", "ff02::1",
    "255.255.255.255", "240.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe",
    "2002:a9fe:a9fe::1", "fd00:ec2::254", "100.100.100.200",
]
PRIVATE = ["127.0.0.1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "100.64.0.1", "::1",
           "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]
PUBLIC = ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "1.1.1.1"]


@pytest.mark.parametrize("address", ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_link_local_metadata_and_reserved_are_always_refused(
    address: str, allow_private: bool
) -> None:
    with pytest.raises(UnsafeUrl):
        check_address(ipaddress.ip_address(address), allow_private=allow_private)


@pytest.mark.parametrize("address", PRIVATE)
def test_private_and_loopback_only_when_allowed(address: str) -> None:
    with pytest.raises(UnsafeUrl, match="OPENRED_ALLOW_PRIVATE_URLS"):
        check_address(ipaddress.ip_address(address), allow_private=False)
    check_address(ipaddress.ip_address(address), allow_private=True)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    check_address(ipaddress.ip_address(address), allow_private=False)


@pytest.mark.parametrize("url", [
    "ftp://example.com", "file:///etc/passwd", "http://", "http:///x", "https://u:p@example.com",
    "http://example.com@169.254.169.254", "http://example.com/?q=1", "http://example.com/#f",
    "http://exa mple.com", "http://example.com:99999", "http://[fe80::1%25eth0]:80",
    "http://example.com\\@evil", "javascript:alert(1)", "http://example.com:0", "x" * 600,
    "http://ex\u00e4mple.com",
])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_url_syntax(url)


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://[fe80::1]:8080", "http://[::]:80",
    "http://0.0.0.0:80",
])
async def test_dangerous_literal_urls_are_refused_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        await check_url(url, allow_private=True)


async def test_localhost_names_count_as_loopback() -> None:
    for url in ("http://localhost:8080", "http://api.localhost", "http://LOCALHOST."):
        with pytest.raises(UnsafeUrl):
            await check_url(url, allow_private=False)
        await check_url(url, allow_private=True)


async def test_names_are_resolved_and_every_address_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {"meta.example": ["169.254.169.254"], "mixed.example": ["1.1.1.1", "10.0.0.1"],
               "public.example": ["1.1.1.1"]}

    async def fake_resolve(host: str, port: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address(a) for a in answers.get(host, [])]

    monkeypatch.setattr("openred.web.urls._resolve", fake_resolve)
    with pytest.raises(UnsafeUrl, match="metadata"):
        await check_url("http://meta.example", allow_private=True)
    with pytest.raises(UnsafeUrl, match="private"):
        await check_url("http://mixed.example", allow_private=False)
    await check_url("http://mixed.example", allow_private=True)
    await check_url("http://public.example", allow_private=False)
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        await check_url("http://nowhere.example", allow_private=True)


async def test_the_connection_resolver_refuses_a_name_that_rebinds_to_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = SafeResolver(allow_private=True)
    real = socket.getaddrinfo

    def rebound(host: str, port: int, *args: object) -> list[tuple[object, ...]]:
        if host == "node.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        if host == "fine.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port))]
        return real(host, port, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    with pytest.raises(UnsafeUrl):
        await resolver.resolve("node.example", 80)
    (fine,) = await resolver.resolve("fine.example", 81)
    assert (fine["hostname"], fine["host"], fine["port"], fine["family"]) == (
        "fine.example", "127.0.0.2", 81, socket.AF_INET)
    with pytest.raises(UnsafeUrl):
        await resolver.resolve("169.254.169.254", 80)
    ok = await resolver.resolve("127.0.0.1", 80)
    assert ok[0]["host"] == "127.0.0.1"
    await resolver.close()


URL_SAMPLES = [
    "http://127.0.0.1:8080", "https://10.1.2.3", "http://[::1]:9", "http://1.1.1.1:80",
    "http://localhost:8080", "http://api.localhost", "http://169.254.169.254/x",
    "http://[fe80::1]:80", "http://0.0.0.0:1", "http://[::ffff:169.254.169.254]",
    "http://[::ffff:10.0.0.1]", "http://100.64.0.1", "https://8.8.8.8:443", "ftp://1.1.1.1",
    "http://u@1.1.1.1", "http://1.1.1.1/?q", "http://255.255.255.255",
]


async def _outcome(url: str, allow_private: bool) -> str:
    try:
        await check_url(url, allow_private=allow_private)
    except UnsafeUrl as exc:
        return f"refused: {exc}"
    return "ok"


async def test_remembered_urls_answer_as_the_first_check_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("openred.web.urls._passed", set())
    for allow_private in (False, True, False):
        for url in URL_SAMPLES:
            first = await _outcome(url, allow_private)
            # The same answer again (from memory for a URL that passed), and the same as a
            # check that remembers nothing.
            assert await _outcome(url, allow_private) == first
            monkeypatch.setattr("openred.web.urls._passed", set())
            assert await _outcome(url, allow_private) == first
    # A URL that passed with private addresses allowed is still refused without.
    await check_url("http://127.0.0.1:8080", allow_private=True)
    assert (await _outcome("http://127.0.0.1:8080", False)).startswith("refused")


async def test_names_are_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("openred.web.urls._passed", set())
    answers = {"node.example": ["1.1.1.1"]}

    async def fake_resolve(host: str, port: int) -> list[ipaddress.IPv4Address]:
        return [ipaddress.IPv4Address(a) for a in answers.get(host, [])]

    monkeypatch.setattr("openred.web.urls._resolve", fake_resolve)
    await check_url("http://node.example", allow_private=False)
    answers["node.example"] = ["169.254.169.254"]  # the name now points at metadata
    with pytest.raises(UnsafeUrl, match="metadata"):
        await check_url("http://node.example", allow_private=False)


async def test_refused_urls_are_never_remembered_and_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from openred.web import urls

    monkeypatch.setattr("openred.web.urls._passed", set())
    for url in URL_SAMPLES:
        await _outcome(url, True)
    assert urls._passed <= {(True, u) for u in URL_SAMPLES}
    assert (True, "http://169.254.169.254/x") not in urls._passed
    for port in range(1, urls._PASSED_MAX + 10):
        await check_url(f"http://127.0.0.1:{port}", allow_private=True)
    assert len(urls._passed) <= urls._PASSED_MAX


async def test_lookups_are_bounded_timed_and_accounted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent DNS zone holds one lookup thread; waiting lookups are dropped on timeout and
    a full pool refuses at once (503), and every slot comes back."""
    import asyncio
    import threading

    from openred.errors import ServiceBusy
    from openred.web import urls

    release = threading.Event()

    def silent(host: str, port: int, *args: object) -> list[tuple[object, ...]]:
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "no answer")

    monkeypatch.setattr(socket, "getaddrinfo", silent)
    monkeypatch.setattr(urls, "RESOLVE_TIMEOUT", 0.2)
    lookups = urls.Lookups("test", 1, pending=2)
    try:
        first = asyncio.ensure_future(lookups.getaddrinfo("a.silent", 80))
        second = asyncio.ensure_future(lookups.getaddrinfo("b.silent", 80))
        await asyncio.sleep(0)
        with pytest.raises(ServiceBusy):
            await lookups.getaddrinfo("c.silent", 80)
        for task in (first, second):
            with pytest.raises(UnsafeUrl, match="did not resolve within"):
                await task
        assert lookups.busy == 1  # the waiting one was dropped; the running one still runs
    finally:
        release.set()
    for _ in range(100):
        if lookups.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert lookups.busy == 0
