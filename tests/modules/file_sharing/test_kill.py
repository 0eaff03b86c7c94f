"""SIGKILL of either node in the middle of a transfer: the fetch resumes, nothing is corrupt.

Node B runs as its own process (``openred node serve``'s serving code, its jail a child of it,
its admin API on loopback); node A runs in this test. Each test kills one side with SIGKILL
mid-transfer, starts B again on the same data directory, fetches again, and checks the file
and B's log (audit_tools verify, projections included).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_tools.verify import verify
from openred.crypto.client import JailClient
from openred.crypto.identity import SignKey
from openred.errors import NodeRefused
from openred.modules.file_sharing.domain import CHUNK_SIZE
from openred.modules.file_sharing.service import Progress
from tests.crypto_jail.test_server import short_dir
from tests.modules.file_sharing.remote import Remote, remote_pair
from tests.modules.file_sharing.world import MODULES, files
from tests.node.test_app import Served, directory_app, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import serve_in_loop


@pytest.fixture
def b_dir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def world(jails: JailPair, directory: Directory, tmp_path: Path,
                b_dir: Path) -> AsyncIterator[tuple[Served, Remote]]:
    async with contextlib.AsyncExitStack() as stack:
        dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
        jail_a = await stack.enter_async_context(JailClient(jails.procs[0].socket_path))
        a = await stack.enter_async_context(
            serve_node("a", jail_a, tmp_path / "a", directory.key, dir_url, modules=MODULES))
        remote, _ = await stack.enter_async_context(
            remote_pair(a, directory, dir_url, b_dir))
        yield a, remote
        assert remote.stop() == 0  # SIGTERM: a clean shutdown
    report = verify(b_dir, key=SignKey.from_b64url(remote.public["sign_key"]))
    assert report.ok, report.reason
    assert any(s.number == 7 and s.status == "ok" for s in report.steps)


def kill(remote: Remote) -> None:
    assert remote.server is not None
    os.kill(remote.server.pid, signal.SIGKILL)
    remote.server.proc.wait(10)
    remote.server = None
    time.sleep(0.5)  # B's jail sees its supervisor's pipe close and exits


async def test_the_receiver_killed_mid_fetch_resumes_after_a_restart(
    jails: JailPair, directory: Directory, tmp_path: Path, b_dir: Path,
) -> None:
    source = tmp_path / "data.bin"
    data = os.urandom(16 * CHUNK_SIZE + 5)
    source.write_bytes(data)
    async with world(jails, directory, tmp_path, b_dir) as (a, b):
        sender = files(a)
        read = sender._read_chunk

        def slowly(*args: Any) -> bytes:
            time.sleep(0.1)
            return read(*args)

        sender._read_chunk = slowly  # type: ignore[method-assign]
        offer = await sender.share(b.public["node_id"], source, expires_in=3600)
        state = await b.call("POST", "file_sharing/fetch", {"offer_id": offer.offer_id})
        assert state["state"] == "running"
        state = await b.wait(offer.offer_id, lambda s: s["verified"] >= 4 * CHUNK_SIZE)
        await asyncio.to_thread(kill, b)
        await asyncio.to_thread(b.start)
        sender._read_chunk = read  # type: ignore[method-assign]
        before = await b.call("GET", f"file_sharing/fetch/{offer.offer_id}")
        assert before["state"] == "failed"  # the run the kill cut short
        await b.call("POST", "file_sharing/fetch", {"offer_id": offer.offer_id})
        done = await b.wait(offer.offer_id, lambda s: s["state"] != "running")
        assert done["state"] == "completed", done
        assert hashlib.sha256(Path(done["path"]).read_bytes()).digest() == hashlib.sha256(
            data).digest()
    conn = sqlite3.connect(b_dir / "openred.db")
    resumed = [json.loads(p)["resumed_from"] for (p,) in conn.execute(
        "SELECT payload FROM events WHERE type = 'FileTransferStarted' ORDER BY seq")]
    conn.close()
    assert resumed[0] == 0 and resumed[1] >= 4 * CHUNK_SIZE


async def test_the_sender_killed_mid_transfer_is_resumed_from_after_its_restart(
    jails: JailPair, directory: Directory, tmp_path: Path, b_dir: Path,
) -> None:
    source = b_dir / "shared.bin"
    data = os.urandom(12 * CHUNK_SIZE)
    source.write_bytes(data)
    async with world(jails, directory, tmp_path, b_dir) as (a, b):
        offer = await b.call("POST", "file_sharing/share", {
            "peer": str(a.id), "path": str(source), "expires": 3600})
        receiver = files(a)
        killed: list[int] = []

        def progress(p: Progress) -> None:
            if p.verified >= 3 * CHUNK_SIZE and not killed:
                killed.append(p.verified)
                kill(b)

        with pytest.raises(NodeRefused) as caught:
            await receiver.fetch(offer["offer_id"], progress=progress, in_flight=1)
        assert caught.value.reason == "peer-unreachable"
        transfer = await receiver.transfer(offer["offer_id"])
        assert transfer is not None and transfer.state == "failed"
        await asyncio.to_thread(b.start)
        fetched: list[int] = []
        path = await receiver.fetch(offer["offer_id"],
                                    progress=lambda p: fetched.append(p.verified))
        assert path.read_bytes() == data
        assert fetched[0] >= 3 * CHUNK_SIZE  # resumed, not started over
