"""A node in its own process (with its admin API) paired with an in-process node over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto_jail.keystore import create_keystore
from openred.cli_client import AdminClient
from openred.crypto.identity import SignKey
from tests.node.test_app import Served
from tests.node.test_crash import ROOT, RemoteB, own_record, pusher
from tests.node.world import Directory
from tests.servers import HOST, ServerProcess, answers, free_port, start_process

PASSPHRASE = b"correct horse battery staple"


@dataclass
class Remote:
    """Node B as a process: start, kill, restart on the same data directory and ports."""

    data: Path
    port: int
    admin_port: int
    directory_url: str
    directory_key: SignKey
    public: dict[str, str]
    server: ServerProcess | None = None
    stopped: list[ServerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> ServerProcess:
        env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
               "PYTHONPATH": str(ROOT)}
        env.pop("OPENRED_JAIL_PASSPHRASE", None)
        self.server = start_process(
            [sys.executable, "-m", "tests.modules.file_sharing.node_process", str(self.data),
             str(self.port), self.directory_url, self.directory_key.b64url(),
             str(self.admin_port)], port=self.port, env=env, cwd=ROOT)
        deadline = time.monotonic() + 30
        while not answers(f"http://{HOST}:{self.admin_port}/admin/v1/status"):
            if time.monotonic() > deadline:
                raise RuntimeError("the admin API did not answer")
            time.sleep(0.05)
        return self.server

    def stop(self) -> int:
        server, self.server = self.server, None
        return server.stop() if server is not None else 0

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """An admin call (synchronous urllib, in a thread: this loop serves node A)."""
        client = AdminClient.from_data_dir(self.data)
        return await asyncio.to_thread(client.request, method, path, body)

    async def wait(self, offer_id: str, until: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            state = await self.call("GET", f"file_sharing/fetch/{offer_id}")
            if until(state) or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def remote_pair(a: Served, directory: Directory, directory_url: str,
                      data: Path) -> AsyncIterator[tuple[Remote, str]]:
    """Start B, pair it with ``a`` through the test directory; (B, the session id)."""
    keystore = create_keystore(data / "keystore.json", PASSPHRASE, kdf_level="min",
                               test_only=True)
    (data / "jail-passphrase").write_bytes(PASSPHRASE + b"\n")
    (data / "jail-passphrase").chmod(0o600)
    public = keystore.public_info()
    remote: Remote | None = None
    for attempt in range(3):  # another test may take the free port before B binds it
        remote = Remote(data, free_port(), free_port(), directory_url, directory.key, public)
        try:
            # From a thread: B's health check asks the directory, which this loop serves.
            await asyncio.to_thread(remote.start)
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        break
    assert remote is not None
    try:
        b = RemoteB(public, remote.url, own_record(data))
        grant, for_a, for_b = await directory.pair(a, b, issued_at=int(time.time()))  # type: ignore[arg-type]
        await a.services.tokens.receive(for_a, int(time.time()))
        async with pusher(directory) as push:
            reply = await push.request("POST", f"{remote.url}/api/v3/tokens/receive",
                                       json_body=for_b, signed=True)
        assert reply.status == 200, reply.body
        channel = await a.services.connect(grant.grant_id)
        yield remote, channel.session_id
    finally:
        remote.stop()
