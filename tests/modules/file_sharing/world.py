"""Two real nodes served on loopback with the file_sharing module, and a session between them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from audit_tools.verify import verify
from openred.crypto.client import JailClient
from openred.modules.file_sharing import FILE_SHARING_SERVICE
from openred.modules.file_sharing.service import FileSharing
from tests.node.test_app import Served, World, directory_app, granted, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import serve_in_loop

MODULES = ("messaging", "file_sharing")


def files(node: Served) -> FileSharing:
    service: FileSharing = node.app.extensions[FILE_SHARING_SERVICE]
    return service


@dataclass
class Pair:
    world: World
    session_id: str

    @property
    def a(self) -> Served:
        return self.world.a

    @property
    def b(self) -> Served:
        return self.world.b

    a_server: contextlib.AsyncExitStack | None = None

    async def restart_b(self) -> Served:
        """Stop B's server and serve its data directory again at the same URL."""
        port = int(self.world.b.url.rsplit(":", 1)[1])
        await self.world.b_server.aclose()
        self.world.b_server = contextlib.AsyncExitStack()
        self.world.b = await self.world.b_server.enter_async_context(serve_node(
            "b", self.world.jails[1], self.world.b.data, self.world.directory.key,
            self.world.directory_url, port=port, modules=MODULES))
        return self.world.b

    async def restart_a(self) -> Served:
        """Stop A's server and serve its data directory again at the same URL."""
        assert self.a_server is not None
        port = int(self.world.a.url.rsplit(":", 1)[1])
        await self.a_server.aclose()
        self.a_server = contextlib.AsyncExitStack()
        self.world.a = await self.a_server.enter_async_context(serve_node(
            "a", self.world.jails[0], self.world.a.data, self.world.directory.key,
            self.world.directory_url, port=port, modules=MODULES))
        return self.world.a


@contextlib.asynccontextmanager
async def served_pair(jails: JailPair, directory: Directory, tmp: Path) -> AsyncIterator[Pair]:
    from openred.web.client import HttpClient, Signer

    clients = [JailClient(p.socket_path, timeout=10) for p in jails.procs[:2]]

    async def sign_base(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    pusher = HttpClient(signer=Signer("directory", sign_base), allow_private=True, attempts=1)
    async with contextlib.AsyncExitStack() as stack:
        dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
        a_server = contextlib.AsyncExitStack()
        a = await a_server.enter_async_context(serve_node(
            "a", clients[0], tmp / "a", directory.key, dir_url, modules=MODULES))
        b_server = contextlib.AsyncExitStack()
        b = await b_server.enter_async_context(serve_node(
            "b", clients[1], tmp / "b", directory.key, dir_url, modules=MODULES))
        world = World(a, b, directory, pusher, clients, dir_url, b_server)
        pair = Pair(world, "", a_server)
        stack.push_async_callback(lambda: pair.a_server.aclose())  # type: ignore[union-attr]
        stack.push_async_callback(lambda: world.b_server.aclose())
        pair.session_id = (await a.services.connect(await granted(world))).session_id
        yield pair
    await pusher.close()
    for client in clients:
        await client.close()


@contextlib.asynccontextmanager
async def verified_pair(jails: JailPair, directory: Directory, tmp: Path,
                        ) -> AsyncIterator[Pair]:
    """:func:`served_pair`, then both logs verified in full once the nodes stopped.

    Every entry, signature, checkpoint and projection (file_sharing's too) must verify.
    """
    async with served_pair(jails, directory, tmp) as served:
        keys = {"a": served.a.services.keys.sign_key, "b": served.b.services.keys.sign_key}
        yield served
    for name, key in keys.items():
        report = verify(tmp / name, key=key)
        assert report.ok, report.reason
        assert any(s.number == 7 and s.status == "ok" for s in report.steps)
