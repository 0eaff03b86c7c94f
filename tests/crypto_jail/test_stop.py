"""A served jail stops on SIGTERM, and when its supervisor goes, whatever it is doing.

Real ``python -I -m crypto_jail serve`` processes, stopped by pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crypto_jail.test_server import PYTHON, dev_keystore, jail_env, short_dir

PIPE_SIZE = 4096


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def gone_within(popen: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def queued(read_end: int) -> int:
    """Bytes waiting in a pipe."""
    return struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0" * 4))[0]


def fill_its_log(path: Path, stderr: int) -> list[socket.socket]:
    """Make the jail's serving loop log until its stderr pipe, which nobody reads, is full.

    Every client slot taken and idle past the eviction threshold: each newcomer then evicts
    one, and the loop logs a line for it. The connections, to close."""
    clients: list[socket.socket] = []

    def connect() -> None:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(0.5)
        clients.append(client)
        with contextlib.suppress(OSError):  # once the loop is stuck, the backlog fills
            client.connect(str(path))

    for _ in range(128):
        connect()
    time.sleep(1.2)  # every slot idle past EVICT_AFTER_IDLE
    deadline = time.monotonic() + 20
    while queued(stderr) < PIPE_SIZE - 200 and time.monotonic() < deadline:
        for _ in range(10):
            connect()
        time.sleep(0.05)
    for _ in range(10):  # the loop's next line no longer fits: it waits in that write
        connect()
    assert queued(stderr) >= PIPE_SIZE - 200, "the jail's log did not fill its pipe"
    return clients


@pytest.mark.parametrize("how", ["sigterm", "stdin-eof"])
def test_a_jail_blocked_on_a_log_nobody_reads_still_stops(workdir: Path, how: str) -> None:
    """A jail whose stderr pipe is full blocks in the write of its next log line. Its SIGTERM
    handler then never got to stop it (the serving loop waits in that write, and the handler
    only asks the loop to stop): an orphan whose log pipe another process held open ignored
    SIGTERM and its supervisor's departure alike."""
    keystore, _ = dev_keystore(workdir)
    path = workdir / "s" / "j.sock"
    read_err, write_err = os.pipe()
    fcntl.fcntl(write_err, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # the smallest: full after ~40 lines
    popen = subprocess.Popen(
        [PYTHON, "-I", "-m", "crypto_jail", "serve", "--insecure-test-kdf",
         "--exit-on-stdin-eof", "--keystore", str(keystore), "--socket", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=write_err, env=jail_env())
    os.close(write_err)
    clients: list[socket.socket] = []
    try:
        assert popen.stdout is not None and popen.stdin is not None
        ready, _, _ = select.select([popen.stdout], [], [], 30)
        assert ready and popen.stdout.readline().startswith(b"READY "), "the jail did not start"
        clients = fill_its_log(path, read_err)
        if how == "sigterm":
            popen.send_signal(signal.SIGTERM)
        else:
            popen.stdin.close()  # the supervisor is gone; its log pipe stays open elsewhere
        assert gone_within(popen, 10), f"the jail ignored its stop ({how}) while logging"
    finally:
        for client in clients:
            client.close()
        if popen.poll() is None:
            popen.kill()
            popen.wait(5)
        for stream in (popen.stdout, popen.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        os.close(read_err)


HANDLER_INSIDE_THREAD_START = """
import os, sys, threading, time
import crypto_jail.__main__ as jail

prepare = getattr(jail, "prepare_stop_deadline", None)
if prepare is not None:
    prepare()  # what `serve` does before serving
# The serving loop starts a thread per client: Thread.start holds threading's (non-reentrant)
# limbo lock for a moment. A SIGTERM handled right then runs the stop handler inside it, on
# the same thread; the stop handler asks for the deadline.
with threading._active_limbo_lock:
    jail._exit_after(0.2)
    print("asked", flush=True)
    time.sleep(10)
os._exit(0)
"""


def test_the_stop_deadline_can_be_asked_from_a_handler_that_interrupted_thread_start() -> None:
    """The stop handler runs on the main thread, between any two bytecodes, including inside
    ``Thread.start``'s hold of the limbo lock (the serving loop starts a thread per client).
    Asking for the deadline then started a thread, whose ``start`` waited for that same lock,
    held by the thread waiting: the jail hung for good, its deadline never set (the other stop
    request, the signal watcher's, finds it asked already). The deadline thread now exists
    before serving, and asking only wakes it."""
    popen = subprocess.Popen([PYTHON, "-I", "-c", HANDLER_INSIDE_THREAD_START],
                             stdout=subprocess.PIPE, env=jail_env())
    try:
        assert gone_within(popen, 5), "asking for the deadline hung the stopping jail"
        assert popen.returncode == 1  # the deadline's exit, 0.2 s after it was asked
        assert popen.stdout is not None and popen.stdout.read() == b"asked\n"
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait(5)
        if popen.stdout is not None:
            popen.stdout.close()
