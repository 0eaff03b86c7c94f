"""``openred directory serve`` and ``openred node serve`` say "serving on …" once they serve.

An operator's script (or a service manager reading the output) takes the line as the sign the
service is up. Before, both commands printed it before the app had started: the directory
before its jail, log and listening socket, the node before its jail and both its listeners.
A client connecting as soon as the line appeared had its connection refused. Each test here
starts the real command, connects the instant the line is read, and must get an answer.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.cli.network import ROOT, Network, network
from tests.crypto_jail.test_server import short_dir


@contextlib.contextmanager
def served(net: Network, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``openred ARGS`` started, its stdout a pipe (stderr, the service's log, in a file);
    stopped by its pid."""
    log = net.root / f"serve-{os.getpid()}-{time.monotonic_ns()}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "openred.cli", *args],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                env=net.env, cwd=ROOT)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()


def line_with(proc: subprocess.Popen[bytes], log: Path, marker: str,
              timeout: float = 60) -> str:
    """The first line of ``proc``'s stdout that holds ``marker``, read as soon as written."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline, buffered = time.monotonic() + timeout, b""
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} line:\n{buffered!r}\n{log.read_text()}"
            if not selector.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"stdout closed before {marker!r}:\n{buffered!r}\n{log.read_text()}"
            buffered += chunk
            for line in buffered.decode(errors="replace").splitlines(keepends=True):
                if marker in line and line.endswith("\n"):
                    return line.strip()
    finally:
        selector.close()


def status_now(url: str) -> int:
    """The status of one GET of ``url``, sent now (a refused connection fails the test)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_directory_says_serving_on_once_it_answers() -> None:
    with network(short_dir()) as net:
        net.init_directory()
        with served(net, "directory", "serve", "--data-dir",
                    str(net.root / "directory")) as (proc, log):
            line = line_with(proc, log, "directory serving on")
            status = status_now(f"{net.directory_url}/api/v3/health")
            assert status == 200, (line, log.read_text())


def test_the_node_says_serving_on_once_it_and_its_admin_api_answer() -> None:
    with network(short_dir()) as net:
        net.init_directory()  # its key and URL; the node starts without it (it registers later)
        net.init_node("a")
        data = net.root / "a"
        with served(net, "node", "serve", "--data-dir", str(data)) as (proc, log):
            line = line_with(proc, log, "node serving on")
            port = net.node_port("a")
            # 503 while its directory is not served (its health says so): an answer all the same.
            status = status_now(f"http://127.0.0.1:{port}/api/v3/health")
            assert status in (200, 503), (line, log.read_text())
            admin = (data / "admin-url").read_text().strip()
            # Unsigned: refused, but answered (the CLI's commands reach it from now on).
            assert status_now(f"{admin}/admin/v1/status") in (401, 403), log.read_text()
