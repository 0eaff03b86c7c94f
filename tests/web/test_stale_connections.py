"""A request sent on a pooled connection the server closes as it arrives is not lost.

Every OpenRed server closes a kept-alive connection after ``keep_alive_timeout`` idle, and any
server or proxy may close one at any time. A request written on a pooled connection just as
the server closes it gets the close instead of an answer; aiohttp sends again only an
idempotent request, so the POSTs (token pushes, P2P envelopes, grant requests, registrations,
heartbeats) failed. The client now (a) keeps idle connections half as long as OpenRed's
servers do, and (b) sends once more, on a new connection, a request whose REUSED connection
closed before any byte of the answer came — the same bytes, so a signed request the server
did see is refused as a replay, never acted on twice.

Made deterministic with a loopback relay in front of a real served app: it relays the first
request of a connection and its answer, then plays the server's close when the next request
on that connection arrives (a close before any byte of it is relayed, a reset, the request
relayed and its answer swallowed, the first bytes of the answer then a close, or silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nacl.signing
import pytest
from quart import Quart, request

from openred.crypto.identity import SignKey
from openred.errors import PeerUnreachable
from openred.node.transport import post_json
from openred.web.client import POOL_IDLE_SECONDS, HttpClient, Signer
from openred.web.problems import install
from openred.web.serve import SERVER_KEEP_ALIVE_SECONDS, hypercorn_config
from openred.web.signatures import InboundVerifier
from tests.servers import HOST, free_port, serve_in_loop


class Relay:
    """A loopback TCP relay to ``upstream``; the next request on its first connection meets
    ``mode``: ``close`` (closed at its first bytes, nothing relayed), ``reset`` (the same with
    a TCP reset), ``processed`` (relayed, the answer swallowed, then closed), ``partial`` (the
    answer's first bytes relayed, then closed), ``silent`` (nothing relayed nor answered).
    Later connections are relayed as they are, or, ``silent_later``, never answered."""

    def __init__(self, upstream: str, mode: str, silent_later: bool = False) -> None:
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.mode = mode
        self.silent_later = silent_later
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.url = ""
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, HOST, port)
        self.url = f"http://{HOST}:{port}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        plays = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        state = {"answered": False, "next": False}

        def close(reset: bool = False) -> None:
            if reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
            up_writer.close()

        async def to_server() -> None:
            while data := await reader.read(65536):
                if not plays and self.silent_later:
                    continue
                if plays and state["answered"]:
                    state["next"] = True  # the next request on the kept-alive connection
                    if self.mode in ("close", "reset"):
                        close(reset=self.mode == "reset")
                        return
                    if self.mode == "silent":
                        continue
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if state["next"]:
                    if self.mode == "partial":
                        writer.write(data[:12])  # "HTTP/1.1 200"
                        await writer.drain()
                    close()
                    return
                writer.write(data)
                await writer.drain()
                state["answered"] = True
            writer.close()

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.gather(to_server(), to_client())
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass  # the relay stops (a cancelled handler would be logged by asyncio)
        finally:
            self._tasks.discard(task)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()


def make_app(public_url: str, key: SignKey, seen: list[Any]) -> Quart:
    app = Quart("stale")
    install(app)
    verifier = InboundVerifier(public_url)

    async def resolve(keyid: str) -> SignKey | None:
        return key if keyid == str(key.node_id) else None

    @app.post("/echo")
    async def echo() -> dict[str, Any]:
        body = await request.get_json(force=True)
        seen.append(body)
        return {"n": body["n"]}

    @app.post("/signed")
    async def signed() -> dict[str, Any]:
        keyid, req = await verifier.verify(request, resolve)
        seen.append(req.header("signature"))
        return {"keyid": keyid}

    return app


def signer_for(sk: nacl.signing.SigningKey) -> Signer:
    async def sign_base(base: bytes) -> bytes:
        return bytes(sk.sign(base).signature)

    return Signer(str(SignKey(bytes(sk.verify_key)).node_id), sign_base)


@contextlib.asynccontextmanager
async def served(
    mode: str, silent_later: bool = False
) -> AsyncIterator[tuple[Relay, nacl.signing.SigningKey, list[Any]]]:
    """The app served for real behind a relay in ``mode``; the app verifies signatures made for
    the relay's URL."""
    sk = nacl.signing.SigningKey.generate()
    seen: list[Any] = []
    port, relay_port = free_port(), free_port()
    relay_url = f"http://{HOST}:{relay_port}"
    app = make_app(relay_url, SignKey(bytes(sk.verify_key)), seen)
    async with serve_in_loop(app, port) as url:
        relay = Relay(url, mode, silent_later)
        await relay.start(relay_port)
        try:
            yield relay, sk, seen
        finally:
            await relay.stop()


async def first_then_second(client: HttpClient, relay: Relay, **kw: Any) -> Any:
    """Send /echo n=1 (relayed, its connection pooled), then /echo n=2 on that connection."""
    first = await client.request("POST", relay.url + "/echo", json_body={"n": 1}, attempts=1)
    assert first.json() == {"n": 1}
    return await client.request("POST", relay.url + "/echo", json_body={"n": 2}, **kw)


@pytest.mark.parametrize("mode", ["close", "reset"])
async def test_a_post_on_a_connection_closed_as_it_arrives_is_sent_again_once(mode: str) -> None:
    async with served(mode) as (relay, _, seen), HttpClient(allow_private=True) as client:
        reply = await first_then_second(client, relay, attempts=1)
        assert reply.json() == {"n": 2}
        assert seen == [{"n": 1}, {"n": 2}]  # each acted on once
        assert relay.connections == 2  # the second time on a new connection


async def test_a_request_that_must_not_be_sent_twice_is_sent_again_when_it_was_not_seen(
) -> None:
    async with served("close") as (relay, _, seen), HttpClient(allow_private=True) as client:
        reply = await first_then_second(client, relay, replayable=False)
        assert reply.json() == {"n": 2} and seen == [{"n": 1}, {"n": 2}]


async def test_a_p2p_call_through_the_pooled_session_is_sent_again() -> None:
    async with served("close") as (relay, _, seen), HttpClient(allow_private=True) as client:
        assert (await post_json(client, relay.url + "/echo", b'{"n":1}')).json() == {"n": 1}
        reply = await post_json(client, relay.url + "/echo", b'{"n":2}')
        assert reply.json() == {"n": 2} and seen == [{"n": 1}, {"n": 2}]


async def test_a_signed_request_sent_again_is_accepted_by_the_verifier() -> None:
    async with served("close") as (relay, sk, seen), \
            HttpClient(signer=signer_for(sk), allow_private=True) as client:
        first = await client.request("POST", relay.url + "/signed", json_body={}, signed=True,
                                     attempts=1)
        assert first.status == 200, first.body
        again = await client.request("POST", relay.url + "/signed", json_body={}, signed=True,
                                     attempts=1)
        assert again.status == 200, again.body  # not refused as a replay
        assert len(seen) == 2 and seen[0] != seen[1]


async def test_a_signed_request_the_server_did_act_on_is_not_acted_on_twice() -> None:
    """The server read the request and acted, its answer never came: sent again, the same
    bytes are refused as a replay (401) — not a second effect under a new signature."""
    async with served("processed") as (relay, sk, seen), \
            HttpClient(signer=signer_for(sk), allow_private=True) as client:
        await client.request("POST", relay.url + "/signed", json_body={}, signed=True)
        reply = await client.request("POST", relay.url + "/signed", json_body={}, signed=True,
                                     attempts=1)
        assert reply.status == 401 and "replayed" in reply.json()["detail"]
        assert len(seen) == 2  # the first request and the second one, once


async def test_a_connection_closed_after_the_first_bytes_of_the_answer_is_not_sent_again(
) -> None:
    async with served("partial") as (relay, _, seen), HttpClient(allow_private=True) as client:
        with pytest.raises(PeerUnreachable):
            await first_then_second(client, relay, attempts=1)
        assert seen == [{"n": 1}, {"n": 2}] and relay.connections == 1


async def test_a_silent_server_is_not_asked_again_on_a_new_connection() -> None:
    async with served("silent") as (relay, _, seen), HttpClient(allow_private=True) as client:
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match="Timeout"):
            await first_then_second(client, relay, attempts=1, timeout=0.5)
        assert time.monotonic() - started < 3
        assert seen == [{"n": 1}] and relay.connections == 1


