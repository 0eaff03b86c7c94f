"""A served directory checks signatures in its worker process, and its answers stay true
whatever happens to that worker (killed: the checks are inline, the refusals the same)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import nacl.signing
import pytest

from openred.crypto.checks import InlineChecker, ProcessChecker
from openred.crypto.records import SignedNodeRecord
from openred.errors import ConfigurationError
from openred.settings import DirectorySettings
from tests.directory.conftest import Directory, DirectoryFactory, Node
from tests.directory.test_bad_input import assert_problem, raw_post, signed_headers


async def _refusals_hold(directory: Directory) -> None:
    """Good signatures pass; a record or a request signed by the wrong key is refused."""
    alice, mallory = Node(directory), Node(directory)
    assert (await alice.register()).status == 201
    assert (await mallory.register()).status == 201
    record = alice.record().record
    forged = SignedNodeRecord(record, mallory.sk.sign(record.canonical_bytes()).signature)
    assert_problem(await alice.call("POST", "/api/v3/nodes/register", forged.to_wire()),
                   422, "invalid-record")
    url = directory.url + "/api/v3/nodes/register"
    body = json.dumps(alice.record().to_wire()).encode()
    headers = await signed_headers(alice, url, body, key=nacl.signing.SigningKey.generate())
    status, problem = await raw_post(url, body, headers)
    assert status == 401 and problem["type"] == "urn:openred:problem:bad-signature", problem
    assert (await alice.call("GET", f"/api/v3/nodes/discover?node_id={mallory.node_id}")
            ).status == 200
    # Concurrent registrations all get their own true answer.
    nodes = [Node(directory) for _ in range(20)]
    replies = await asyncio.gather(*(n.register() for n in nodes))
    assert [r.status for r in replies] == [201] * 20


async def test_the_worker_checks_and_refusals_hold_before_and_after_it_is_killed(
        directory: Directory) -> None:
    checks = directory.service.checks
    assert isinstance(checks, ProcessChecker)
    pid = checks.pid
    assert pid is not None
    await _refusals_hold(directory)
    assert checks.batches > 0
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    done = checks.batches
    await _refusals_hold(directory)
    assert checks.pid is None and checks.batches == done  # inline, and still right


async def test_without_the_worker_checks_are_inline(directory_factory: DirectoryFactory) -> None:
    async with directory_factory(signature_worker=False) as directory:
        assert isinstance(directory.service.checks, InlineChecker)
        await _refusals_hold(directory)


def test_the_setting(tmp_path: Path) -> None:
    assert DirectorySettings.load(tmp_path, environ={}).signature_worker is True
    for value, expected in (("0", False), ("1", True), ("", False)):
        env = {"OPENRED_SIGNATURE_WORKER": value}
        assert DirectorySettings.load(tmp_path, environ=env).signature_worker is expected
    with pytest.raises(ConfigurationError, match="OPENRED_SIGNATURE_WORKER"):
        DirectorySettings.load(tmp_path, environ={"OPENRED_SIGNATURE_WORKER": "maybe"})


def _channel_ends(worker: int) -> list[str]:
    """``/proc`` paths of every descriptor, in the worker and in this process (the directory
    is served in it), open on the channel the worker answers on."""
    targets = {os.readlink(f"/proc/{worker}/fd/{fd}") for fd in (0, 1)}
    paths = []
    for pid in (worker, os.getpid()):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    paths.append(f"/proc/{pid}/fd/{fd}")
    return paths


async def test_a_local_process_cannot_answer_for_the_worker(directory: Directory) -> None:
    """A process of the directory's uid that may not ptrace it (Yama's default) can still open
    another process's pipes through ``/proc/<pid>/fd`` — a pipe reopens writable whatever the
    mode it was opened with. Had the worker answered on pipes, one such process could write a
    "valid" the directory read as the worker's, and a request signed by anyone would pass in
    a node's name (here: deregistering it)."""
    checks = directory.service.checks
    assert isinstance(checks, ProcessChecker) and checks.pid is not None
    alice = Node(directory)
    assert (await alice.register()).status == 201
    injected = 0
    for path in _channel_ends(checks.pid):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # what the worker answers on cannot be opened from /proc
        try:
            injected += os.write(fd, b"\x01" * 8)
        finally:
            os.close(fd)
    url = f"{directory.url}/api/v3/nodes/{alice.node_id}"
    forger = nacl.signing.SigningKey.generate()
    headers = await signed_headers(alice, url, b"", key=forger, method="DELETE")
    async with aiohttp.ClientSession() as s, s.delete(url, headers=headers) as r:
        status, problem = r.status, await r.json(content_type=None)
    assert (status, problem.get("type")) == (401, "urn:openred:problem:bad-signature"), (
        f"a forged deregistration answered {status} after {injected} bytes were written on "
        f"the worker's channel from /proc")
    assert (await alice.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200


async def test_a_worker_that_says_invalid_refuses_nothing_good(
        directory: Directory, tmp_path: Path) -> None:
    """A worker answering well-formed zeros (wrong, but in form: a broken or mismatched
    environment of its own): requests and records that verify are still accepted — its "not
    valid" is checked again inline, for a request's signature and a node record's alike."""
    script = tmp_path / "says-invalid"
    script.write_text(
        f"#!{sys.executable}\nimport struct, sys\n"
        "from openred.crypto.checks import _ITEM\n"
        "while head := sys.stdin.buffer.read(4):\n"
        "    n = struct.unpack('>I', head)[0]\n"
        "    for _ in range(n):\n"
        "        *_, size = _ITEM.unpack(sys.stdin.buffer.read(_ITEM.size))\n"
        "        sys.stdin.buffer.read(size)\n"
        "    sys.stdout.buffer.write(bytes(n)); sys.stdout.buffer.flush()\n")
    script.chmod(0o755)
    service = directory.service
    await service.checks.close()
    lying = ProcessChecker(python=str(script))
    await lying.start()
    service.checks = service.verifier.checker = lying
    alice = Node(directory)
    reply = await alice.register()
    assert reply.status == 201, reply.json()
    assert (await alice.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200
    assert lying.batches >= 2 and lying.pid is not None  # it was asked, and kept
