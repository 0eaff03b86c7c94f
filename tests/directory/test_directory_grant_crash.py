"""SIGKILL a served directory (``openred directory serve``) during a burst of registrations and
grants (tattack).

Registered nodes point their records at a receiver in this process that takes every push (200)
or at a closed port (every push fails: 502 ``push-failed``, ``ConnectionGrantFailed``). Threads
register fresh nodes and ask for grants between the registered ones; the directory and its jail
are killed in the middle. After a restart with the same command:

- the log verifies with audit_tools (no entry half-written, projections included);
- every registration answered 201 is logged;
- every grant answered 201 has its ``ConnectionGranted`` logged and no failure; every grant
  answered 502 ``push-failed`` has its ``ConnectionGranted`` followed by a
  ``ConnectionGrantFailed``; no ``ConnectionGrantFailed`` names a grant not logged before it;
- a ``ConnectionGranted`` with no outcome that was not answered 201 is one of the requests
  the kill cut off (docs/decisions.md: a directory killed between a grant's entry and its
  pushes leaves it without outcome), so there are at most as many as those;
- every checkpoint pushed before the kill has the restarted log's root at its size (no node
  holding one sees a fork), the restarted directory's checkpoint covers every grant logged,
  and it mints new grants.
"""

from __future__ import annotations

import http.client
import json
import random
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openred.store.checkpoint import parse_checkpoint_body
from openred.store.merkle import root_from_entry_hashes
from tests.cli.network import network
from tests.crypto_jail.test_server import short_dir
from tests.directory.test_directory_crash import (
    Registrant,
    kill_mid_load,
    restart_verified,
    status_of,
)
from tests.servers import free_port

REQUEST = "/api/v3/tokens/request-connection"
CHECKPOINT = "/api/v3/directory/checkpoint"


PUSHED: set[str] = set()
"""Every checkpoint note pushed to the taker (what nodes would hold)."""


class Taker(BaseHTTPRequestHandler):
    """A node's receiver that takes every push."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        PUSHED.add(body["checkpoint"])
        reply = b'{"status":"received"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def taker() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Taker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def answer(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return int(resp.status), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")


def test_a_directory_killed_during_registrations_and_grants_accounts_for_every_grant() -> None:
    PUSHED.clear()
    root = short_dir()
    env = {"OPENRED_RATE_PER_INITIATOR": "10000", "OPENRED_RATE_PER_TARGET": "10000",
           "OPENRED_RATE_PER_CLIENT": "100000", "OPENRED_PUSHES_PER_NETWORK": "256",
           "OPENRED_PUSH_ATTEMPTS": "1"}
    with taker() as receiver, network(root, **env) as net:
        net.init_directory()
        server = net.start_directory()
        # Registered before the burst: most take their pushes, a few never can.
        nodes = [Registrant(net.directory_url, api_url=receiver) for _ in range(24)]
        nodes += [Registrant(net.directory_url, api_url="http://127.0.0.1:9")
                  for _ in range(4)]
        for node in nodes:
            assert status_of(node.registration()) == 201, server.output()
        fresh = [Registrant(net.directory_url, api_url=receiver) for _ in range(400)]
        registrations = [(node, node.registration()) for node in fresh]
        rng = random.Random(7)
        pairs = [rng.sample(nodes, 2) for _ in range(2000)]
        grants = [(a, a.request_connection(b.node_id)) for a, b in pairs]
        acknowledged: list[Registrant] = []
        answered: dict[str, int] = {}  # grant id → 201 or 502
        cut_off = 0
        lock = threading.Lock()
        stop = threading.Event()

        def register() -> None:
            while not stop.is_set():
                with lock:
                    if not registrations:
                        return
                    node, request = registrations.pop()
                try:
                    status = status_of(request)
                except (OSError, http.client.HTTPException):
                    continue
                if status == 201:
                    with lock:
                        acknowledged.append(node)

        def grant() -> None:
            nonlocal cut_off
            while not stop.is_set():
                with lock:
                    if not grants:
                        return
                    _, request = grants.pop()
                try:
                    status, body = answer(request)
                except (OSError, http.client.HTTPException, ValueError):
                    with lock:
                        cut_off += 1  # the directory died under it
                    continue
                if status in (429, 503):  # busy (a slow jail under load): nothing to count
                    continue
                assert status in (201, 502), (status, body)
                if status == 502:
                    assert body["type"].endswith(":push-failed"), body
                with lock:
                    answered[body["grant_id"]] = status

        threads = [threading.Thread(target=register) for _ in range(3)]
        threads += [threading.Thread(target=grant) for _ in range(5)]
        # stop: no request starts after it, those in flight meet the kill.
        kill_mid_load(server, threads, lambda: len(answered) >= 60 and len(acknowledged) >= 20,
                      within=90, before=stop.set)
        assert 502 in answered.values() and 201 in answered.values(), answered

        restarted, data = restart_verified(net)
        with sqlite3.connect(f"file:{data / 'openred.db'}?mode=ro", uri=True) as conn:
            registered = {r[0].removeprefix("node:") for r in conn.execute(
                "SELECT stream FROM events WHERE type = 'NodeRegistered'")}
            granted: dict[str, int] = {}
            failed: dict[str, int] = {}
            for seq, kind, stream in conn.execute(
                    "SELECT seq, type, stream FROM events WHERE type IN "
                    "('ConnectionGranted', 'ConnectionGrantFailed') ORDER BY seq"):
                grant_id = stream.removeprefix("grant:")
                if kind == "ConnectionGranted":
                    granted[grant_id] = seq
                else:
                    assert grant_id in granted, f"{grant_id} failed but was never granted"
                    failed[grant_id] = seq
            last = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            hashes = [bytes(r[0]) for r in conn.execute(
                "SELECT entry_hash FROM events ORDER BY seq")]
        assert not {n.node_id for n in acknowledged} - registered
        for grant_id, status in answered.items():
            assert grant_id in granted, (grant_id, status)
            assert (grant_id in failed) == (status == 502), (grant_id, status)
        without_outcome = set(granted) - set(failed) - set(answered)
        assert len(without_outcome) <= cut_off, (without_outcome, cut_off)
        # Every checkpoint pushed before the kill is of the log the directory restarted with
        # (the nodes holding them see no fork): its root is the log's at its size.
        assert PUSHED
        for note in PUSHED:
            checkpoint = parse_checkpoint_body(note.split("\n\n")[0].encode() + b"\n")
            assert root_from_entry_hashes(hashes[:checkpoint.size]) == checkpoint.root_hash
        # The restarted directory's checkpoint covers the whole log, and it grants again.
        a, b = nodes[0], nodes[1]
        status, body = answer(a.checkpoint())
        assert status == 200, restarted.output()
        assert parse_checkpoint_body(
            body["checkpoint"].split("\n\n")[0].encode() + b"\n").size >= last
        status, body = answer(a.request_connection(b.node_id))
        assert status == 201, (body, restarted.output())
