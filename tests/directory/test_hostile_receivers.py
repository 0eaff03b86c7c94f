"""The directory's pushes against hostile receivers (pattack, 2026-12-02).

Addresses a node may not make the directory push to: the address check at registration is
the one the push client's resolver makes at every connection
(:func:`openred.web.urls.check_address`), so a URL refused here is never pushed to. And what
a receiver's broken answer leaves in the directory's log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from openred.store.codec import decode_payload
from tests.directory.conftest import Directory, DirectoryFactory, Node
from tests.directory.test_bad_input import assert_problem
from tests.servers import HOST

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def grant_to_raw_receiver(directory: Directory, make_node: Any,
                                answer: bytes | Handler) -> tuple[Any, Node]:
    """Mallory, whose receiver reads each push whole and answers ``answer`` (raw bytes; or
    any connection handler), asks for a grant to Alice: the directory's reply, and Mallory."""

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(answer, bytes)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            await reader.readexactly(length[0] if length else 0)
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answering if isinstance(answer, bytes) else answer,
                                        HOST, 0)
    try:
        alice = await make_node()
        mallory = Node(directory, api_url=f"http://{HOST}:{server.sockets[0].getsockname()[1]}")
        assert (await alice.register()).status == 201
        assert (await mallory.register()).status == 201
        return await mallory.call("POST", "/api/v3/tokens/request-connection",
                                  {"target": alice.node_id}), mallory
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("allow_private, api_url", [
    # Site-local IPv6 (fec0::/10, deprecated by RFC 3879 but still routed inside some
    # networks): Python calls it neither private nor reserved, so it passed as public.
    (False, "http://[fec0::1]:8080"),
    (False, "http://[fec0:0:0:ffff::1]"),
    (False, "http://[feff:ffff::1]"),
    # Azure's WireServer (host agent, VM extension settings) sits at a public address.
    (False, "http://168.63.129.16"),
    (True, "http://168.63.129.16:32526"),
    (True, "http://[::ffff:168.63.129.16]"),
    # Oracle Cloud's legacy instance metadata address: private, so it passed wherever
    # OPENRED_ALLOW_PRIVATE_URLS=1.
    (True, "http://192.0.0.192/opc/v1"),
])
async def test_metadata_and_site_local_addresses_are_refused_at_registration(
    directory_factory: DirectoryFactory, allow_private: bool, api_url: str,
) -> None:
    async with directory_factory(allow_private_urls=allow_private) as directory:
        assert directory.service.settings.allow_private_urls is allow_private
        node = Node(directory, api_url=api_url)
        assert_problem(await node.register(), 422, "unsafe-url")


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 8000 + b"\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X" * 8000 + b"\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2" + b"0" * 8000 + b" OK\r\nContent-Length: 0\r\n\r\n",
])
async def test_a_receivers_broken_answer_leaves_a_bounded_reason_in_the_log(
    directory: Directory, make_node: Any, garbage: bytes,
) -> None:
    """aiohttp's error for an answer it cannot parse quotes the offending line (up to 8 KiB
    each, 16 KiB for a header), and the push's failure reason — that text, for each half —
    went whole into the ConnectionGrantFailed entry of the append-only, signed log and into
    the 502 problem: a node whose receiver answers garbage grew the directory's log by
    kilobytes of its own bytes per grant it asked for."""

    reply, mallory = await grant_to_raw_receiver(directory, make_node, garbage)
    assert_problem(reply, 502, "push-failed")
    assert reply.json()["delivered"] == {"initiator": False, "responder": True}
    assert len(reply.body) < 2048, len(reply.body)
    [failed] = [e for e in await directory.service.store.read()
                if e.type == "ConnectionGrantFailed"]
    reason = decode_payload(failed.payload)["reason"]
    assert mallory.node_id in reason and len(reason) < 1024, len(reason)


async def test_a_receiver_flooding_informational_answers_is_dropped_at_once(
    directory: Directory, make_node: Any,
) -> None:
    """aiohttp reads any number of 1xx answers before the real one. A receiver that sent
    ``100 Continue`` without end kept the directory's event loop parsing them at full CPU for
    the whole push (each attempt until its timeout): eight pushes in flight from one client
    network were enough to starve the directory. A push now fails at the ninth."""
    sent = 0

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        try:
            await reader.readuntil(b"\r\n\r\n")
            while True:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 100)
                sent += 100
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    started = time.monotonic()
    reply, _ = await grant_to_raw_receiver(directory, make_node, receiver)
    elapsed = time.monotonic() - started
    assert_problem(reply, 502, "push-failed")
    assert "informational" in reply.json()["detail"], reply.json()["detail"]
    # The fixture's pushes: 2 attempts of 2 s each; a flood lasted all of them.
    assert elapsed < 2.0, f"the push read 1xx answers for {elapsed:.1f} s ({sent} sent)"


async def test_a_receiver_answering_more_than_an_acknowledgement_fails_its_push(
    directory: Directory, make_node: Any,
) -> None:
    """Only a push answer's status counts, yet the directory read answers of up to 1 MiB
    (the client's general limit): with 256 pushes in flight, receivers could make it hold
    256 MiB. It now reads at most 16 KiB of a push's answer; a receiver sending more fails
    its own half (the grant is 502 push-failed, logged as failed)."""
    answer = b'{"status":"ok","pad":"' + b"x" * (512 * 1024) + b'"}'
    reply, _ = await grant_to_raw_receiver(
        directory, make_node, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(answer) + answer)
    assert_problem(reply, 502, "push-failed")
    assert reply.json()["delivered"] == {"initiator": False, "responder": True}
    assert "larger than 16384 bytes" in reply.json()["detail"], reply.json()["detail"]
