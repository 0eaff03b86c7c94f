"""A served directory checks signatures in its worker process, and its answers stay true
whatever happens to that worker (killed: the checks are inline, the refusals the same)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

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
