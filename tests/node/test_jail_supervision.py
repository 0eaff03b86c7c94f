"""A node's own jail never outlives it, and a restarted node supervises the jail it uses.

Real processes throughout: ``openred node serve`` and its jail, SIGKILLed and started again.
Every test stops only processes it started (or that they started, found by pid under them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openred.crypto.client import JailClient, JailSupervisor
from openred.crypto.jail_owner import orphaned_jail, owner_path
from tests.cli.network import alive, network
from tests.crypto_jail.test_server import dev_keystore, short_dir
from tests.servers import children

ROOT = Path(__file__).resolve().parents[2]


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_if_alive(*pids: int) -> None:
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def jail_of(pid: int) -> int:
    """The one crypto_jail process ``pid`` started."""
    found = [c for c in children(pid)
             if b"crypto_jail" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_a_killed_node_takes_its_jail_along_and_restarts_with_a_jail_it_supervises() -> None:
    root = short_dir()
    with network(root, OPENRED_HEARTBEAT_INTERVAL="2") as net:
        a_id, b_id = net.connected_pair()
        b = net.servers["b"]
        net.cli("a", "send", b_id, "before")
        jail = jail_of(b.pid)
        assert owner_path(root / "b" / "jail" / "jail.sock").is_file()
        os.kill(b.pid, signal.SIGKILL)  # the node only: its jail is left to notice
        b.proc.wait(10)
        try:
            assert wait_gone(jail), "the jail outlived the node that started it"
        finally:
            kill_if_alive(jail)
        b = net.start_node("b")
        fresh = jail_of(b.pid)  # a new jail, the restarted node's own child
        assert fresh != jail
        assert net.cli_json("b", "status")["checks"]["jail"] == "ok"
        net.cli("a", "send", b_id, "after the restart")  # the session resumes
        net.cli("b", "send", a_id, "back")
        assert "after the restart" in [m["text"] for m in net.cli_json("b", "inbox")]
        assert "back" in [m["text"] for m in net.cli_json("a", "inbox")]


@pytest.mark.slow
def test_a_restarted_node_replaces_a_jail_that_did_not_leave_on_its_own() -> None:
    root = short_dir()
    with network(root) as net:
        net.init_directory()
        net.start_directory()
        net.init_node("a")
        a = net.start_node("a")
        jail = jail_of(a.pid)
        socket = root / "a" / "jail" / "jail.sock"
        # A stopped jail cannot act on its supervisor's death: it stands for any jail that
        # stayed behind (before the restart, a node reused such a jail without supervising it).
        os.kill(jail, signal.SIGSTOP)
        try:
            assert orphaned_jail(socket) is None  # its supervisor still runs: not an orphan
            os.kill(a.pid, signal.SIGKILL)
            a.proc.wait(10)
            assert alive(jail)
            assert orphaned_jail(socket) == jail
            a = net.start_node("a")
            assert wait_gone(jail), "the restarted node did not stop the orphaned jail"
            fresh = jail_of(a.pid)
            assert fresh != jail
            assert orphaned_jail(socket) is None
            assert net.cli_json("a", "status")["checks"]["jail"] == "ok"
        finally:
            kill_if_alive(jail)


HOLDER = """
import asyncio, os, sys, time
from pathlib import Path
from openred.crypto.client import JailSupervisor

async def main() -> None:
    supervisor = JailSupervisor(Path(sys.argv[1]), Path(sys.argv[2]))
    await supervisor.start()
    if os.fork() == 0:  # a child holding every inherited fd, the jail's stdin pipe too
        time.sleep(120)
        os._exit(0)
    print(supervisor.pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@pytest.mark.slow
def test_the_jail_leaves_with_its_supervisor_even_when_its_stdin_stays_open() -> None:
    root, holder = _supervising(HOLDER)
    forked: list[int] = []
    jail = 0
    try:
        assert holder.stdout is not None
        jail = int(holder.stdout.readline())
        forked = [c for c in children(holder.pid) if c != jail]
        assert len(forked) == 1  # the fork still holds the write end of the jail's stdin
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert wait_gone(jail), "the jail outlived its supervisor"
    finally:
        kill_if_alive(holder.pid, *forked, *([jail] if jail else []))
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


def _supervising(script: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """A keystore in a fresh short directory, and ``script`` run on it (a supervisor)."""
    root = short_dir()
    keystore, _ = dev_keystore(root)
    (root / "s").mkdir(mode=0o700)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(keystore), str(root / "s" / "j.sock")],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    return root, holder


EARLY_DEATH = """
import asyncio, os, sys, time
from pathlib import Path
from openred.crypto.client import JailSupervisor

async def main() -> None:
    supervisor = JailSupervisor(Path(sys.argv[1]), Path(sys.argv[2]))
    starting = asyncio.create_task(supervisor.start())
    while supervisor.pid is None:  # set once the jail's program runs (after its exec)
        await asyncio.sleep(0)
    child = os.fork()
    if child == 0:  # a child holding every inherited fd, the jail's stdin pipe too
        time.sleep(120)
        os._exit(0)
    print(supervisor.pid, child, flush=True)
    os._exit(0)  # gone while the jail still starts, before it can ask for a parent-death signal

asyncio.run(main())
"""


def test_a_jail_whose_supervisor_died_while_it_started_leaves_too() -> None:
    """PR_SET_PDEATHSIG only acts on a parent that dies after it is set: a supervisor that died
    during the jail's start-up (Python's start and imports, before ``prctl``) sent no signal,
    and with its stdin held open by a process forked from the supervisor, the jail served on,
    an orphan nobody supervised."""
    root, holder = _supervising(EARLY_DEATH)
    forked: list[int] = []
    jail = 0
    try:
        assert holder.stdout is not None
        jail, fork = map(int, holder.stdout.readline().split())
        forked = [fork]
        holder.wait(10)
        assert wait_gone(jail, 10), "the jail outlived a supervisor that died while it started"
    finally:
        kill_if_alive(*forked, *([jail] if jail else []))
        if holder.stdout is not None:
            holder.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_jail_started_through_a_wrapper_that_does_not_exec_still_starts() -> None:
    """``OPENRED_JAIL_PYTHON`` may name a wrapper script that runs Python as its child (no
    ``exec``): the jail's parent is then the wrapper, not the supervisor. ``--supervisor-pid``
    compared the parent's pid with the supervisor's and refused to start with "the supervisor
    is gone" while it was alive and waiting for READY."""
    root = short_dir()
    try:
        keystore, _ = dev_keystore(root)
        wrapper = root / "python-wrapper"
        wrapper.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\n')  # no exec: a child
        wrapper.chmod(0o700)
        supervisor = JailSupervisor(keystore, root / "s" / "j.sock", python=str(wrapper),
                                    start_timeout=20)
        try:
            await supervisor.start()
            client = JailClient(supervisor.socket_path, timeout=5)
            try:
                assert (await client.public_keys()).node_id
            finally:
                await client.close()
        finally:
            await supervisor.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
