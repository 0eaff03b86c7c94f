"""The directory's jail witnesses its log: no forked or rolled-back directory history is signed.

Real jails (started as ``openred directory serve`` starts them), real SQLite files. The attacker
is a process of the directory's uid: it can reach the jail's socket while the directory runs,
and write the directory's database while it is stopped. Before the witness it could have any
checkpoint of a forged directory history signed, and the directory opened a log rolled back to
a backup without a word (it signs checkpoints for every grant, so what it had pushed to nodes
was gone from its own log, and only the nodes could tell).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crypto_jail.protocol import b64e
from openred.crypto.client import JailClient
from openred.crypto.identity import from_b64url
from openred.crypto.transparency import verify_consistent
from openred.directory.keys import create_keystore, start_jail
from openred.directory.service import DirectoryService
from openred.errors import JailRefused, TamperedLog
from openred.settings import DirectorySettings
from openred.store import merkle
from openred.store.checkpoint import Checkpoint, parse_checkpoint_body
from openred.store.sqlite import DATABASE_NAME
from tests.audit_tools.test_verify_tamper import execute
from tests.directory.conftest import TEST_JAIL_ENV, Directory, Node
from tests.directory.test_grant_checkpoints import PATH, delivered_checkpoint, registered_pair
from tests.servers import HOST, free_port

DB_FILES = (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm")


def entry_hashes(data_dir: Path) -> list[bytes]:
    with sqlite3.connect(data_dir / DATABASE_NAME) as conn:
        return [bytes(r[0]) for r in conn.execute("SELECT entry_hash FROM events ORDER BY seq")]


def body(origin: str, hashes: list[bytes]) -> bytes:
    return Checkpoint(origin=origin, size=len(hashes),
                      root_hash=merkle.root_from_entry_hashes(hashes)).body()


async def test_the_directory_jail_signs_no_fork_and_no_rollback_of_its_log(
    directory: Directory, make_node: Any,
) -> None:
    alice, bob = await registered_pair(make_node)
    assert (await alice.call("POST", PATH, {"target": bob.node_id})).status == 201
    first_note, first = delivered_checkpoint(alice.received[0], directory.key)
    origin = directory.service.origin
    log = entry_hashes(directory.settings.data_dir)
    # A process of the directory's uid, straight on the jail's socket.
    async with JailClient(directory.settings.socket_path, timeout=5) as attacker:
        size = first.size  # what the nodes were sent
        fork = [*log[:size - 1], b"\xee" * 32]  # another last entry
        rewritten = [*log[:1], b"\xee" * 32, *log[2:size], b"\xdd" * 32]  # grows, but forked
        for args in (
            {"body": b64e(body(origin, fork))},
            {"body": b64e(body(origin, log[:2]))},  # a rollback
            {"body": b64e(body(origin, rewritten)),
             "consistency_proof": [b64e(h) for h in merkle.consistency_proof(size, rewritten)]},
        ):
            with pytest.raises(JailRefused):
                await attacker.call("sign_checkpoint", args)
        # The coalesced path the service uses is held to the same rule, proof or none.
        items = [{"kind": "checkpoint", "data": b64e(body(origin, fork))},
                 {"kind": "checkpoint", "data": b64e(body(origin, rewritten)),
                  "consistency_proof": [b64e(h)
                                        for h in merkle.consistency_proof(size, rewritten)]}]
        results = (await attacker.call("sign_many", {"items": items}))["results"]
        assert [set(r) for r in results] == [{"error", "detail"}] * 2
        with pytest.raises(JailRefused):
            await attacker.sign("checkpoint", body(origin, fork))
        keeps, held = await attacker.witnessed(origin)
        assert keeps and held is not None and parse_checkpoint_body(held).size == size
    # The directory itself goes on: each checkpoint it pushes extends the witnessed one.
    assert (await bob.call("POST", PATH, {"target": alice.node_id})).status == 201
    second_note, second = delivered_checkpoint(bob.received[-1], directory.key)
    assert second.size > first.size
    reply = await bob.call("GET", f"/api/v3/directory/checkpoint?from={first.size}"
                                  f"&to={second.size}", signed=False)
    proof = [from_b64url(h) for h in reply.json()["consistency_proof"]]
    verify_consistent(first_note, first, second_note, second, proof)


def serve_cli(data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data_dir)],
        env=env, capture_output=True, text=True, timeout=120, check=False)


@contextlib.asynccontextmanager
async def directory_jail(settings: DirectorySettings) -> AsyncIterator[JailClient]:
    """The directory's jail, started as ``openred directory serve`` starts it."""
    supervisor, jail = await start_jail(settings)
    try:
        yield jail
    finally:
        await jail.close()
        await supervisor.stop()


