"""The directory against a jail it did not start: the systemd setup, as real processes.

``deploy/systemd/openred-directory-jail.service`` runs the directory's jail as a user of its own,
with the keystore and the witness file in that user's directory and the passphrase as a
credential; the directory (``OPENRED_JAIL_SOCKET``, no keystore in its data directory) only
connects to the socket. Tests run without root, so here the jail has the test's uid, but it is
started apart from the directory (``crypto_jail serve --witness-file``, in a directory of its
own, its passphrase in a file the directory never reads) and stopped by the test, by its pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crypto_jail.keystore import create_keystore
from openred.crypto.client import JailClient
from openred.crypto.identity import SignKey
from openred.crypto.jail_owner import owner_path, process_start
from openred.directory.keys import jail_is_external, open_external_jail
from openred.errors import JailUnavailable, TamperedLog
from openred.settings import DirectorySettings
from tests.crypto_jail.test_server import JailProc, short_dir, spawn_jail
from tests.directory.conftest import Directory
from tests.directory.test_grant_checkpoints import PATH, delivered_checkpoint, registered_pair
from tests.directory.test_witness import grow, put_back
from tests.servers import ServerProcess, free_port, running_process

PASSPHRASE = b"the directory jail's passphrase"


@dataclass
class ServedDirectory(Directory):
    server: ServerProcess | None = None


class ExternalJail:
    """The directory's jail as the service manager runs it: its own directory, its own start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "state").mkdir(mode=0o700)
        self.keystore = root / "state" / "keystore.json"
        self.witness = root / "state" / "witness"
        self.socket = root / "run" / "jail.sock"
        self.passphrase = root / "passphrase"
        self.passphrase.write_bytes(PASSPHRASE)
        self.passphrase.chmod(0o600)
        create_keystore(self.keystore, PASSPHRASE, kdf_level="min", test_only=True)
        self.proc: JailProc | None = None

    def start(self) -> JailProc:
        self.proc = spawn_jail(self.keystore, self.socket, "--witness-file", str(self.witness),
                               "--passphrase-file", str(self.passphrase))
        return self.proc

    def running(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()  # by its pid (Popen), SIGTERM then SIGKILL


@pytest.fixture
def jail() -> Iterator[ExternalJail]:
    rig = ExternalJail(short_dir())
    try:
        yield rig
    finally:
        rig.stop()
        shutil.rmtree(rig.root, ignore_errors=True)


def directory_env(jail: ExternalJail | None, port: int) -> dict[str, str]:
    """The directory's environment: the socket (None: from ``.env``), and neither a passphrase
    nor a test KDF flag (it starts no jail)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRED_")}
    env |= {"OPENRED_PORT": str(port), "OPENRED_ALLOW_PRIVATE_URLS": "1"}
    return env if jail is None else {**env, "OPENRED_JAIL_SOCKET": str(jail.socket)}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openred.cli", "directory", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


async def public_key(socket: Path) -> SignKey:
    async with JailClient(socket, timeout=5) as client:
        return (await client.public_keys()).sign_key


@pytest.fixture
async def directory(tmp_path: Path, jail: ExternalJail) -> AsyncIterator[ServedDirectory]:
    """``openred directory init --jail-socket`` and ``serve`` against the running jail."""
    jail.start()
    data, port = tmp_path / "d", free_port()
    env = directory_env(None, port)  # init writes the socket to .env; the rest read it there
    init = cli("init", "--data-dir", str(data), "--port", str(port), "--allow-private-urls",
               "--jail-socket", str(jail.socket), env=env)
    assert init.returncode == 0, init.stderr
    key = SignKey.from_b64url(init.stdout.strip().splitlines()[-1])
    assert key == await public_key(jail.socket)
    # Nothing of the jail's is in the directory's data directory.
    assert {p.name for p in data.iterdir()} == {".env", "openred.db"}
    # A record beside the socket naming the jail as the orphan of a supervisor that is gone
    # (a process of the directory's uid could write one there in this one-uid test): the
    # directory never reads it, so it never stops the jail.
    assert jail.proc is not None
    owner_path(jail.socket).write_text(json.dumps({
        "jail_pid": jail.proc.pid, "jail_start": process_start(jail.proc.pid),
        "supervisor_pid": os.getpid(), "supervisor_start": 0}))
    argv = [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data)]
    with running_process(argv, port=port, env=env) as server:
        settings = DirectorySettings.load(data, environ=env)
        assert jail_is_external(settings)
        yield ServedDirectory(server.url, settings, key, None, server)  # type: ignore[arg-type]


async def test_a_directory_serves_and_signs_with_a_jail_it_did_not_start(
    directory: ServedDirectory, make_node: Any, jail: ExternalJail,
) -> None:
    alice, bob = await registered_pair(make_node)
    assert (await alice.call("POST", PATH, {"target": bob.node_id})).status == 201
    # Both halves carry the grant, its log entry, a signed checkpoint and the inclusion proof,
    # all signed by the external jail's key (what the nodes pinned).
    for push in (alice.received[0], bob.received[0]):
        delivered_checkpoint(push, directory.key)
    # The operator's commands beside the running server use the same jail.
    env = directory_env(None, directory.settings.port)
    data = str(directory.settings.data_dir)
    revoked = cli("revoke", "--data-dir", data, bob.node_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    listing = json.loads(cli("nodes", "--data-dir", data, "--json", env=env).stdout)
    assert {n["node_id"]: n["status"] for n in listing} == {
        alice.node_id: "active", bob.node_id: "revoked"}
    assert cli("key", "--data-dir", data, env=env).stdout.strip() == directory.key.b64url()
    # The directory's stop leaves the jail it did not start running (the fixture stops it).
    assert directory.server is not None
    assert directory.server.stop() == 0, directory.server.output()
    assert "Traceback" not in directory.server.output()
    assert jail.running() and await public_key(jail.socket) == directory.key


async def test_a_log_rolled_back_while_the_directory_was_stopped_is_refused(
    tmp_path: Path, jail: ExternalJail,
) -> None:
    jail.start()
    data, port = tmp_path / "d", free_port()
    data.mkdir(mode=0o700)
    env = directory_env(jail, port)
    settings = DirectorySettings.load(data, environ=env)
    client = await open_external_jail(settings, wait=5)
    try:
        old_size = await grow(settings, client, 1)
        shutil.copytree(data, tmp_path / "backup")
        size = await grow(settings, client, 2)
    finally:
        await client.close()
    # Rolled back while the directory was stopped; the jail keeps running throughout.
    put_back(tmp_path / "backup", data)
    result = subprocess.run(
        [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data)],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    error = " ".join(result.stderr.split())  # Rich wraps the line
    assert f"signed a checkpoint of {size}" in error
    # The advice names the jail's own witness file and that the jail is stopped first.
    assert str(jail.witness) in error and "stop the jail serving" in error, error
    assert "keystore.witness" not in error and "Traceback" not in error
    assert jail.running()
    # On purpose: the jail stopped, its witness moved aside, the jail started again.
    jail.stop()
    jail.witness.rename(tmp_path / "witness.old")
    jail.start()
    client = await open_external_jail(settings, wait=5)
    try:
        assert await grow(settings, client, 1) == old_size + 1
    finally:
        await client.close()
    with pytest.raises(TamperedLog):  # the witness then holds the restored history
        put_back(tmp_path / "backup", data)
        client = await open_external_jail(settings, wait=5)
        try:
            await grow(settings, client)
        finally:
            await client.close()


async def test_the_directory_waits_for_a_jail_that_is_not_up_yet(
    tmp_path: Path, jail: ExternalJail,
) -> None:
    settings = DirectorySettings.load(tmp_path, environ={"OPENRED_JAIL_SOCKET": str(jail.socket)})
    assert jail_is_external(settings)
    with pytest.raises(JailUnavailable, match=r"openred-directory-jail\.service") as refused:
        await open_external_jail(settings, wait=0.3)
    assert str(jail.socket) in str(refused.value)
    waiting = asyncio.create_task(open_external_jail(settings, wait=30))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await asyncio.to_thread(jail.start)
    client = await waiting
    try:
        assert (await client.public_keys()).sign_key == await public_key(jail.socket)
    finally:
        await client.close()

