"""Checkpoints pushed with grants: signed from the proof tree, shared, served, restart-safe.

Grants carry checkpoints the service signs from its proof tree (kept in memory, not written to
the ``checkpoints`` table). These tests check what makes that safe: every such checkpoint is
consistent with the log as the *store* computes it (its own Merkle structures, not the tree),
GET /directory/checkpoint is never older than one a node was sent, a directory killed after
its pushes serves a stored checkpoint covering them when it comes back, and a proof tree that
disagrees with the log never gets a checkpoint signed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from quart import Quart, request

from openred.crypto.client import GrantToSeal
from openred.crypto.grants import Grant
from openred.crypto.identity import from_b64url
from openred.crypto.transparency import (
    InclusionProof,
    entry_from_wire,
    verify_consistent,
    verify_directory_checkpoint,
    verify_grant_delivery,
)
from openred.directory.keys import create_keystore, start_jail
from openred.directory.service import DirectoryService
from openred.errors import JailRefused, StoreUnavailable
from openred.settings import DirectorySettings
from tests.directory.conftest import TEST_JAIL_ENV, Directory, Node
from tests.servers import HOST, free_port, serve_in_loop

PATH = "/api/v3/tokens/request-connection"


def delivered_checkpoint(push: dict[str, Any], directory_key: Any) -> tuple[bytes, Any]:
    """Verify a push as a node does (entry, checkpoint, inclusion); the note and checkpoint."""
    note = push["checkpoint"].encode()
    checkpoint = verify_grant_delivery(
        grant=Grant.from_dict(push["grant"]), entry=entry_from_wire(push["entry"]),
        checkpoint_note=note, inclusion_proof=InclusionProof.from_wire(push["inclusion_proof"]),
        directory_key=directory_key)
    return note, checkpoint


async def registered_pair(make_node: Any) -> tuple[Node, Node]:
    """Two nodes registered with the directory (Alice and Bob)."""
    alice, bob = await make_node(), await make_node()
    assert (await alice.register()).status == 201
    assert (await bob.register()).status == 201
    return alice, bob


async def test_concurrent_grants_carry_checkpoints_consistent_with_the_stores_log(
    directory: Directory, make_node: Any,
) -> None:
    nodes = [await make_node() for _ in range(6)]
    for node in nodes:
        assert (await node.register()).status == 201
    pairs = [(nodes[i % 3], nodes[3 + (i * 2) % 3]) for i in range(12)]
    replies = await asyncio.gather(*(a.call("POST", PATH, {"target": b.node_id})
                                     for a, b in pairs))
    assert [r.status for r in replies] == [201] * len(pairs)
    pushed = [delivered_checkpoint(push, directory.key)
              for node in nodes for push in node.received]
    assert len(pushed) == 2 * len(pairs)
    # The store signs its own checkpoint of the head; its consistency proofs come from its own
    # Merkle structures, so they check the tree-signed checkpoints independently of the tree.
    store = directory.service.store
    head_note = await store.checkpoint()
    head = verify_directory_checkpoint(head_note, directory.key)
    for note, checkpoint in pushed:
        size, proof = await store.consistency_proof(checkpoint.size)
        assert size == head.size
        verify_consistent(note, checkpoint, head_note, head,
                          None if checkpoint.size == head.size else proof)
    # The directory's checkpoint answer is at least as new as anything it pushed, and proves
    # the largest pushed one a prefix of it.
    largest_note, largest = max(pushed, key=lambda p: p[1].size)
    reply = await nodes[0].call("GET", f"/api/v3/directory/checkpoint?from={largest.size}",
                                signed=False)
    assert reply.status == 200
    served_note = reply.json()["checkpoint"].encode()
    served = verify_directory_checkpoint(served_note, directory.key)
    assert served.size >= largest.size
    proof = [from_b64url(h) for h in reply.json()["consistency_proof"]]
    verify_consistent(largest_note, largest, served_note, served,
                      None if served.size == largest.size else proof)
    # ?from=&to= proves any two pushed checkpoints against each other, whatever the newest.
    smallest_note, smallest = min(pushed, key=lambda p: p[1].size)
    if smallest.size < largest.size:
        reply = await nodes[0].call(
            "GET", f"/api/v3/directory/checkpoint?from={smallest.size}&to={largest.size}",
            signed=False)
        assert reply.status == 200
        proof = [from_b64url(h) for h in reply.json()["consistency_proof"]]
        verify_consistent(smallest_note, smallest, largest_note, largest, proof)


async def test_the_checkpoint_answer_includes_the_newest_pushed_checkpoint(
    directory: Directory, make_node: Any,
) -> None:
    alice, bob = await registered_pair(make_node)
    assert (await alice.call("POST", PATH, {"target": bob.node_id})).status == 201
    note, pushed = delivered_checkpoint(alice.received[0], directory.key)
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        stored = max(r[0] for r in conn.execute("SELECT size FROM checkpoints"))
    # Pushed checkpoints are not stored (the store stores its own every 100 entries)...
    assert stored < pushed.size
    # ...yet the answer is never older than what a node was sent.
    reply = await alice.call("GET", "/api/v3/directory/checkpoint", signed=False)
    assert reply.json()["checkpoint"].encode() == note


async def test_a_proof_tree_that_disagrees_with_the_log_never_gets_a_checkpoint_signed(
    directory: Directory, make_node: Any,
) -> None:
    alice, bob = await registered_pair(make_node)
    service = directory.service
    # A wrong leaf where the next entry will go: the tree's size will match the log's, its
    # root will not.
    service.tree.append(bytes(32))
    reply = await alice.call("POST", PATH, {"target": bob.node_id})
    assert reply.status == 503
    assert reply.json()["type"] == "urn:openred:problem:store-unavailable"
    assert alice.received == [] and bob.received == []
    # The only checkpoint signed is the store's own (stored), of the real log.
    note = service._note
    assert note is not None
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
        stored = conn.execute("SELECT note FROM checkpoints WHERE size = ?",
                              (note.size,)).fetchone()
    assert stored is not None and bytes(stored[0]) == note.text
    assert types[-2:] == ["ConnectionGranted", "ConnectionGrantFailed"]


# A directory process that pushes grants and dies without closing anything (no final
# checkpoint): what a crash right after the pushes leaves behind.
_CRASHING_DIRECTORY = """
import asyncio, json, os, sys
from pathlib import Path
from openred.crypto.records import SignedNodeRecord
from openred.directory.keys import start_jail
from openred.directory.service import DirectoryService
from openred.settings import DirectorySettings

