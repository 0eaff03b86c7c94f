"""No crypto jail outlives the ``openred directory serve`` / ``openred node serve`` that started it.

Real processes: each test starts ``serve``, records the jail processes it starts (its children
running ``crypto_jail``, read from /proc while it runs), makes ``serve`` fail after its jail
started, or stops or kills it, and checks every recorded jail is gone. A ``serve`` that stops
(on SIGTERM, or because its start failed) stops its jail itself before it exits; a ``serve``
SIGKILLed leaves the jail to notice within a few seconds (its stdin at EOF, its parent-death
signal). The directory's signature check worker (``openred.crypto.check_worker``) is held to
the same: gone when ``serve`` stopped, gone within seconds of a SIGKILL (its stdin at EOF).
Only processes these tests started are signalled, by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cli.network import ROOT, Network, alive, network
from tests.crypto_jail.test_server import short_dir
from tests.servers import HOST, answers, children


def jails_of(pid: int, program: bytes = b"crypto_jail") -> list[int]:
    found = []
    for child in children(pid):
        with contextlib.suppress(OSError):
            if program in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


WORKER = b"openred.crypto.check_worker"


@dataclass
class Serve:
    """A ``serve`` process and every jail seen under it."""

    proc: subprocess.Popen[bytes]
    log: Path
    jails: set[int] = field(default_factory=set)
    workers: set[int] = field(default_factory=set)

    def watch(self) -> None:
        if self.proc.poll() is None:
            self.jails.update(jails_of(self.proc.pid))
            self.workers.update(jails_of(self.proc.pid, WORKER))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Watch for jails until ``ready()``; fail (with the output) if serve exits first."""
        deadline = time.monotonic() + timeout
        while not ready():
            self.watch()
            assert self.proc.poll() is None, f"serve exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"serve not ready:\n{self.output()}"
            time.sleep(0.005)
        self.watch()

    def exit_code(self, timeout: float = 60.0) -> int:
        """Watch for jails until serve exits; its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            self.watch()
            assert time.monotonic() < deadline, f"serve did not exit:\n{self.output()}"
            time.sleep(0.005)
        return int(self.proc.returncode)

    def jails_alive(self) -> list[int]:
        return [pid for pid in self.jails | self.workers if alive(pid)]

    def jails_gone_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.jails_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


@contextlib.contextmanager
def serving(kind: str, data: Path, env: dict[str, str]) -> Iterator[Serve]:
    """``openred KIND serve --data-dir DATA``; at the end the process and its jails, by pid,
    are killed if still there."""
    log = Path(tempfile.mkstemp(prefix="openred-serve-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "openred.cli", kind, "serve", "--data-dir", str(data)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    serve = Serve(proc, log)
    try:
        yield serve
    finally:
        for pid in [proc.pid, *serve.jails, *serve.workers]:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def template() -> Iterator[Network]:
    """A directory and a node "a", initialized once (never served): each test serves a copy."""
    with network(short_dir()) as net:
        net.init_directory()
        net.init_node("a")
        yield net


@pytest.fixture
def net(template: Network) -> Iterator[Network]:
    root = short_dir()
    for name in ("directory", "a"):
        shutil.copytree(template.root / name, root / name, symlinks=True)
    try:
        yield Network(root, template.env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def env_port(data: Path, name: str) -> int:
    for line in (data / ".env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return int(line.split("=", 1)[1])
    raise AssertionError(f"no {name} in {data / '.env'}")


def assert_no_jail_left(serve: Serve) -> None:
    """Every jail is gone once ``serve`` exited: it stopped its own before leaving."""
    assert serve.jails, f"serve started no jail:\n{serve.output()}"
    assert not serve.jails_alive(), (
        f"serve exited and left its jail {serve.jails_alive()} running:\n{serve.output()}")


def test_a_directory_that_cannot_bind_its_port_stops_its_jail_before_it_exits(
    net: Network,
) -> None:
    """The jail starts before Hypercorn binds (the app's start-up runs first); the failed bind
    never ran the app's shutdown, so the jail was left to notice its parent's death."""
    data = net.root / "directory"
    with socket.socket() as busy:
        busy.bind((HOST, env_port(data, "OPENRED_PORT")))
        busy.listen()
        with serving("directory", data, net.env) as serve:
            code = serve.exit_code()
            assert code == 1 and "cannot serve" in serve.output(), serve.output()
            assert_no_jail_left(serve)


@pytest.mark.parametrize("setting", ["OPENRED_PORT", "OPENRED_ADMIN_PORT"])
def test_a_node_that_cannot_bind_a_port_stops_its_jail_before_it_exits(
    net: Network, setting: str,
) -> None:
    """Its API port or its admin port held by another socket."""
    data = net.root / "a"
    with socket.socket() as busy:
        busy.bind((HOST, env_port(data, setting)))
        busy.listen()
        with serving("node", data, net.env) as serve:
            code = serve.exit_code()
            assert code == 1 and "Traceback" not in serve.output(), serve.output()
            assert_no_jail_left(serve)


def test_a_node_whose_log_cannot_be_opened_stops_its_jail_before_it_exits(
    net: Network,
) -> None:
    """A data directory problem found after the jail started (the log is not a database)."""
    data = net.root / "a"
    (data / "openred.db").write_bytes(b"not a database " * 512)
    with serving("node", data, net.env) as serve:
        code = serve.exit_code()
        assert code == 1 and "Traceback" not in serve.output(), serve.output()
        assert_no_jail_left(serve)


@pytest.mark.parametrize("kind", ["directory", "node"])
def test_sigterm_during_start_up_stops_serve_and_its_jail(net: Network, kind: str) -> None:
    """SIGTERM as soon as the jail process exists, while serve still waits for it."""
    data = net.root / ("a" if kind == "node" else kind)
    with serving(kind, data, net.env) as serve:
        serve.wait_for(lambda: bool(serve.jails))
        os.kill(serve.proc.pid, signal.SIGTERM)
        serve.exit_code()
        assert "Traceback" not in serve.output(), serve.output()
        assert_no_jail_left(serve)


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_a_sigkilled_directory_leaves_no_jail_behind(net: Network, when: str) -> None:
    data = net.root / "directory"
    url = f"http://{HOST}:{env_port(data, 'OPENRED_PORT')}/api/v3/health"
    with serving("directory", data, net.env) as serve:
        if when == "starting":  # the jail may not even have asked for its parent-death signal
            serve.wait_for(lambda: bool(serve.jails))
        else:
            serve.wait_for(lambda: answers(url, 0.5))
        os.kill(serve.proc.pid, signal.SIGKILL)
        serve.exit_code()
        assert serve.jails, serve.output()
        if when == "serving":
            assert serve.workers, f"no signature check worker:\n{serve.output()}"
        assert serve.jails_gone_within(5), (
            f"the jail {serve.jails_alive()} outlived its SIGKILLed directory:\n"
            f"{serve.output()}")


def test_a_directory_stopped_with_sigterm_stops_its_jail_first(net: Network) -> None:
    data = net.root / "directory"
    url = f"http://{HOST}:{env_port(data, 'OPENRED_PORT')}/api/v3/health"
    with serving("directory", data, net.env) as serve:
        serve.wait_for(lambda: answers(url, 0.5))
        assert serve.workers, f"no signature check worker:\n{serve.output()}"
        os.kill(serve.proc.pid, signal.SIGTERM)
        assert serve.exit_code() == 0, serve.output()
        assert_no_jail_left(serve)
