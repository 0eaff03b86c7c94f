"""The grant path under sybil nodes: slow receivers and a shared per-target budget.

Registration is self-certifying and limited only per client network, so an attacker has as
many node ids as it likes; what it does not have for free is client networks. These tests send
the attacker's requests from 127.0.0.1 and the honest node's from 127.0.0.2 (all of 127/8 is
loopback), a second client network as far as the directory can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.directory.conftest import Directory, DirectoryFactory, Node, receiver_app
from tests.directory.test_bad_input import signed_headers
from tests.servers import HOST, free_port, serve_in_loop

PATH = "/api/v3/tokens/request-connection"
OTHER_NETWORK = "127.0.0.2"


async def grant(node: Node, target: Node, *, source: str = HOST) -> tuple[int, dict[str, Any],
                                                                          dict[str, str]]:
    """``node`` asks for a grant to ``target`` from loopback address ``source``."""
    url = node.directory.url + PATH
    body = json.dumps({"target": target.node_id}).encode()
    headers = await signed_headers(node, url, body)
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.post(
            url, data=body, headers=headers) as reply:
        return reply.status, await reply.json(content_type=None), dict(reply.headers)


@contextlib.asynccontextmanager
async def honest_pair(directory: Directory) -> AsyncIterator[tuple[Node, Node]]:
    """Two registered nodes whose receivers answer at once."""
    async with contextlib.AsyncExitStack() as stack:
        pair = []
        for _ in range(2):
            node = Node(directory)
            port = free_port()
            node.api_url = f"http://{HOST}:{port}"
            await stack.enter_async_context(
                serve_in_loop(receiver_app(node, directory.key, node.api_url), port))
            assert (await node.register()).status == 201
            pair.append(node)
        yield pair[0], pair[1]


@contextlib.asynccontextmanager
async def silent_listeners(count: int) -> AsyncIterator[tuple[list[int], list[int]]]:
    """``count`` loopback ports that take connections and read, and never answer; (ports,
    [connections taken so far])."""
    taken = [0]
    holding: set[asyncio.StreamWriter] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken[0] += 1
        holding.add(writer)
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass
        holding.discard(writer)
        writer.close()

    servers = [await asyncio.start_server(hold, HOST, 0) for _ in range(count)]
    try:
        yield [s.sockets[0].getsockname()[1] for s in servers], taken
    finally:
        for server in servers:
            server.close()
        for writer in list(holding):
            writer.close()
        for server in servers:
            await server.wait_closed()


async def test_slow_sybil_receivers_do_not_hold_the_push_pool_for_everyone(
    directory_factory: DirectoryFactory,
) -> None:
    """Sybil nodes whose receivers never answer request grants between each other: each push
    held one of the push client's 100 pooled connections for the whole push timeout, so 50
    such grants at once filled the pool and an honest grant waited for a connection until its
    connect timeout, then failed (502 push-failed). Pushes in flight are now charged to the
    client network that asked for the grant: the sybils' network gets a few (the rest of its
    requests get 503 busy at once, nothing minted), the honest network's grant is delivered."""
    grants = 50
    async with directory_factory(push_timeout=4, push_attempts=1,
                                 pushes_per_network=8) as directory, \
            silent_listeners(10) as (ports, taken), honest_pair(directory) as (alice, bob):
        sybils = []
        for i in range(20):
            node = Node(directory, api_url=f"http://{HOST}:{ports[i % len(ports)]}")
            assert (await node.register()).status == 201
            sybils.append(node)
        attack = [asyncio.ensure_future(grant(sybils[i % 20], sybils[(i + 1) % 20]))
                  for i in range(grants)]
        # Until every sybil grant has either both its pushes held or an answer.
        for _ in range(300):
            if taken[0] + 2 * sum(t.done() for t in attack) >= 2 * grants:
                break
            await asyncio.sleep(0.01)
        status, problem, _ = await grant(alice, bob, source=OTHER_NETWORK)
        assert status == 201, problem
        assert problem["delivered"] == {"initiator": True, "responder": True}
        answers = await asyncio.gather(*attack)
        statuses = {a[0] for a in answers}
        assert statuses <= {502, 503}, statuses
        busy = [a for a in answers if a[0] == 503]
        assert busy, "the sybils' network was not bounded"
        assert busy[0][1]["type"] == "urn:openred:problem:busy"
        assert int(busy[0][2]["Retry-After"]) >= 1


async def test_sybil_initiators_cannot_use_up_a_targets_budget_for_everyone(
    directory_factory: DirectoryFactory,
) -> None:
    """Two sybil initiators (one client network) spent the victim's whole per-target budget,
    and for the rest of the window nobody else could connect to it (429). The budget is now
    shared between the client networks that name the target: the sybils' network is refused
    once it holds more than its share, another network still gets its grant."""
    async with directory_factory(rate_per_target=4) as directory, \
            honest_pair(directory) as (alice, victim):
        mallory, trudy = Node(directory), Node(directory)
        for node in (mallory, trudy):
            node.api_url = alice.api_url  # a receiver that answers at once
            assert (await node.register()).status == 201
        for sybil in (mallory, trudy, mallory, trudy):
            assert (await grant(sybil, victim))[0] == 201
        status, problem, headers = await grant(mallory, victim)
        assert status == 429 and problem["type"] == "urn:openred:problem:rate-limited"
        assert int(headers["Retry-After"]) >= 1
        status, problem, _ = await grant(alice, victim, source=OTHER_NETWORK)
        assert status == 201, problem
        # The sybils' network has had more than its share now that two networks name it.
        assert (await grant(trudy, victim))[0] == 429
