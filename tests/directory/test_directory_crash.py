"""SIGKILL a served directory (``openred directory serve``) while nodes register.

Eight threads register fresh nodes against the directory process; it and its jail are killed
with SIGKILL in the middle of the load. The directory is started again with the same command:
its log verifies with audit_tools (projections included), every registration that was answered
201 is in the log and the nodes table, and the restarted directory serves those records (a
signed discovery by one of them) and takes new registrations.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing

from audit_tools.verify import verify
from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request
from openred.crypto.identity import BoxKey, SignKey
from openred.crypto.records import NodeRecord, SignedNodeRecord
from tests.cli.network import Network, alive, network
from tests.crypto_jail.test_server import short_dir
from tests.servers import ServerProcess

REGISTER = "/api/v3/nodes/register"


class Registrant:
    """A fresh node with prepared, signed requests (no jail: the test holds its key)."""

    def __init__(self, directory: str, api_url: str = "http://127.0.0.1:9") -> None:
        self.api_url = api_url
        self.sk = nacl.signing.SigningKey.generate()
        self.box = nacl.public.PrivateKey.generate()
        self.directory = directory
        self.node_id = str(SignKey(bytes(self.sk.verify_key)).node_id)

    def _signed(self, method: str, path: str, body: Any = None) -> urllib.request.Request:
        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}

        async def sign(base: bytes) -> bytes:
            return bytes(self.sk.sign(base).signature)

        url = self.directory + path
        req = asyncio.run(sign_request(HttpRequest(method, url, headers, raw),
                                       keyid=self.node_id, sign_base=sign,
                                       now=int(time.time()), nonce=new_nonce()))
        return urllib.request.Request(url, data=raw or None, headers=dict(req.headers),
                                      method=method)

    def registration(self) -> urllib.request.Request:
        record = NodeRecord.build(sign_key=SignKey(bytes(self.sk.verify_key)),
                                  box_key=BoxKey(bytes(self.box.public_key)),
                                  api_url=self.api_url, modules=["messaging"],
                                  issued_at=int(time.time()), version=1)
        wire = SignedNodeRecord(record,
                                self.sk.sign(record.canonical_bytes()).signature).to_wire()
        return self._signed("POST", REGISTER, wire)

    def discover(self, node_id: str) -> urllib.request.Request:
        return self._signed("GET", f"/api/v3/nodes/discover?node_id={node_id}")

    def request_connection(self, target: str) -> urllib.request.Request:
        return self._signed("POST", "/api/v3/tokens/request-connection", {"target": target})

    def checkpoint(self) -> urllib.request.Request:
        return self._signed("GET", "/api/v3/directory/checkpoint")


def status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def kill_mid_load(server: ServerProcess, threads: list[threading.Thread],
                  loaded: Callable[[], bool], *, within: float,
                  before: Callable[[], None] = lambda: None,
                  after: Callable[[], None] = lambda: None) -> None:
    """Start ``threads`` (the load), wait at most ``within`` seconds for ``loaded()``, then
    SIGKILL the directory and its jails (``before`` and ``after`` the kill: what the test stops
    there) and join the threads; no jail outlives the kill."""
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + within
    while not loaded():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.005)
    before()
    jails = server.kill_with_children()
    after()
    for thread in threads:
        thread.join(30)
    assert not any(alive(pid) for pid in jails)


def restart_verified(net: Network) -> tuple[ServerProcess, Path]:
    """The directory started again with the same command, and its data directory, whose log
    audit_tools verifies (projections included)."""
    restarted = net.start_directory()
    data = net.root / "directory"
    report = verify(data)
    assert report.ok, report.reason
    return restarted, data


def test_a_directory_killed_while_nodes_register_keeps_every_acknowledged_registration(
) -> None:
    root = short_dir()
    with network(root) as net:
        net.init_directory()
        server = net.start_directory()
        prepared = [Registrant(net.directory_url) for _ in range(600)]
        requests = [(node, node.registration()) for node in prepared]
        acknowledged: list[Registrant] = []
        unanswered: list[Registrant] = []
        lock = threading.Lock()

        def register() -> None:
            while True:
                with lock:
                    if not requests:
                        return
                    node, request = requests.pop()
                try:
                    status = status_of(request)
                except (OSError, http.client.HTTPException):  # cut off mid-answer included
                    with lock:
                        unanswered.append(node)  # the directory died under it
                    continue
                if status == 201:
                    with lock:
                        acknowledged.append(node)

        def never_sent() -> None:
            with lock:
                requests.clear()  # the rest is never sent

        kill_mid_load(server, [threading.Thread(target=register) for _ in range(8)],
                      lambda: len(acknowledged) >= 40, within=60, after=never_sent)
        assert unanswered, "the kill should have met requests in flight"

        restarted, data = restart_verified(net)
        with sqlite3.connect(f"file:{data / 'openred.db'}?mode=ro", uri=True) as conn:
            logged = {r[0].removeprefix("node:") for r in conn.execute(
                "SELECT stream FROM events WHERE type = 'NodeRegistered'")}
            listed = {r[0] for r in conn.execute(
                "SELECT node_id FROM directory_nodes WHERE status = 'active'")}
        ids = {node.node_id for node in acknowledged}
        assert not ids - logged, ids - logged
        assert not ids - listed, ids - listed
        # The restarted directory serves the acknowledged records and registers new nodes.
        first, last = acknowledged[0], acknowledged[-1]
        assert status_of(first.discover(last.node_id)) == 200, restarted.output()
        assert status_of(Registrant(net.directory_url).registration()) == 201
