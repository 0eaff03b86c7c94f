"""The real directory introduces two real nodes, which then talk without it (all on loopback).

The directory app (its own jail and log) and two node apps run under Hypercorn; the nodes
register signed records, A asks for a connection, the directory pushes both halves (RFC 9421,
keyid ``directory``), each node verifies the grant against the directory's log — fetching a
consistency proof from the directory for the second grant — and A shakes hands with B and they
exchange messages; at 80 % of the sessions' life A renews them through new grants; then the
directory stops and the renewed session keeps working.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from openred.crypto.client import JailClient
from openred.directory.app import create_app as create_directory_app
from openred.directory.keys import create_keystore
from openred.directory.routing import EXTENSION as DIRECTORY
from openred.settings import DirectorySettings
from openred.web.client import HttpClient, Signer
from tests.node.test_app import Served, serve_node
from tests.node.world import JailPair
from tests.servers import HOST, free_port, serve_in_loop

LIFETIME = 60


def client_for(node: Served, jail: JailClient) -> HttpClient:
    async def sign_base(base: bytes) -> bytes:
        return bytes(await jail.sign("http_signature_base", base))

    return HttpClient(signer=Signer(str(node.id), sign_base), allow_private=True, attempts=1)


async def test_a_directory_introduces_two_nodes_that_keep_talking_without_it(
    jails: JailPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The directory's keystore with the fast KDF, which the jail accepts for tests only.
    monkeypatch.setenv("OPENRED_JAIL_KDF", "min")
    monkeypatch.setenv("OPENRED_JAIL_INSECURE_TEST_KDF", "1")
    port = free_port()
    settings = DirectorySettings.load(
        tmp_path / "directory", environ={"OPENRED_ALLOW_PRIVATE_URLS": "1"}, host=HOST,
        port=port, jail_socket=Path(f"/tmp/openred-test-{port}/j.sock"))
    settings.data_dir.mkdir()
    create_keystore(settings)
    directory_app = create_directory_app(settings)
    clients = [JailClient(p.socket_path, timeout=10) for p in jails.procs[:2]]
    async with contextlib.AsyncExitStack() as stack:
        directory_server = contextlib.AsyncExitStack()
        stack.push_async_callback(directory_server.aclose)
        dir_url = await directory_server.enter_async_context(serve_in_loop(directory_app, port))
        key = directory_app.extensions[DIRECTORY].key
        a = await stack.enter_async_context(
            serve_node("a", clients[0], tmp_path / "a", key, dir_url,
                       session_lifetime=LIFETIME))
        b = await stack.enter_async_context(
            serve_node("b", clients[1], tmp_path / "b", key, dir_url,
                       session_lifetime=LIFETIME))
        http = [client_for(a, clients[0]), client_for(b, clients[1])]
        for node, client in zip((a, b), http, strict=True):
            stack.push_async_callback(client.close)
            reply = await client.request("POST", f"{dir_url}/api/v3/nodes/register",
                                         json_body=node.record.to_wire(), signed=True)
            assert reply.status == 201, reply.body

        async def connect() -> str:
            reply = await http[0].request(
                "POST", f"{dir_url}/api/v3/tokens/request-connection",
                json_body={"target": str(b.id)}, signed=True)
            assert reply.status == 201, reply.body
            assert reply.json()["delivered"] == {"initiator": True, "responder": True}
            grant_id: str = reply.json()["grant_id"]
            return grant_id

        first = await a.services.connect(await connect())
        await a.services.send_message(first.session_id, "introduced by the directory")
        # A second grant: each node holds the first checkpoint and proves the new one extends it.
        second = await a.services.connect(await connect())
        await b.services.send_message(second.session_id, "on the second session")
        held = await b.services.book.directory_checkpoint()
        assert held is not None and held.origin == f"openred/{key.node_id}"
        # At 80 % of its life the initiator renews a session through a new grant.
        assert await a.services.lifecycle() == {"renewed": 0, "rotated": 0, "tokens": 0,
                                                "sessions": 0}
        a.services.clock = lambda: time.time() + LIFETIME * 4 // 5
        outcome = await a.services.lifecycle()
        assert outcome["renewed"] == 2  # both sessions were made at about the same time
        rows = {r.session_id: r for r in await a.services.book.sessions()}
        assert rows[first.session_id].state == "closed"
        renewed = rows[first.session_id].renewed_by
        assert renewed is not None and rows[renewed].state == "active"
        b_rows = {r.session_id: r for r in await b.services.book.sessions()}
        assert b_rows[first.session_id].state == "closed"  # the responder closed it too
        assert b_rows[first.session_id].renewed_by == renewed
        await a.services.send_message(renewed, "on the renewed session")
        first_texts = ["introduced by the directory", "on the renewed session"]
        a.services.clock = time.time
        # The directory goes away; the sessions do not need it.
        await directory_server.aclose()
        await a.services.send_message(renewed, "the directory is down")
        await b.services.send_message(renewed, "still here")
        assert sorted(m.text for m in await b.services.messaging.inbox()) == sorted(
            [*first_texts, "the directory is down"])
        assert sorted(m.text for m in await a.services.messaging.inbox()) == [
            "on the second session", "still here"]
    for client in clients:
        await client.close()

