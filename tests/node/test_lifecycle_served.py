"""``openred node serve`` runs the lifecycle tasks modules add: offers expire on time.

Real processes: a directory and two nodes initialized with the defaults (file_sharing is on by
default), a file shared for two seconds. Without anybody asking about the offer, both nodes log
``FileOfferExpired`` at their next lifecycle run; the logs verify afterwards.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from audit_tools.verify import verify
from tests.cli.network import network
from tests.crypto_jail.test_server import short_dir


def logged(data_dir: Path, event_type: str) -> int:
    """How many ``event_type`` entries the node's log holds (read-only, never through it)."""
    conn = sqlite3.connect(f"file:{data_dir / 'openred.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*) FROM events WHERE type = ?", (event_type,))
        return int(row.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
def test_a_served_node_expires_offers_on_time_without_being_asked() -> None:
    root = short_dir()
    with network(root, OPENRED_LIFECYCLE_INTERVAL="1") as net:
        _, b_id = net.connected_pair()
        source = root / "shared.txt"
        source.write_text("offered for two seconds\n")
        offer = net.cli_json("a", "share", b_id, str(source), "--expires", "2s")
        deadline = time.monotonic() + 30
        while logged(root / "a", "FileOfferExpired") + logged(root / "b", "FileOfferExpired") < 2:
            assert time.monotonic() < deadline, "the offer was not expired by the lifecycle"
            time.sleep(0.2)
        assert logged(root / "a", "FileOfferExpired") == 1
        assert logged(root / "b", "FileOfferExpired") == 1
        states = {o["offer_id"]: o["state"] for o in net.cli_json("b", "files")}
        assert states[offer["offer_id"]] == "expired"
        net.stop_all()
        for name in ("a", "b"):
            report = verify(root / name)
            assert report.ok, report.reason
