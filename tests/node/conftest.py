"""Fixtures: real jails (one set per module), a real directory log and fresh stores per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.node.world import Directory, JailPair, Node, open_node


@pytest.fixture(scope="module")
def jails() -> Iterator[JailPair]:
    pair = JailPair()
    yield pair
    pair.stop()


@pytest.fixture
async def directory(tmp_path: Path) -> AsyncIterator[Directory]:
    opened = await Directory.open(tmp_path / "directory")
    yield opened
    await opened.close()


@pytest.fixture
async def nodes(
    jails: JailPair, tmp_path: Path, directory: Directory
) -> AsyncIterator[tuple[Node, Node, Node]]:
    opened = [await open_node(name, proc.socket_path, tmp_path / name, directory)
              for name, proc in zip("abc", jails.procs, strict=True)]
    yield opened[0], opened[1], opened[2]
    for node in opened:
        await node.close()
