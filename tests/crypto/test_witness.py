"""The jail witnesses its log: a rewritten or rolled-back log gets no checkpoint and is refused.

Real jails (``--witness-file``), real SQLite files. The attacker is a process of the node's uid
next to it: it can reach the jail's socket and have any entry hash signed (docs/threat-model.md)
and it can write the node's database while the node is stopped. Before the witness it could
forge a whole history, have every checkpoint of it signed, and ``audit_tools verify`` said the
forgery was intact; a log copied back from an old backup opened without a word.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from audit_tools.verify import verify
from openred.crypto.client import JailClient, JailSigner
from openred.crypto.identity import EntryHash, Signature
from openred.errors import JailRefused, TamperedLog
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import merkle
from openred.store.checkpoint import Checkpoint
from openred.store.sqlite import DATABASE_NAME, SQLiteEventStore
from tests.crypto_jail.test_server import JailProc, dev_keystore, short_dir, spawn_jail
from tests.store.history import peer_event, session_events


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def jail(workdir: Path) -> Iterator[JailProc]:
    keystore, _ = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file",
                      str(workdir / "keystore.witness"))
    yield proc
    proc.stop()


async def open_store(path: Path, signer: JailSigner) -> SQLiteEventStore:
    return await SQLiteEventStore.open(path, signer, registry=node_registry(),
                                       projections=node_projections(), checkpoint_every=10,
                                       checkpoint_interval=0)


async def write_history(path: Path, signer: JailSigner, sessions: range) -> int:
    store = await open_store(path, signer)
    try:
        for i in sessions:
            await store.append(session_events(i))
        await store.checkpoint()
        return store.head.size
    finally:
        await store.close()


def body(origin: str, hashes: list[bytes]) -> bytes:
    return Checkpoint(origin=origin, size=len(hashes),
                      root_hash=merkle.root_from_entry_hashes(hashes)).body()


async def test_the_jail_signs_only_checkpoints_that_extend_the_last_one(
    client: JailClient, jail: JailProc, workdir: Path,
) -> None:
    origin = f"openred/{(await client.public_keys()).node_id}"
    log = [bytes([i]) * 32 for i in range(1, 8)]
    await client.sign_checkpoint(body(origin, log[:3]))
    await client.sign_checkpoint(body(origin, log[:3]))  # the same one again
    # A fork: another third entry.
    forged = [*log[:2], b"\xee" * 32]
    with pytest.raises(JailRefused, match="another root at size 3"):
        await client.sign_checkpoint(body(origin, forged))
    # A rollback.
    with pytest.raises(JailRefused, match="a log never shrinks"):
        await client.sign_checkpoint(body(origin, log[:2]))
    # A bigger tree without a proof, or with a proof from the fork.
    with pytest.raises(JailRefused, match="no valid consistency proof"):
        await client.sign_checkpoint(body(origin, log[:5]))
    with pytest.raises(JailRefused, match="no valid consistency proof"):
        await client.sign_checkpoint(body(origin, forged + log[3:5]),
                                     merkle.consistency_proof(3, forged + log[3:5]))
    # The generic sign of kind checkpoint meets the same witness.
    with pytest.raises(JailRefused, match="no valid consistency proof"):
        await client.call("sign", {"kind": "checkpoint", "data": _b64(body(origin, log[:5]))})
    # The true extension, with its proof.
    await client.sign_checkpoint(body(origin, log[:5]), merkle.consistency_proof(3, log[:5]))
    assert (await client.witnessed(origin)) == (True, body(origin, log[:5]))
    # Remembered across a restart of the jail.
    jail.stop()
    again = spawn_jail(workdir / "keystore.json", workdir / "s" / "j2.sock", "--witness-file",
                       str(workdir / "keystore.witness"))
    try:
        async with JailClient(again.socket_path, timeout=5) as other:
            assert (await other.witnessed(origin)) == (True, body(origin, log[:5]))
            with pytest.raises(JailRefused, match="a log never shrinks"):
                await other.sign_checkpoint(body(origin, log[:3]))
    finally:
        again.stop()


class PlainSigner:
    """What the attacker's own code offers the store: the jail's signatures, no witness check."""

    def __init__(self, signer: JailSigner) -> None:
        self._signer = signer
        self.sign_key = signer.sign_key

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        return await self._signer.sign_entry_hashes(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return await self._signer.sign_checkpoint(note_body)


def _b64(data: bytes) -> str:
    from crypto_jail.protocol import b64e

    return b64e(data)


async def test_a_log_rolled_back_while_the_node_is_stopped_is_refused_at_open(
    client: JailClient, tmp_path: Path,
) -> None:
    signer = await JailSigner.create(client)
    node, backup = tmp_path / "node", tmp_path / "backup"
    node.mkdir()
    await write_history(node, signer, range(3))
    shutil.copytree(node, backup)
    size = await write_history(node, signer, range(3, 6))
    # The attacker puts the old (fully valid, checkpointed) log back while the node is stopped.
    for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"):
        (node / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy(backup / name, node / name)
    assert verify(node, key=signer.sign_key).ok  # on its own the old log is intact
    with pytest.raises(TamperedLog, match=f"signed a checkpoint of {size}"):
        await open_store(node, signer)
    # Deleting the log outright is the same rollback (to nothing): no fresh genesis is written.
    for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"):
        (node / name).unlink(missing_ok=True)
    with pytest.raises(TamperedLog, match="truncated, rolled back or replaced"):
        await open_store(node, signer)


async def test_a_history_forged_through_the_jail_gets_no_checkpoint_and_is_refused(
    client: JailClient, tmp_path: Path,
) -> None:
    signer = await JailSigner.create(client)
    node, forge = tmp_path / "node", tmp_path / "forge"
    node.mkdir()
    forge.mkdir()
    await write_history(node, signer, range(4))
    # Same key, another history (the jail signs any entry hash): the forger's store appends,
    # but every checkpoint it asks for is refused, so it keeps none of its own.
    store = await open_store(forge, PlainSigner(signer))  # type: ignore[arg-type]
    try:
        for i in range(100, 106):
            await store.append([*session_events(i), peer_event(i)])
        with pytest.raises(JailRefused, match=r"consistency proof|never shrinks|another root"):
            await store.checkpoint()
    finally:
        await store.close()
    shutil.copy(forge / DATABASE_NAME, node / DATABASE_NAME)
    for name in (f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"):
        (node / name).unlink(missing_ok=True)
    with pytest.raises(TamperedLog, match="rewritten"):
        await open_store(node, signer)


async def test_an_honest_log_grows_and_reopens_under_the_witness(
    client: JailClient, tmp_path: Path,
) -> None:
    signer = await JailSigner.create(client)
    first = await write_history(tmp_path, signer, range(2))
    second = await write_history(tmp_path, signer, range(2, 7))
    assert second > first
    report = verify(tmp_path, key=signer.sign_key)
    assert report.ok, report.reason
    assert report.checkpoints_checked >= 3


async def test_two_writers_of_one_log_keep_getting_checkpoints(
    client: JailClient, tmp_path: Path,
) -> None:
    # Each writer (a process of its own in production) proves from the checkpoint it last saw;
    # when the other writer had a newer one signed, the jail refuses that proof, and the writer
    # asks the jail which checkpoint it holds and proves from that one.
    signer = await JailSigner.create(client)
    first = await open_store(tmp_path, signer)
    second = await open_store(tmp_path, signer)
    try:
        for i in range(3):
            await first.append(session_events(2 * i))
            await first.checkpoint()
            await second.append(session_events(2 * i + 1))
            await second.checkpoint()
    finally:
        await first.close()
        await second.close()
    report = verify(tmp_path, key=signer.sign_key)
    assert report.ok, report.reason
