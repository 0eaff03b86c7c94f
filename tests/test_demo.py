"""`make demo` end to end: every participant's log is written through jails and verifies."""

from __future__ import annotations

from pathlib import Path

from audit_tools.verify import verify
from openred.demo import NODES, main


def test_demo_writes_a_verifiable_log_per_participant(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    for name in ("directory", *NODES):
        report = verify(tmp_path / name)
        assert report.ok, (name, report.reason)
        assert report.entries > 5
    # The nodes' projections hold what the story did: sessions (expired), inbox messages.
    alice = verify(tmp_path / "alice")
    assert any(s.number == 7 and s.status == "ok" and "5 tables" in s.detail
               for s in alice.steps)
    # Keys never reach the data directory in clear: the keystore is encrypted.
    keystore = (tmp_path / "alice" / "keystore.json").read_text()
    assert "argon2id" in keystore.lower()
