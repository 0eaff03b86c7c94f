"""The authentication and monitoring modules' cost, between two real nodes on loopback.

Set-up: two node apps (A and B) under Hypercorn in this process, each over its own real jail
process (a development keystore), a directory log that mints and pushes real grants, and one
session from A to B — the harness of ``tests/node/test_app.py``, reused here.

* ``node_message_1kib_with_metrics``: 1 KiB messages from A to B on one session, 16 in flight
  (each logged and wrapped on both sides, sealed, opened, receipted), with the monitoring
  module enabled on both nodes (every request, log append and jail call counted and timed)
  vs the same nodes without it. Runs alternate, best of each is kept. Target ≥ 0.9.
* ``auth_challenge``: A asks B to prove its key, one challenge at a time, over HTTP (B's jail
  signs, A verifies and logs ``PeerAuthenticated``): challenge-responses/s, p50/p99 latency;
  baseline: one 1 KiB message round trip on the same session, one at a time.

``python -m bench.bench_auth`` (or ``make bench``); ``--quick`` sends fewer messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import percentiles, report

CONCURRENCY = 16
TEXT = "x" * 1024

# The jails use development keystores; their processes read the test KDF settings.
os.environ.setdefault("OPENRED_JAIL_KDF", "min")
os.environ.setdefault("OPENRED_JAIL_INSECURE_TEST_KDF", "1")


@contextlib.asynccontextmanager
async def two_nodes(modules: tuple[str, ...], root: Path, jails: Any, directory: Any,
                    ) -> AsyncIterator[tuple[Any, Any, str]]:
    """Nodes A and B with ``modules``, and a session from A to B."""
    from openred.crypto.client import JailClient
    from openred.web.client import HttpClient, Signer
    from tests.node.test_app import World, directory_app, granted, serve_node
    from tests.servers import serve_in_loop

    async def sign_base(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    clients = [JailClient(p.socket_path, timeout=10) for p in jails.procs[:2]]
    pusher = HttpClient(signer=Signer("directory", sign_base), allow_private=True, attempts=1)
    try:
        async with contextlib.AsyncExitStack() as stack:
            dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
            a = await stack.enter_async_context(serve_node(
                "a", clients[0], root / "a", directory.key, dir_url, modules=modules))
            b = await stack.enter_async_context(serve_node(
                "b", clients[1], root / "b", directory.key, dir_url, modules=modules))
            world = World(a, b, directory, pusher, clients, dir_url,
                          contextlib.AsyncExitStack())
            channel = await a.services.connect(await granted(world))
            yield a, b, channel.session_id
    finally:
        await pusher.close()
        for client in clients:
            await client.close()


async def _message_rate(a: Any, session_id: str, n: int) -> float:
    send = a.services.send_message
    await send(session_id, TEXT)  # warm the session cache and the connection pool
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await send(session_id, TEXT)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


async def _latencies(op: Callable[[], Awaitable[Any]], n: int) -> tuple[float, list[float]]:
    await op()
    samples = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - t)
    return n / (time.perf_counter() - start), samples


async def run(quick: bool) -> None:
    import shutil
    import tempfile

    from tests.node.world import Directory, JailPair

    messages = 300 if quick else 1500
    challenges = 100 if quick else 500
    rounds = 2 if quick else 3
    jails = JailPair()
    root = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    try:
        best = {"on": 0.0, "off": 0.0}
        for i in range(rounds):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                modules = ("messaging", "monitoring") if mode == "on" else ("messaging",)
                directory = await Directory.open(root / f"dir-{mode}-{i}")
                try:
                    async with two_nodes(modules, root / f"{mode}-{i}", jails, directory) as (
                            a, _b, session_id):
                        rate = await _message_rate(a, session_id, messages)
                finally:
                    await directory.close()
                best[mode] = max(best[mode], rate)
        report("node_message_1kib_with_metrics", best["on"], "msg/s",
               "node_message_1kib_without_metrics", best["off"])

        directory = await Directory.open(root / "dir-auth")
        try:
            async with two_nodes(("messaging", "authentication"), root / "auth", jails,
                                 directory) as (a, b, session_id):
                auth = a.app.extensions["openred.authentication"]
                peer = await a.services.book.peer(str(b.id))
                transport = a.services._p2p_transport(peer.api_url)

                async def challenge() -> Any:
                    return await auth.authenticate(session_id, "bench", transport=transport,
                                                   now=a.services.now)

                async def message() -> Any:
                    return await a.services.send_message(session_id, TEXT)

                rate, samples = await _latencies(challenge, challenges)
                base_rate, base_samples = await _latencies(message, challenges)
        finally:
            await directory.close()
        report("auth_challenge", rate, "challenges/s", "node_message_1kib_sequential",
               base_rate, "msg/s")
        p50, p99 = percentiles(samples)
        b50, b99 = percentiles(base_samples)
        report("auth_challenge_p50", p50 * 1000, "ms", "node_message_1kib_sequential_p50",
               b50 * 1000)
        report("auth_challenge_p99", p99 * 1000, "ms", "node_message_1kib_sequential_p99",
               b99 * 1000)
    finally:
        jails.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    asyncio.run(run("--quick" in sys.argv))


if __name__ == "__main__":
    main()
