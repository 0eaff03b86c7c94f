"""Peers keep talking while the directory is down, on real processes (``openred`` commands).

A served directory and two served nodes (their jails, their SQLite logs). The directory is
SIGKILLed, answers 503 in its place, comes back from its data dir with the same key; what an
operator expects meanwhile: messages and files keep flowing between the paired nodes, a node
restarted during the outage comes back and keeps talking, ``connect`` fails in one clear line,
the node's log says ERROR once when the directory goes and INFO once when it returns, and the
directory does not mark the nodes stale or expired for its own downtime.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from openred.cli_client import AdminClient
from tests.cli.network import Network, network
from tests.crypto_jail.test_server import short_dir
from tests.servers import HOST


def kill_directory(net: Network) -> None:
    """SIGKILL the directory and its jail (what a crash or an OOM kill leaves)."""
    net.servers.pop("directory").kill_with_children()


def wait_for(check: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def admin(net: Network, name: str) -> AdminClient:
    """The node's admin API in this process (a status poll through the CLI costs a second)."""
    return AdminClient.from_data_dir(net.root / name, timeout=30)


def registration(net: Network, name: str) -> dict[str, Any]:
    status: dict[str, Any] = admin(net, name).get("status")["registration"]
    return status


def wait_registered(net: Network, name: str) -> None:
    wait_for(lambda: (s := registration(net, name))["registered"] and s["last_heartbeat"],
             f"{name} never registered")


def start_pair(net: Network) -> tuple[str, str]:
    """A served directory, nodes ``a`` and ``b`` registered, ``a`` connected to ``b``."""
    net.init_directory()
    net.start_directory()
    a_id, b_id = net.init_node("a"), net.init_node("b")
    net.start_node("a")
    net.start_node("b")
    wait_registered(net, "a")
    wait_registered(net, "b")
    admin(net, "a").post("connect", {"peer": b_id})
    return a_id, b_id


def lifecycle_lines(output: str, level: str) -> list[str]:
    return [line for line in output.splitlines()
            if re.search(rf"\b{level}\s+openred\.node\.lifecycle\b", line)]


