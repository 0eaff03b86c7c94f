"""SIGKILL a served node (``openred node serve``) while it receives messages.

A sends messages to B from several threads through its admin API; B's process and its jail are
killed with SIGKILL in the middle. B is started again with the same command: its log verifies
with audit_tools (projections included), every message A got a receipt for is in B's inbox
exactly once, and the session resumes in both directions.
"""

from __future__ import annotations

import threading
import time

import pytest

from audit_tools.verify import verify
from openred.cli_client import AdminClient
from openred.errors import OpenRedError
from tests.cli.network import alive, network
from tests.crypto_jail.test_server import short_dir


@pytest.mark.slow
def test_a_node_killed_while_receiving_keeps_every_acknowledged_message() -> None:
    root = short_dir()
    with network(root, OPENRED_HEARTBEAT_INTERVAL="2") as net:
        net.init_directory()
        net.start_directory()
        net.init_node("a")
        b_id = net.init_node("b")
        net.start_node("a")
        b = net.start_node("b")
        net.wait_registered("a")
        net.wait_registered("b")
        net.cli_json("a", "connect", b_id)
        admin = AdminClient.from_data_dir(root / "a", timeout=15)
        acknowledged: list[str] = []
        stop = threading.Event()

        def sender(worker: int) -> None:
            n = 0
            while not stop.is_set():
                text = f"w{worker}-{n}"
                n += 1
                try:
                    admin.post("send", {"peer": b_id, "text": text})
                except OpenRedError:
                    continue  # not acknowledged: B may or may not have it
                acknowledged.append(text)

        threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        jails = b.kill_with_children()
        time.sleep(0.5)  # A's senders meet a dead peer meanwhile
        stop.set()
        for thread in threads:
            thread.join(30)
        assert not any(alive(pid) for pid in jails)

        net.start_node("b")
        report = verify(root / "b")
        assert report.ok, report.reason
        inbox = [m["text"] for m in net.cli_json("b", "inbox", "--limit", "1000")]
        assert len(inbox) == len(set(inbox))
        missing = set(acknowledged) - set(inbox)
        assert not missing, missing
        # the session resumes, both ways
        net.cli("a", "send", b_id, "after the crash")
        net.cli("b", "send", net.ids["a"], "back again")
        assert "after the crash" in [m["text"] for m in net.cli_json("b", "inbox")]
        assert len(net.cli_json("b", "sessions", "--state", "active")) == 1
