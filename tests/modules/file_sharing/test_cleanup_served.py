"""``openred node serve`` removes the working files of offers that end; placed files stay.

Real processes: a directory and two nodes (file_sharing on by default, a lifecycle run every
second). A shares three files with B: one B fetches completely, one B has half fetched (its
partial file and marks, as an interrupted fetch leaves them), one that stands for an hour.
When the first two expire, without anybody asking, A's hash trees of them and B's partial file
go at the next lifecycle run; B's fetched file, the standing offer's tree and everything else
stay, and both logs verify afterwards.
"""

from __future__ import annotations

import time

from audit_tools.verify import verify
from openred.modules.file_sharing.cleanup import offer_files
from tests.cli.network import network
from tests.crypto_jail.test_server import short_dir


def test_a_served_node_removes_the_files_of_offers_that_end() -> None:
    root = short_dir()
    with network(root, OPENRED_LIFECYCLE_INTERVAL="1") as net:
        _, b_id = net.connected_pair()
        source = root / "shared.txt"
        source.write_text("offered for a few seconds\n")
        fetched = net.cli_json("a", "share", b_id, str(source), "--expires", "15s")["offer_id"]
        half = net.cli_json("a", "share", b_id, str(source), "--expires", "15s")["offer_id"]
        standing = net.cli_json("a", "share", b_id, str(source), "--expires", "1h")["offer_id"]
        net.cli("b", "fetch", fetched)
        placed = root / "b" / "files" / "received" / "shared.txt"
        assert placed.read_text() == "offered for a few seconds\n"
        partial = root / "b" / "files" / "partial"
        partial.mkdir(parents=True, exist_ok=True)
        (partial / f"{half}.part").write_bytes(b"offered for a")
        (partial / f"{half}.marks").write_bytes(b"")
        assert set(offer_files(root / "a" / "files")) == {fetched, half, standing}
        assert set(offer_files(root / "b" / "files")) == {half}

        deadline = time.monotonic() + 60
        while (set(offer_files(root / "a" / "files")) != {standing}
               or offer_files(root / "b" / "files")):
            assert time.monotonic() < deadline, (offer_files(root / "a" / "files"),
                                                 offer_files(root / "b" / "files"))
            time.sleep(0.2)
        states = {o["offer_id"]: o["state"] for o in net.cli_json("b", "files")}
        assert states == {fetched: "expired", half: "expired", standing: "offered"}
        assert placed.read_text() == "offered for a few seconds\n"
        assert (root / "a" / "files" / "trees" / f"{standing}.leaves").is_file()
        assert source.read_text() == "offered for a few seconds\n"
        net.stop_all()
        for name in ("a", "b"):
            report = verify(root / name)
            assert report.ok, report.reason
