"""The client holds on to the jail it started with: another key on its socket is refused.

A jail restarted with another keystore (an operator's mistake, a keystore file replaced while
the node ran) or an impostor that binds the socket once the jail has died would otherwise be
signed through, wrapped to and handshaken with as if it were the node's jail: log entries
signed by a key the log does not name, session keys handed to a process holding no key of the
node's. Every connection the client opens after it learned the jail's keys asks them again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
from pathlib import Path

import nacl.signing
import pytest

from openred.crypto.client import JailClient, JailSupervisor
from openred.crypto.identity import EntryHash
from openred.crypto.jail_owner import orphaned_jail, owner_path
from openred.directory.keys import connect_jail
from openred.errors import ConfigurationError, JailIdentityChanged
from openred.settings import DirectorySettings
from tests.crypto_jail.test_server import dev_keystore, spawn_jail


def _entry() -> EntryHash:
    return EntryHash(hashlib.sha256(os.urandom(8)).digest())


async def test_a_jail_restarted_with_another_key_is_refused_until_the_right_one_is_back(
    workdir: Path,
) -> None:
    directory = workdir / "other"
    directory.mkdir(mode=0o700)
    (directory / "a").mkdir(mode=0o700)
    (directory / "b").mkdir(mode=0o700)
    keystore_a, public_a = dev_keystore(directory / "a")
    keystore_b, _ = dev_keystore(directory / "b")
    socket_path = directory / "s" / "j.sock"
    proc = spawn_jail(keystore_a, socket_path)
    client = JailClient(socket_path, timeout=5, reconnect_timeout=10)
    try:
        assert (await client.public_keys()).node_id == public_a["node_id"]
        proc.stop()
        proc = spawn_jail(keystore_b, socket_path)  # same socket, another node's keys
        entry = _entry()
        with pytest.raises(JailIdentityChanged, match="another"):
            await client.sign("entry_hash", entry)
        with pytest.raises(JailIdentityChanged):
            await client.wrap("session", b"k" * 32)  # nothing secret reaches that jail
        with pytest.raises(JailIdentityChanged):
            await asyncio.to_thread(client.sign_batch_blocking, [entry])
        with pytest.raises(JailIdentityChanged):
            await client.public_keys()
        proc.stop()
        proc = spawn_jail(keystore_a, socket_path)  # the right jail is back: served again
        signature = await client.sign("entry_hash", entry)
        verify = nacl.signing.VerifyKey(base64.urlsafe_b64decode(public_a["sign_key"] + "="))
        verify.verify(entry, bytes(signature))
        assert len(await asyncio.to_thread(client.sign_batch_blocking, [entry])) == 1
    finally:
        await client.close()
        proc.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_supervised_jail_restarted_on_a_replaced_keystore_is_refused(
    workdir: Path,
) -> None:
    directory = workdir / "replaced"
    directory.mkdir(mode=0o700)
    (directory / "b").mkdir(mode=0o700)
    keystore, public = dev_keystore(directory)
    other, _ = dev_keystore(directory / "b")
    supervisor = JailSupervisor(keystore, directory / "s" / "j.sock")
    await supervisor.start()
    client = JailClient(supervisor.socket_path, supervisor=supervisor, timeout=5)
    try:
        assert (await client.public_keys()).node_id == public["node_id"]
        os.replace(other, keystore)  # the file the supervisor restarts the jail on
        pid = supervisor.pid
        assert pid is not None
        os.kill(pid, 9)
        with pytest.raises(JailIdentityChanged):
            await client.sign("entry_hash", _entry())
    finally:
        await client.close()
        await supervisor.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_service_does_not_adopt_another_nodes_jail_found_on_its_socket(
    workdir: Path,
) -> None:
    """A service whose socket already answers adopts that jail (its own, left running). Another
    node's jail there — two data directories given one OPENRED_JAIL_SOCKET, or a process that
    bound the path first — would sign this node's new log as that node: refused, naming both."""
    directory = workdir / "adopt"
    (directory / "data").mkdir(mode=0o700, parents=True)
    (directory / "b").mkdir(mode=0o700)
    _, mine = dev_keystore(directory / "data")  # data/keystore.json: the service's own
    other, theirs = dev_keystore(directory / "b")
    settings = DirectorySettings.load(directory / "data", environ={})
    proc = spawn_jail(other, settings.socket_path)
    try:
        with pytest.raises(ConfigurationError) as refused:
            supervisor, client = await connect_jail(settings)
            await client.close()
        assert theirs["node_id"] in str(refused.value)
        assert mine["node_id"] in str(refused.value)
        assert str(settings.socket_path) in str(refused.value)
        proc.stop()
        proc = spawn_jail(settings.keystore_path, settings.socket_path)  # its own: adopted
        supervisor, client = await connect_jail(settings)
        try:
            assert supervisor is None
            assert (await client.public_keys()).node_id == mine["node_id"]
        finally:
            await client.close()
    finally:
        proc.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("planted", ["deep json", "fifo"])
async def test_a_planted_owner_record_is_no_record(workdir: Path, planted: str) -> None:
    """``<socket>.owner`` says which jail a dead service left running (to stop it). A record
    nested too deep raised RecursionError at the service's start; a FIFO there held the start
    forever. Either is no record: whatever serves the socket is connected to (and checked)."""
    directory = workdir / f"owner-{planted.replace(' ', '-')}"
    directory.mkdir(mode=0o700)
    socket_path = directory / "j.sock"
    record = owner_path(socket_path)
    if planted == "fifo":
        os.mkfifo(record, 0o600)
    else:
        record.write_text("[" * 100_000 + "]" * 100_000)
    reading = asyncio.create_task(asyncio.to_thread(orphaned_jail, socket_path))
    try:
        assert await asyncio.wait_for(asyncio.shield(reading), 5) is None
    finally:
        if planted == "fifo" and not reading.done():  # let a reader stuck in open() go
            fd = os.open(record, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            await reading
        shutil.rmtree(directory, ignore_errors=True)