@contextlib.contextmanager
def answering_503(port: int) -> Iterator[list[tuple[float, str]]]:
    """Something on the directory's port that answers every request 503 (a proxy in front of
    a directory that is down); yields the (time, path) of each request it got."""
    seen: list[tuple[float, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append((time.monotonic(), self.path))
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = b'{"title": "Service Unavailable", "status": 503}'
            self.send_response(503)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((HOST, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.slow
def test_the_pair_keeps_talking_through_an_outage_that_logs_one_error_and_one_info() -> None:
    root = short_dir()
    with network(root, OPENRED_HEARTBEAT_INTERVAL="1") as net:
        a_id, b_id = start_pair(net)
        kill_directory(net)
        wait_for(lambda: registration(net, "a")["directory_reachable"] is False,
                 "A never noticed the directory is down")

        # Messages and files between the paired nodes do not need the directory.
        admin(net, "a").post("send", {"peer": b_id, "text": "while the directory is down"})
        admin(net, "b").post("send", {"peer": a_id, "text": "still here"})
        source = root / "report.txt"
        source.write_bytes(b"shared while the directory was down\n" * 1000)
        offer = net.cli_json("a", "share", b_id, str(source))
        (root / "got").mkdir()
        net.cli("b", "fetch", offer["offer_id"], "--out", str(root / "got"))
        assert (root / "got" / "report.txt").read_bytes() == source.read_bytes()

        # A new connection needs the directory: one clear line, in bounded time.
        started = time.monotonic()
        refused = net.cli("a", "connect", b_id, check=False)
        assert time.monotonic() - started < 30
        assert refused.returncode == 1 and refused.stdout == ""
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "directory" in lines[0] and "unreachable" in lines[0], lines[0]
        assert "sessions already established keep working" in lines[0], lines[0]

        # B restarted during the outage: it starts, restores its session and keeps talking.
        assert net.servers.pop("b").stop() == 0
        b = net.start_node("b")
        net.cli("b", "send", a_id, "back without the directory")
        admin(net, "a").post("send", {"peer": b_id, "text": "welcome back"})
        inbox = [m["text"] for m in admin(net, "b").get("inbox")["items"]]
        assert "welcome back" in inbox and "while the directory is down" in inbox

        time.sleep(1.5)  # a few more failed heartbeats: still one ERROR
        back = time.time()
        net.start_directory()
        # Both come back without the operator: A heartbeats, B (never registered since its
        # restart) registers; the restarted directory's grants are accepted (its checkpoint
        # extends the one A and B hold).
        for name in ("a", "b"):
            wait_for(lambda n=name: (  # type: ignore[misc]
                (s := registration(net, n))["directory_reachable"]
                and (s["last_heartbeat"] or 0) >= int(back)), f"{name} never came back")
        session = net.cli_json("a", "connect", b_id)
        admin(net, "b").post("send", {"peer": a_id, "text": "on the restarted directory's grant"})
        assert session["peer"] == b_id

        a_log = net.servers["a"].output()
        errors = lifecycle_lines(a_log, "ERROR")
        assert len(errors) == 1 and "directory unreachable" in errors[0], a_log
        assert not lifecycle_lines(a_log, "WARNING"), a_log
        recovered = [line for line in lifecycle_lines(a_log, "INFO") if "reachable again" in line]
        assert len(recovered) == 1, a_log
        assert len(lifecycle_lines(b.output(), "ERROR")) == 1, b.output()


@pytest.mark.slow
def test_nodes_are_not_marked_stale_or_expired_for_the_directory_s_own_downtime() -> None:
    root = short_dir()
    with network(root, OPENRED_HEARTBEAT_INTERVAL="1", OPENRED_STALE_AFTER="2",
                 OPENRED_EXPIRE_AFTER="3", OPENRED_STATUS_CHECK_INTERVAL="1") as net:
        net.init_directory()
        net.start_directory()
        a_id = net.init_node("a")
        net.start_node("a")
        wait_registered(net, "a")
        kill_directory(net)
        # Longer than EXPIRE_AFTER: the directory must count silence from its own restart.
        # Meanwhile a proxy answers 503 in its place: the node keeps retrying at the pace
        # the directory asked for, not slower than the directory's patience.
        with answering_503(net.directory_port) as seen:
            time.sleep(3.5)
        beats = [t for t, path in seen if path.endswith("/heartbeat")]
        assert len(beats) >= 4, seen
        with sqlite3.connect(root / "directory" / "openred.db") as conn:
            before = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        net.start_directory()
        time.sleep(4)  # past STALE_AFTER and EXPIRE_AFTER, with a sweep every second
        with sqlite3.connect(root / "directory" / "openred.db") as conn:
            since = conn.execute("SELECT type FROM events WHERE seq > ?", (before,)).fetchall()
            status = conn.execute("SELECT status FROM directory_nodes WHERE node_id = ?",
                                  (a_id,)).fetchone()[0]
        assert ("NodeStatusChanged",) not in since, since
        assert ("NodeRegistered",) not in since, since  # never expired, so never re-registered
        assert status == "active"
        assert "does not know this node" not in net.servers["a"].output()



@pytest.mark.slow
def test_a_directory_restored_from_an_older_copy_is_refused_and_the_node_says_so() -> None:
    root = short_dir()
    with network(root, OPENRED_HEARTBEAT_INTERVAL="1") as net:
        a_id, b_id = start_pair(net)
        assert net.servers.pop("directory").stop() == 0
        shutil.copytree(root / "directory", root / "copy")  # its key, log and jail witness
        net.start_directory()
        for _ in range(2):  # the restarted directory's grants extend what the nodes hold
            admin(net, "a").post("connect", {"peer": b_id})
        assert net.servers.pop("directory").stop() == 0
        # The operator restores the older copy: same key, a log that forgets two grants.
        shutil.rmtree(root / "directory")
        shutil.copytree(root / "copy", root / "directory")
        net.start_directory()
        outcomes = [net.cli("a", "connect", b_id, check=False) for _ in range(2)]
        for refused in outcomes:
            assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        # The node says it in its own words (not the directory's relay of a 409), once the
        # directory's history contradicts the checkpoint it holds; the evidence is in its log.
        last = outcomes[-1].stderr
        assert "checkpoint" in last and "evidence" in last, last
        a_log = net.servers["a"].output()
        forks = [line for line in a_log.splitlines()
                 if " ERROR " in line and "DirectoryForkDetected" in line]
        assert len(forks) == 1, a_log
        # The first grant, while the restored log is still shorter than the checkpoint held,
        # fails its consistency proof: nothing to keep as evidence, but the node says it.
        unverified = [line for line in a_log.splitlines() if " WARNING " in line
                      and "signed by the directory" in line and "not verify" in line]
        assert len(unverified) == 1, a_log
        with sqlite3.connect(root / "a" / "openred.db") as conn:
            kept = conn.execute("SELECT count(*) FROM events WHERE type = "
                                "'DirectoryForkDetected'").fetchone()[0]
        assert kept == 1
        # The pair keeps talking on the sessions it has.
        admin(net, "b").post("send", {"peer": a_id, "text": "the directory forked"})
        admin(net, "a").post("send", {"peer": b_id, "text": "we still talk"})
