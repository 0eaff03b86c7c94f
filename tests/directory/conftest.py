"""A real directory (jail, store, Hypercorn on loopback) and fake nodes that talk to it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import pytest
from quart import Quart, request

from openred.crypto.identity import BoxKey, SignKey
from openred.crypto.records import NodeRecord, SignedNodeRecord
from openred.directory.app import create_app
from openred.directory.keys import create_keystore
from openred.directory.routing import EXTENSION
from openred.directory.service import DirectoryService
from openred.settings import DirectorySettings
from openred.web.client import HttpClient, Reply, Signer
from openred.web.signatures import InboundVerifier
from tests.servers import HOST, free_port, serve_in_loop

TEST_JAIL_ENV = {"OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1"}
"""Fast, test-only keystores (the jail refuses the ``min`` KDF without the second variable)."""

DirectoryFactory = Callable[..., contextlib.AbstractAsyncContextManager["Directory"]]


@dataclass
class Directory:
    url: str
    settings: DirectorySettings
    key: SignKey
    service: DirectoryService


@dataclass
class Node:
    """A node as the directory sees it: keys, a record, a receiver for pushed grants."""

    directory: Directory
    sk: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    box: nacl.public.PrivateKey = field(default_factory=nacl.public.PrivateKey.generate)
    api_url: str = "http://127.0.0.1:9"
    received: list[dict[str, Any]] = field(default_factory=list)
    answer: int = 200
    version: int = 0

    @property
    def sign_key(self) -> SignKey:
        return SignKey(bytes(self.sk.verify_key))

    @property
    def node_id(self) -> str:
        return str(self.sign_key.node_id)

    def signer(self) -> Signer:
        async def sign_base(base: bytes) -> bytes:
            return bytes(self.sk.sign(base).signature)

        return Signer(self.node_id, sign_base)

    def record(self, **overrides: Any) -> SignedNodeRecord:
        self.version += 1
        args: dict[str, Any] = {
            "sign_key": self.sign_key, "box_key": BoxKey(bytes(self.box.public_key)),
            "api_url": self.api_url, "modules": ["messaging"], "issued_at": int(time.time()),
            "version": self.version,
        }
        args.update(overrides)
        record = NodeRecord.build(**args)
        return SignedNodeRecord(record, self.sk.sign(record.canonical_bytes()).signature)

    async def call(self, method: str, path: str, body: Any = None, *,
                   signed: bool = True, timeout: float | None = None) -> Reply:
        async with HttpClient(signer=self.signer(), allow_private=True, attempts=1) as client:
            return await client.request(method, self.directory.url + path, json_body=body,
                                        signed=signed, timeout=timeout)

    async def register(self, signed: SignedNodeRecord | None = None, *,
                       timeout: float | None = None) -> Reply:
        """``timeout``: the request's whole time (the client's 10 s by default); a test that
        holds the append itself gives its held registration longer."""
        return await self.call("POST", "/api/v3/nodes/register",
                               (signed or self.record()).to_wire(), timeout=timeout)


def receiver_app(node: Node, directory_key: SignKey, public_url: str) -> Quart:
    """A node's token receiver: checks the directory's signature, keeps what it got."""
    app = Quart("receiver")
    verifier = InboundVerifier(public_url)

    async def resolve(keyid: str) -> SignKey | None:
        return directory_key if keyid == "directory" else None

    @app.post("/api/v3/tokens/receive")
    async def receive() -> tuple[dict[str, str], int]:
        keyid, _ = await verifier.verify(request, resolve)
        assert keyid == "directory"
        node.received.append(await request.get_json())
        return {"status": "ok"}, node.answer

    return app


@pytest.fixture
async def directory_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[DirectoryFactory]:
    for name, value in TEST_JAIL_ENV.items():
        monkeypatch.setenv(name, value)

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Directory]:
        data_dir = tmp_path / f"dir{free_port()}"
        data_dir.mkdir()
        port = free_port()
        env = {"OPENRED_ALLOW_PRIVATE_URLS": "1", "OPENRED_RATE_PER_CLIENT": "100000",
               "OPENRED_RATE_PER_INITIATOR": "1000", "OPENRED_RATE_PER_TARGET": "1000",
               "OPENRED_PUSHES_PER_NETWORK": "1000",
               "OPENRED_PUSH_ATTEMPTS": "2", "OPENRED_PUSH_TIMEOUT": "2"}
        settings = DirectorySettings.load(data_dir, environ=env, host=HOST, port=port,
                                          jail_socket=Path(f"/tmp/openred-test-{port}/j.sock"),
                                          **overrides)
        create_keystore(settings)
        app = create_app(settings)
        async with serve_in_loop(app, port) as url:
            service = app.extensions[EXTENSION]
            yield Directory(url, settings, service.key, service)

    yield start


@pytest.fixture
async def directory(directory_factory: DirectoryFactory) -> AsyncIterator[Directory]:
    async with directory_factory() as d:
        yield d


@pytest.fixture
async def make_node(directory: Directory) -> AsyncIterator[Callable[..., Any]]:
    """Nodes with a running receiver (``receive=False``: a node whose URL nobody answers)."""
    stack = contextlib.AsyncExitStack()

    async def make(*, receive: bool = True) -> Node:
        node = Node(directory)
        if receive:
            port = free_port()
            node.api_url = f"http://{HOST}:{port}"
            await stack.enter_async_context(
                serve_in_loop(receiver_app(node, directory.key, node.api_url), port))
        else:
            node.api_url = f"http://{HOST}:{free_port()}"
        return node

    async with stack:
        yield make
