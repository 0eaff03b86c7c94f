"""Fixtures the jail-client tests share: one real jail per test module and a client of it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from openred.crypto.client import JailClient
from tests.crypto_jail.test_server import JailProc, dev_keystore, short_dir, spawn_jail


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def jail(workdir: Path) -> Iterator[JailProc]:
    (workdir / "a").mkdir(mode=0o700)
    keystore, _ = dev_keystore(workdir / "a")
    proc = spawn_jail(keystore, workdir / "a" / "s" / "j.sock")
    yield proc
    proc.stop()


@pytest.fixture
async def client(jail: JailProc) -> AsyncIterator[JailClient]:
    async with JailClient(jail.socket_path, timeout=5) as c:
        yield c
