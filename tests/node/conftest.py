"""Fixtures: real jails (one set per module), fresh stores per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.node.world import Directory, JailPair, Node, ScriptedChecks, open_node


@pytest.fixture(scope="module")
def jails() -> Iterator[JailPair]:
    pair = JailPair()
    yield pair
    pair.stop()


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def checks() -> ScriptedChecks:
    return ScriptedChecks()


@pytest.fixture
async def nodes(
    jails: JailPair, tmp_path: Path, checks: ScriptedChecks, directory: Directory
) -> AsyncIterator[tuple[Node, Node, Node]]:
    opened = []
    for name, proc in zip("abc", jails.procs, strict=True):
        opened.append(await open_node(name, proc.socket_path, tmp_path / name, checks,
                                      directory.key))
    for node in opened:
        checks.peers[str(node.id)] = node.info()
    yield opened[0], opened[1], opened[2]
    for node in opened:
        await node.close()