async def test_a_new_connection_closed_without_an_answer_is_not_sent_again() -> None:
    """Only a reused connection: a new one that closes is the server's answer to this
    request (the request counts as an attempt, as before)."""
    hits = 0

    async def shut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        hits += 1
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(shut, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HttpClient(allow_private=True) as client:
            with pytest.raises(PeerUnreachable, match="after 1 attempts"):
                await client.request("POST", f"http://{HOST}:{port}/x", json_body={},
                                     attempts=1)
        assert hits == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stale_connection_costs_no_attempt_and_stays_within_the_budget() -> None:
    """Sent again inside the attempt, under its time: the new connection never answers, the
    budget still ends the request, and it was one attempt (the old client made two)."""
    async with served("close", silent_later=True) as (relay, _, seen), \
            HttpClient(allow_private=True) as client:
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match=r"after 1 attempts: .*Timeout"):
            await first_then_second(client, relay, attempts=3, budget=1.0)
        assert time.monotonic() - started < 2.5
        assert relay.connections == 2 and seen == [{"n": 1}]


# -- (a) idle connections are dropped before the servers drop them ----------------------------

def test_the_pool_keeps_idle_connections_half_as_long_as_openred_servers() -> None:
    assert hypercorn_config(HOST, 1).keep_alive_timeout == SERVER_KEEP_ALIVE_SECONDS
    assert POOL_IDLE_SECONDS == SERVER_KEEP_ALIVE_SECONDS / 2