def stopped_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      ) -> tuple[DirectorySettings, dict[str, str]]:
    """A directory's settings and keystore in ``tmp_path / "d"``, nothing started (its jail
    is :func:`directory_jail`'s); the environment its settings were loaded from."""
    for name, value in TEST_JAIL_ENV.items():
        monkeypatch.setenv(name, value)
    data_dir, port = tmp_path / "d", free_port()
    data_dir.mkdir()
    env = {"OPENRED_ALLOW_PRIVATE_URLS": "1", "OPENRED_PORT": str(port),
           "OPENRED_JAIL_SOCKET": f"/tmp/openred-test-{port}/j.sock"}
    settings = DirectorySettings.load(data_dir, environ=env)
    create_keystore(settings)
    return settings, env


async def grow(settings: DirectorySettings, jail: JailClient, nodes: int = 0) -> int:
    """Open the directory, register ``nodes`` nodes, close it; the log's size."""
    service = await DirectoryService.open(settings, jail)
    try:
        for _ in range(nodes):
            record = Node(None, api_url=f"http://{HOST}:9").record()  # type: ignore[arg-type]
            await service.register(record, signer=record.record.node_id)
        return service.store.head.size
    finally:
        await service.close()


def put_back(source: Path, data_dir: Path) -> None:
    for name in DB_FILES:
        (data_dir / name).unlink(missing_ok=True)
        if (source / name).exists():
            shutil.copy(source / name, data_dir / name)


async def test_a_directory_log_rolled_back_or_truncated_while_stopped_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, env = stopped_directory(tmp_path, monkeypatch)
    data_dir = settings.data_dir
    backup, grown = tmp_path / "backup", tmp_path / "grown"
    async with directory_jail(settings) as jail:
        old_size = await grow(settings, jail, 2)
        shutil.copytree(data_dir, backup)
        size = await grow(settings, jail, 2)
        assert size > old_size
        shutil.copytree(data_dir, grown)
        # Truncated (the last entries cut, the append-only triggers put back)...
        execute(data_dir / DATABASE_NAME,
                ("DELETE FROM events WHERE seq > ?", (old_size + 1,)),
                ("DELETE FROM checkpoints WHERE size > ?", (old_size + 1,)),
                ("UPDATE projection_positions SET position = ?", (old_size + 1,)))
        with pytest.raises(TamperedLog, match=f"signed a checkpoint of {size}"):
            await grow(settings, jail)
        # ...or deleted outright: no fresh genesis is written either.
        put_back(tmp_path / "nothing", data_dir)
        with pytest.raises(TamperedLog, match="truncated, rolled back or replaced"):
            await grow(settings, jail)
        assert entry_hashes(data_dir) == []
    # Rolled back to the backup: `openred directory serve` refuses, and says what to do if
    # that was on purpose.
    put_back(backup, data_dir)
    result = serve_cli(data_dir, {**os.environ, **TEST_JAIL_ENV, **env})
    assert result.returncode == 1
    assert f"signed a checkpoint of {size}" in result.stderr
    assert str(settings.jail_witness_path) in result.stderr
    assert "Traceback" not in result.stderr
    # On purpose: the witness moved aside, the backup opens (a normal restart with its jail).
    assert settings.jail_witness_path is not None
    settings.jail_witness_path.rename(tmp_path / "witness.old")
    async with directory_jail(settings) as jail:
        assert await grow(settings, jail, 1) == old_size + 1
        # The jail witnesses the restored log from then on: the grown log, which extended
        # the backup, is now a fork of it.
        put_back(grown, data_dir)
        with pytest.raises(TamperedLog, match="rewritten"):
            await grow(settings, jail)
