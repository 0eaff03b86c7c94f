"""`make demo` runs a live network of real processes: it must finish, verify, and leave nothing.

The demo runs as its own process (as ``make demo`` runs it). Afterwards every participant's log
verifies with audit_tools and no process that mentions the demo's data directory is alive —
the servers, and the jails they started. Interrupted with SIGINT (Ctrl-C) in the middle, it
stops everything it started, too.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from audit_tools.verify import verify
from openred.demo import NODES

ROOT = Path(__file__).resolve().parents[1]


def survivors(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (other than this test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline)
    return found


class Output:
    """Every line a process prints, read on a thread: a test waits for one line and can still
    show all of it, also when the process exits before that line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.lines: list[str] = []
        self.ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, marker: str, timeout: float) -> None:
        """Until a line holds ``marker``; else AssertionError with the output and exit code."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: self.ended or any(marker in line for line in self.lines), timeout)
            if found and any(marker in line for line in self.lines):
                return
        why = "ended its output" if self.ended else f"printed no such line within {timeout} s"
        raise AssertionError(f"the demo {why} before {marker!r} (exit code "
                             f"{self.proc.poll()}); its output:\n{self.text()}")

    def all(self, timeout: float) -> str:
        """The whole output, once the process has exited (its stdout is closed then)."""
        self.proc.wait(timeout)
        self._thread.join(timeout)
        if self.proc.stdout is not None and not self._thread.is_alive():
            self.proc.stdout.close()
        return self.text()


def start_demo(out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRED_")}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns without a terminal
    return subprocess.Popen(
        [sys.executable, "-m", "openred.demo", "--out", str(out)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_the_demo_runs_a_live_network_and_leaves_every_log_verifiable(tmp_path: Path) -> None:
    out = tmp_path / "demo-data"
    started = time.monotonic()
    proc = start_demo(out)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output
    assert time.monotonic() - started < 120  # a minute on an idle machine; shared CI is slower
    assert not survivors(str(out)), survivors(str(out))
    for name in ("directory", *NODES):
        report = verify(out / name)
        assert report.ok, (name, report.reason)
        assert report.entries >= 5
    assert "refused (409)" in output and "grant-used" in output
    assert "no process left running" in output
    # Carol's log records the refused replay; bob's holds the messages of both his lives.
    with sqlite3.connect(out / "carol" / "openred.db") as conn:
        kinds = [row[0] for row in conn.execute("SELECT type FROM events")]
    assert kinds.count("HandshakeRejected") == 1 and kinds.count("SessionEstablished") == 1
    with sqlite3.connect(out / "bob" / "openred.db") as conn:
        received = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
    assert received == 3
    keystore = (out / "alice" / "keystore.json").read_text()
    assert "argon2id" in keystore.lower()


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["openred node init", "openred connect"])
def test_ctrl_c_in_the_middle_stops_every_process_the_demo_started(
    tmp_path: Path, moment: str,
) -> None:
    out = tmp_path / "demo-data"
    proc = start_demo(out)
    output = Output(proc)
    try:
        output.wait_for(moment, 120)  # interrupt while nodes are created, or once they talk
        if moment == "openred node init":
            time.sleep(0.5)
        if not survivors(str(out)):
            exited = proc.poll() is not None  # just after that line: show all it said
            raise AssertionError(
                f"the demo should be running processes now (exit code {proc.poll()}); its "
                f"output:\n{output.all(10) if exited else output.text()}")
        proc.send_signal(signal.SIGINT)
        everything = output.all(60)
    finally:
        if proc.poll() is None:  # the test failed while the demo ran: it stops it, as Ctrl-C
            proc.send_signal(signal.SIGINT)
        output.all(60)
    assert proc.returncode == 130, everything
    assert "interrupted" in everything
    assert not survivors(str(out)), survivors(str(out))