async def test_a_connection_idle_for_most_of_the_servers_keep_alive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool's clock is moved on by 90 % of the server's keep-alive: the connection the
    server is about to close is not taken again (the old pool kept it 30 s, as long as the
    server)."""
    import aiohttp.connector

    now = [time.monotonic()]
    monkeypatch.setattr(aiohttp.connector, "monotonic", lambda: now[0])
    peers: list[Any] = []
    app = Quart("idle")

    @app.post("/echo")
    async def echo() -> dict[str, int]:
        peers.append(request.scope["client"])
        return {"n": 1}

    async with serve_in_loop(app) as url, HttpClient(allow_private=True) as client:
        await client.request("POST", url + "/echo", json_body={}, attempts=1)
        now[0] += POOL_IDLE_SECONDS / 2
        await client.request("POST", url + "/echo", json_body={}, attempts=1)
        assert peers[0] == peers[1]  # reused while young
        now[0] += SERVER_KEEP_ALIVE_SECONDS * 0.9
        await client.request("POST", url + "/echo", json_body={}, attempts=1)
        assert peers[2] != peers[1]


# -- what the session's other users send: a body that cannot be sent twice ---------------------

async def test_a_streamed_body_begun_is_not_sent_again_and_a_file_is_sent_whole() -> None:
    """Through the pooled session itself (``session_for``): an async iterator, once its first
    chunk went out, cannot be sent again — a resend would send what is left of it, a cut body
    the server takes whole (chunked) — so the close is the caller's; a file is read again from
    where it started, all of it."""
    async with served("close") as (relay, _, seen), HttpClient(allow_private=True) as client:
        session = client.session_for(relay.url + "/echo")
        async with session.post(relay.url + "/echo", data=b'{"n":1}') as resp:
            assert resp.status == 200

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"n":'
            await asyncio.sleep(0.05)
            yield b"2}"

        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.post(relay.url + "/echo", data=chunks()):
                pass
        assert seen == [{"n": 1}] and relay.connections == 1
    async with served("close") as (relay, _, seen), HttpClient(allow_private=True) as client:
        session = client.session_for(relay.url + "/echo")
        async with session.post(relay.url + "/echo", data=b'{"n":1}') as resp:
            assert resp.status == 200
        async with session.post(relay.url + "/echo", data=io.BytesIO(b'{"n":2}')) as resp:
            assert await resp.json() == {"n": 2}
        assert seen == [{"n": 1}, {"n": 2}] and relay.connections == 2
