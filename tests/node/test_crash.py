"""A node process killed with SIGKILL while it receives messages loses nothing it acknowledged.

Node B runs as its own process (its jail a child of it, as when served); node A runs in this
test. A sends messages to B concurrently; B is killed with SIGKILL in the middle. After B is
started again on the same data directory: its log verifies with audit_tools (projections
included), every message A got a receipt for is in B's inbox, B refuses the requests it had
accepted before the kill, and the session resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audit_tools.verify import verify
from crypto_jail.keystore import create_keystore
from openred.crypto.client import JailClient, PublicKeys
from openred.crypto.identity import BoxKey, NodeId, SignKey
from openred.crypto.records import SignedNodeRecord
from openred.errors import OpenRedError
from openred.node.own_record import RECORD_FILE
from openred.web.client import HttpClient, Signer
from tests.crypto_jail.test_server import short_dir
from tests.node.test_app import Served, directory_app, serve_node
from tests.node.test_hostile_directory import captured_push, send_again
from tests.node.world import Directory, JailPair, record_envelopes
from tests.servers import ServerProcess, free_port, serve_in_loop, start_process

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def b_dir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def start_b(data: Path, port: int, directory_url: str, key: SignKey) -> ServerProcess:
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("OPENRED_JAIL_PASSPHRASE", None)
    return start_process(
        [sys.executable, "-m", "tests.node.node_process", str(data), str(port), directory_url,
         key.b64url()], port=port, env=env, cwd=ROOT)


class RemoteB:
    """What Directory.pair needs of node B, read from its keystore's public part."""

    def __init__(self, public: dict[str, str], url: str, record: SignedNodeRecord) -> None:
        self.keys = PublicKeys(SignKey.from_b64url(public["sign_key"]),
                               BoxKey.from_b64url(public["box_key"]), NodeId(public["node_id"]))
        self.id = self.keys.node_id
        self.url = url
        self.record = record


def own_record(data: Path) -> SignedNodeRecord:
    """The record a served node signed for itself when it started (what grants must name)."""
    saved = json.loads((data / RECORD_FILE).read_text(encoding="utf-8"))
    return SignedNodeRecord.from_wire(saved["signed"])


@contextlib.asynccontextmanager
async def pusher(directory: Directory) -> AsyncIterator[HttpClient]:
    async def sign_base(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    async with HttpClient(signer=Signer("directory", sign_base), allow_private=True,
                          attempts=1) as client:
        yield client


async def test_sigkill_while_receiving_loses_no_acknowledged_message(
    jails: JailPair, directory: Directory, tmp_path: Path, b_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # B's keystore (encrypted, its passphrase in the data directory as `init` leaves it), made
    # here so the test knows B's public keys and can sign B's record.
    keystore = create_keystore(b_dir / "keystore.json", PASSPHRASE, kdf_level="min",
                               test_only=True)
    (b_dir / "jail-passphrase").write_bytes(PASSPHRASE + b"\n")
    (b_dir / "jail-passphrase").chmod(0o600)
    public = keystore.public_info()

    async with contextlib.AsyncExitStack() as stack:
        dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
        jail_a = await stack.enter_async_context(JailClient(jails.procs[0].socket_path))
        a: Served = await stack.enter_async_context(
            serve_node("a", jail_a, tmp_path / "a", directory.key, dir_url))
        for attempt in range(3):  # another test may take the free port before B binds it
            port = free_port()
            try:
                # In a thread: this loop serves the directory B's health check asks.
                server = await asyncio.to_thread(start_b, b_dir, port, dir_url, directory.key)
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            break
        stack.callback(lambda: server.stop())
        b_url = f"http://127.0.0.1:{port}"
        b = RemoteB(public, b_url, own_record(b_dir))
        grant, for_a, for_b = await directory.pair(a, b, issued_at=int(time.time()))  # type: ignore[arg-type]
        await a.services.tokens.receive(for_a, int(time.time()))
        captured = await captured_push(directory, b_url, for_b)
        status, answer = await send_again(captured)
        assert status == 200, answer
        channel = await a.services.connect(grant.grant_id)

        # Record every envelope A sends and every receipt it gets.
        envelopes: list[dict[str, Any]] = []
        record_envelopes(monkeypatch, envelopes)
        acknowledged: list[str] = []

        async def sender(n: int) -> None:
            for i in range(n):
                try:
                    receipt = await a.services.send_message(channel.session_id, f"m{i}")
                except OpenRedError:
                    return  # B is gone
                acknowledged.append(receipt.message_id)

        senders = [asyncio.create_task(sender(200)) for _ in range(4)]
        while len(acknowledged) < 15:
            await asyncio.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.gather(*senders)
        server.proc.wait(10)
        await asyncio.sleep(0.5)  # B's jail sees its supervisor's pipe close and exits

        # B comes back on the same data directory.
        server = await asyncio.to_thread(start_b, b_dir, port, dir_url, directory.key)
        stack.callback(lambda: server.stop())
        receipt = await a.services.send_message(channel.session_id, "after the kill")
        acknowledged.append(receipt.message_id)
        # The push signed before the kill, sent again: B cannot know it saw that nonce (its
        # cache died with it), and refuses every signature made before it started.
        status, answer = await send_again(captured)
        assert status == 401, answer
        assert "before this service started" in answer["detail"]
        # A request B had accepted before the kill is refused after it.
        async with aiohttp.ClientSession() as session, session.post(
            f"{b_url}/api/v3/p2p/messaging/send", data=json.dumps(envelopes[0]),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 409
        assert server.stop() == 0  # SIGTERM: clean shutdown

    report = verify(b_dir, key=SignKey.from_b64url(public["sign_key"]))
    assert report.ok, report.reason
    assert any(s.number == 7 and s.status == "ok" for s in report.steps)
    conn = sqlite3.connect(b_dir / "openred.db")
    inbox = {row[0] for row in conn.execute("SELECT message_id FROM inbox")}
    conn.close()
    assert set(acknowledged) <= inbox
    assert len(acknowledged) >= 16