async def main():
    args = json.loads(sys.argv[1])
    settings = DirectorySettings.load(args["data_dir"], environ=args["env"], port=args["port"],
                                      jail_socket=Path(args["socket"]))
    supervisor, jail = await start_jail(settings)
    service = await DirectoryService.open(settings, jail)
    a, b = (SignedNodeRecord.from_wire(w) for w in args["records"])
    for r in (a, b):
        await service.register(r, signer=r.record.node_id)
    for _ in range(3):
        await service.request_connection(signer=a.record.node_id, target=b.record.node_id)
    sys.stdout.flush()
    os._exit(0)

asyncio.run(main())
"""


def _recording_receiver(received: list[dict[str, Any]]) -> Quart:
    """A receiver that keeps every push (the test verifies them once the key is known)."""
    app = Quart("recorder")

    @app.post("/api/v3/tokens/receive")
    async def receive() -> dict[str, str]:
        received.append(await request.get_json())
        return {"status": "ok"}

    return app


async def test_a_directory_killed_after_its_pushes_serves_a_checkpoint_covering_them(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    for name, value in TEST_JAIL_ENV.items():
        monkeypatch.setenv(name, value)
    data_dir, port = tmp_path / "directory", free_port()
    data_dir.mkdir()
    env = {"OPENRED_ALLOW_PRIVATE_URLS": "1", "OPENRED_PUSH_ATTEMPTS": "1"}
    socket = f"/tmp/openred-test-{port}/j.sock"
    settings = DirectorySettings.load(data_dir, environ=env, host=HOST, port=port,
                                      jail_socket=Path(socket))
    create_keystore(settings)
    received: list[dict[str, Any]] = []
    ports = [free_port(), free_port()]
    nodes = [Node(None, api_url=f"http://{HOST}:{p}") for p in ports]  # type: ignore[arg-type]
    async with serve_in_loop(_recording_receiver(received), ports[0]), \
            serve_in_loop(_recording_receiver(received), ports[1]):
        args = {"data_dir": str(data_dir), "env": env, "port": port, "socket": socket,
                "records": [n.record().to_wire() for n in nodes]}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CRASHING_DIRECTORY, json.dumps(args))
        assert await asyncio.wait_for(proc.wait(), 120) == 0
    assert len(received) == 6
    supervisor, jail = await start_jail(settings)
    try:
        service = await DirectoryService.open(settings, jail)
        try:
            pushed = [delivered_checkpoint(push, service.key) for push in received]
            largest = max(c.size for _, c in pushed)
            answer = await service.checkpoint(None)
            served_note = answer["checkpoint"].encode()
            served = verify_directory_checkpoint(served_note, service.key)
            assert served.size >= largest
            # Stored in the table (nothing of it lives only in memory).
            assert await service.store.latest_checkpoint() == served_note
            for note, checkpoint in pushed:
                answer = await service.checkpoint(checkpoint.size)
                proof = [from_b64url(h) for h in answer["consistency_proof"]]
                verify_consistent(note, checkpoint, served_note, served,
                                  None if served.size == checkpoint.size else proof)
        finally:
            await service.close()
    finally:
        await jail.close()
        await supervisor.stop()


async def test_a_grant_the_jail_will_not_sign_is_logged_as_failed_and_never_pushed(
    directory: Directory, make_node: Any,
) -> None:
    """The grant is signed while its entry is appended: a refusal comes after the entry."""
    alice, bob = await registered_pair(make_node)
    signs = directory.service._signs
    real = signs.sign_grant

    async def refusing(grant: GrantToSeal) -> Any:
        await asyncio.sleep(0.05)  # refused after the entry was appended
        raise JailRefused("refused", "not today")

    signs.sign_grant = refusing  # type: ignore[method-assign]
    reply = await alice.call("POST", PATH, {"target": bob.node_id})
    assert reply.status == 503
    assert reply.json()["type"] == "urn:openred:problem:signer-unavailable"
    assert alice.received == [] and bob.received == []
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        rows = conn.execute("SELECT type, payload FROM events ORDER BY seq").fetchall()
    assert [r[0] for r in rows[-2:]] == ["ConnectionGranted", "ConnectionGrantFailed"]
    failed = json.loads(rows[-1][1])
    assert failed["reason"].startswith("not signed: refused: not today")
    assert failed["grant_id"] == json.loads(rows[-2][1])["grant_id"]
    # The jail signing again, the next grant goes through.
    signs.sign_grant = real  # type: ignore[method-assign]
    assert (await alice.call("POST", PATH, {"target": bob.node_id})).status == 201
    assert len(alice.received) == len(bob.received) == 1


async def test_a_grant_whose_entry_cannot_be_appended_is_not_signed_for_anyone(
    directory: Directory, make_node: Any,
) -> None:
    """The signing that ran beside a failed append is dropped: nothing pushed, nothing logged."""
    alice, bob = await registered_pair(make_node)
    service = directory.service
    real_append = service.append

    async def failing(events: Any) -> Any:
        if events[0].type == "ConnectionGranted":
            raise StoreUnavailable("disk full")
        return await real_append(events)

    service.append = failing  # type: ignore[method-assign]
    before = await service.store.read()
    reply = await alice.call("POST", PATH, {"target": bob.node_id})
    assert reply.status == 503
    assert alice.received == [] and bob.received == []
    await asyncio.sleep(0.1)  # the signing it started has ended
    assert await service.store.read() == before
