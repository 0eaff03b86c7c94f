"""The jail plugged into its users: the event store's Signer port and RFC 9421 request signing."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from audit_tools.verify import verify
from openred.crypto.client import JailClient, JailSigner
from openred.crypto.httpsig import HttpRequest, RequestVerifier, sign_request
from openred.errors import RequestSignatureError
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.sqlite import SQLiteEventStore
from tests.crypto_jail.test_server import JailProc, dev_keystore, short_dir, spawn_jail
from tests.store.history import peer_event, session_events


@pytest.fixture(scope="module")
def jail() -> Iterator[JailProc]:
    directory = short_dir()
    keystore, _ = dev_keystore(directory)
    proc = spawn_jail(keystore, directory / "s" / "j.sock")
    yield proc
    proc.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def client(jail: JailProc) -> AsyncIterator[JailClient]:
    async with JailClient(jail.socket_path, timeout=5) as c:
        yield c


async def test_a_log_signed_through_the_jail_verifies(client: JailClient, tmp_path: Path) -> None:
    signer = await JailSigner.create(client)
    store = await SQLiteEventStore.open(tmp_path, signer, registry=node_registry(),
                                        projections=node_projections(), checkpoint_every=10,
                                        checkpoint_interval=0)
    try:
        await store.append([peer_event(i) for i in range(3)])
        for i in range(3):
            await store.append(session_events(i, expire=i == 1))
    finally:
        await store.close()
    report = verify(tmp_path, key=signer.sign_key)
    assert report.ok, report.reason
    assert report.entries == 1 + 3 + 13
    assert report.checkpoints_checked >= 2


async def test_a_request_signed_through_the_jail_verifies(client: JailClient) -> None:
    keys = await client.public_keys()
    now = int(time.time())  # the jail signs only requests created close to its own clock

    async def sign_base(base: bytes) -> bytes:
        return await client.sign("http_signature_base", base)

    request = HttpRequest("POST", "https://dir.example/api/v3/nodes/heartbeat",
                          {"content-type": "application/json"}, b'{"node_id":"x"}')
    signed = await sign_request(request, keyid=str(keys.node_id), sign_base=sign_base,
                                now=now, nonce="n0nce-" + "a" * 16)
    verifier = RequestVerifier(lambda k: keys.sign_key if k == keys.node_id else None)
    assert verifier.verify(signed, now + 5) == keys.node_id
    with pytest.raises(RequestSignatureError, match="replay"):
        verifier.verify(signed, now + 6)
    tampered = HttpRequest(signed.method, signed.url, signed.headers, b'{"node_id":"y"}')
    with pytest.raises(RequestSignatureError):
        RequestVerifier(lambda k: keys.sign_key).verify(tampered, now)
