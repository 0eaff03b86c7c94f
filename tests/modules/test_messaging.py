"""The messaging module between two real nodes: send, receive, receipts, inbox, bodies at rest."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

import pytest
import rfc8785

from openred.crypto.identity import b64url, from_b64url
from openred.errors import DecryptionFailed, NodeRefused
from openred.modules.messaging import events as mev
from openred.modules.messaging.bodykey import BODY_KEY_FILE, KEY_LABEL, BodyKey
from openred.modules.messaging.service import MAX_TEXT, SEND, Messaging
from openred.node.p2p import dispatch
from tests.node.test_sessions import connected, serve_messaging
from tests.node.world import NOW, Directory, Node, p2p_to


async def test_a_message_is_delivered_received_and_receipted(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    inbox_b = serve_messaging(b)
    channel = await connected(directory, a, b)
    sender = Messaging(a.store, a.jail, a.reads)
    mid = os.urandom(16)
    receipt = await sender.send(channel, "héllo, B", message_id=mid, now=NOW + 3,
                                transport=p2p_to(b, NOW + 4))
    assert (receipt.message_id, receipt.received_at) == (b64url(mid), NOW + 4)
    [got] = await inbox_b.inbox()
    assert (got.message_id, got.peer, got.text) == (b64url(mid), a.id, "héllo, B")
    [out] = await sender.outbox()
    assert (out.text, out.peer) == ("héllo, B", b.id) and out.delivered_at is not None
    types_a = await a.types()
    assert types_a[-2:] == [mev.MESSAGE_SENT, mev.MESSAGE_DELIVERED]
    assert (await b.types())[-1] == mev.MESSAGE_RECEIVED


async def test_bodies_are_stored_only_encrypted_under_a_key_the_jail_wraps(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    channel = await connected(directory, a, b)
    secret = "the secret text " + b64url(os.urandom(8))
    await Messaging(a.store, a.jail, a.reads).send(
        channel, secret, message_id=os.urandom(16), now=NOW, transport=p2p_to(b, NOW))
    for node in (a, b):
        raw = (node.store.path).read_bytes() + node.store.path.with_name(
            node.store.path.name + "-wal").read_bytes()
        assert secret.encode() not in raw
    conn = sqlite3.connect(b.store.path)
    (mid, body), = conn.execute("SELECT message_id, body FROM inbox").fetchall()
    conn.close()
    # The data key is on disk only wrapped by the jail, and a body is bound to its message id:
    # moved to another message it does not open.
    key_file = b.store.path.parent / BODY_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = await b.jail.unwrap(KEY_LABEL, key_file.read_bytes())
    assert len(key) == 32 and key not in key_file.read_bytes()
    fresh = BodyKey(b.jail, key_file)
    with pytest.raises(DecryptionFailed):
        await fresh.open(b64url(os.urandom(16)), from_b64url(body))
    assert await fresh.open(mid, from_b64url(body)) == secret.encode()
    # Bodies of the earlier format, wrapped by the jail under message:<id>, still open.
    old = await b.jail.wrap(f"message:{mid}", b"old body")
    assert await fresh.open(mid, old) == b"old body"


async def test_a_message_sent_again_is_stored_once_and_receipted_again(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    inbox_b = serve_messaging(b)
    channel = await connected(directory, a, b)
    sender = Messaging(a.store, a.jail, a.reads)
    mid = os.urandom(16)
    for _ in range(2):  # e.g. the first answer was lost and the sender retried
        receipt = await sender.send(channel, "once", message_id=mid, now=NOW,
                                    transport=p2p_to(b, NOW))
        assert receipt.message_id == b64url(mid)
    assert len(await inbox_b.inbox()) == 1
    assert (await b.types()).count(mev.MESSAGE_RECEIVED) == 1


async def test_another_peer_cannot_take_over_a_message_id(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, c = nodes
    serve_messaging(b)
    from_a = await connected(directory, a, b)
    from_c = await connected(directory, c, b)
    mid = os.urandom(16)
    await Messaging(a.store, a.jail, a.reads).send(from_a, "from a", message_id=mid, now=NOW,
                                                   transport=p2p_to(b, NOW))
    with pytest.raises(NodeRefused, match="message-id-taken"):
        await Messaging(c.store, c.jail, c.reads).send(
            from_c, "from c", message_id=mid, now=NOW, transport=p2p_to(b, NOW))


def request(**kw: Any) -> bytes:
    base: dict[str, Any] = {"message_id": b64url(os.urandom(16)), "text": "x", "sent_at": NOW}
    return bytes(rfc8785.dumps({**base, **kw}))


@pytest.mark.parametrize(("plaintext", "status"), [
    (b"not json", 422),
    (b"[1]", 422),
    (request(extra=1), 422),
    (request(message_id="short"), 422),
    (request(sent_at="now"), 422),
    (request(sent_at=True), 422),
    (request(text=5), 422),
    (request(text=""), 413),
    (request(text="x" * (MAX_TEXT + 1)), 413),
], ids=["not-json", "array", "extra-field", "short-id", "sent_at-string", "sent_at-bool",
        "text-number", "empty-text", "long-text"])  # stable: the requests hold random ids
async def test_malformed_and_oversized_messages_are_refused_and_not_stored(
    nodes: tuple[Node, Node, Node], directory: Directory, plaintext: bytes, status: int
) -> None:
    a, b, _ = nodes
    inbox_b = serve_messaging(b)
    channel = await connected(directory, a, b)
    size = b.store.head.size
    envelope = channel.seal_request(SEND, plaintext)
    with pytest.raises(NodeRefused) as info:
        await dispatch(SEND, envelope.to_json(), actions=b.actions, keeper=b.keeper,
                       store=b.store, now=NOW)
    assert info.value.status == status
    assert b.store.head.size == size and await inbox_b.inbox() == []


async def test_a_sender_refuses_bad_text_before_anything_is_logged(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    channel = await connected(directory, a, b)
    size = a.store.head.size
    sender = Messaging(a.store, a.jail, a.reads)
    with pytest.raises(NodeRefused, match="message-too-large"):
        await sender.send(channel, "x" * (MAX_TEXT + 1), message_id=os.urandom(16), now=NOW,
                          transport=p2p_to(b, NOW))
    with pytest.raises(ValueError):
        await sender.send(channel, "x", message_id=b"short", now=NOW, transport=p2p_to(b, NOW))
    assert a.store.head.size == size


async def test_a_forged_receipt_is_refused(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    channel = await connected(directory, a, b)
    sender = Messaging(a.store, a.jail, a.reads)
    responder = b.keeper.cache.get(channel.session_id, NOW)
    assert responder is not None

    async def lying(route: Any, envelope: Any) -> Any:
        responder.open_request(route, envelope)
        body = rfc8785.dumps({"message_id": b64url(os.urandom(16)), "received_at": NOW})
        return responder.seal_answer(route, envelope.counter, bytes(body))

    with pytest.raises(NodeRefused, match="bad-receipt"):
        await sender.send(channel, "hi", message_id=os.urandom(16), now=NOW, transport=lying)
    assert mev.MESSAGE_DELIVERED not in await a.types()
    [out] = await sender.outbox()
    assert out.delivered_at is None


async def test_with_the_inbox_filter_built_a_resent_id_is_stored_once_and_not_taken_over(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, c = nodes
    inbox_b = serve_messaging(b)
    from_a = await connected(directory, a, b)
    from_c = await connected(directory, c, b)
    sender = Messaging(a.store, a.jail, a.reads)
    first = os.urandom(16)
    await sender.send(from_a, "first", message_id=first, now=NOW, transport=p2p_to(b, NOW))
    for _ in range(2000):  # built in a thread on the first lookup
        if inbox_b.index.ready:
            break
        await asyncio.sleep(0.005)
    assert inbox_b.index.ready
    mid = os.urandom(16)
    for _ in range(2):  # held before its append: found at once, no catch-up needed
        await sender.send(from_a, "once", message_id=mid, now=NOW, transport=p2p_to(b, NOW))
    for taken in (first, mid):
        with pytest.raises(NodeRefused, match="message-id-taken"):
            await Messaging(c.store, c.jail, c.reads).send(
                from_c, "from c", message_id=taken, now=NOW, transport=p2p_to(b, NOW))
    assert sorted(m.text for m in await inbox_b.inbox()) == ["first", "once"]
    assert (await b.types()).count(mev.MESSAGE_RECEIVED) == 2
    # A catch-up reads the real log's entries (as another process's would be read).
    inbox_b.index._catch_up_at = 0.0
    assert inbox_b.index.ready and inbox_b.index._position == b.store.head.size
