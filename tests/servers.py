"""Real HTTP servers on loopback for tests: a process, or Hypercorn inside the test's loop.

:func:`start_process` runs a command that listens on a given loopback port, waits until it
answers HTTP, and :meth:`ServerProcess.stop` stops exactly that process by its pid (SIGTERM,
then SIGKILL). :func:`serve_in_loop` runs a Quart app under the project's Hypercorn
configuration as a task of the running event loop (for fake peers and in-process services).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from quart import Quart

from openred.demo import children
from openred.web.serve import hypercorn_config, serve_app

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback right now.

    Under pytest-xdist (``make test`` runs two workers) the workers take disjoint ports (half
    the port, by the number of workers, is the worker's index: Linux hands out ports of one
    parity to ``bind(0)``), so two workers never pick the same port between one's probe and
    its server's bind.
    """
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    for _ in range(10_000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if (port >> 1) % count == index % count:
            return port
    raise RuntimeError(f"no free loopback port for worker {worker} of {count}")


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether something answers HTTP at ``url`` (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class ServerProcess:
    """A server process this test started; stopped by its pid only."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill_with_children(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL the server and its direct children (its jail): what a crash or an OOM kill
        leaves; the children's pids. A jail may already have left with its supervisor."""
        jails = children(self.pid)
        os.kill(self.pid, signal.SIGKILL)
        for pid in jails:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout)
        return jails

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_process(
    argv: Sequence[str], *, port: int, env: Mapping[str, str] | None = None,
    health_path: str = "/api/v3/health", timeout: float = 60.0, cwd: Path | None = None,
) -> ServerProcess:
    """Start ``argv`` (which must listen on ``HOST:port``) and wait until it answers."""
    log = Path(tempfile.mkstemp(prefix="openred-server-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=dict(env or os.environ),
            cwd=cwd, stdin=subprocess.DEVNULL,
        )
    server = ServerProcess(proc, f"http://{HOST}:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
        if answers(server.url + health_path):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not answer within {timeout} s:\n{server.output()}")


@contextlib.contextmanager
def running_process(
    argv: Sequence[str], *, port: int, env: Mapping[str, str] | None = None,
    health_path: str = "/api/v3/health", timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """:func:`start_process` as a context manager that always stops the process."""
    server = start_process(argv, port=port, env=env, health_path=health_path, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def python_argv(*args: str) -> list[str]:
    """``python -m ...`` with this interpreter."""
    return [sys.executable, *args]


async def wait_listening(port: int, task: asyncio.Task[object] | None = None) -> None:
    """Wait (up to ~4 s) until loopback ``port`` takes connections; ``task``'s error if it ends."""
    for _ in range(200):
        if task is not None and task.done():
            task.result()
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return


@contextlib.asynccontextmanager
async def serve_in_loop(app: Quart, port: int | None = None) -> AsyncIterator[str]:
    """Serve ``app`` with Hypercorn on loopback inside the running loop; yields its URL."""
    port = port or free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_app(app, hypercorn_config(HOST, port), shutdown=stop, install_signals=False)
    )
    url = f"http://{HOST}:{port}"
    try:
        await wait_listening(port, task)
        yield url
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def split_answers(raw: bytes) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """The HTTP/1.1 answers read off one connection: status line, headers, body each.

    Headers are lower-cased and sorted, ``Date`` dropped (it differs between two servers
    answering the same request); each body is what its ``Content-Length`` covers of the rest.
    """
    out = []
    rest = raw
    while rest:
        top, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, raw
        status, *lines = top.decode("latin-1").split("\r\n")
        headers = []
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            if name != "date":
                headers.append((name, value))
        body, rest = rest[:length], rest[length:]
        out.append((status, sorted(headers), body))
    return out


async def gets_at_once(url: str, count: int) -> list[tuple[int, bytes]]:
    """Status and body of ``count`` GETs of ``url`` sent at once (a burst of scrapers)."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count)) as session:

        async def ask() -> tuple[int, bytes]:
            async with session.get(url) as resp:
                return resp.status, await resp.read()

        return list(await asyncio.gather(*(ask() for _ in range(count))))
