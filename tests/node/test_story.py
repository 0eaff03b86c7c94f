"""A whole exchange between two nodes, a restart of both, and both logs verified by audit_tools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audit_tools.verify import verify
from openred.errors import NodeRefused
from openred.modules.messaging.service import Messaging
from openred.node import events as ev
from openred.node.tokens import TokenStatus
from tests.node.test_sessions import serve_messaging
from tests.node.world import (
    NOW,
    Directory,
    JailPair,
    Node,
    open_node,
    p2p_to,
    transport_to,
)


async def reopen(node: Node, jails: JailPair, index: int, data: Path,
                 directory: Directory) -> Node:
    """Close the node's store and read models and open them again: a restarted process."""
    await node.close()
    return await open_node(node.name, jails.procs[index].socket_path, data, directory)


async def test_two_nodes_talk_restart_resume_and_their_logs_verify(
    nodes: tuple[Node, Node, Node], directory: Directory, jails: JailPair, tmp_path: Path,
) -> None:
    a, b, _ = nodes
    grant, for_a, for_b = await directory.pair(a, b)
    await a.tokens.receive(for_a, NOW)
    await b.tokens.receive(for_b, NOW)
    sent_handshake: list[tuple[str, bytes]] = []
    inner = transport_to(b, NOW)

    async def recording(api_url: str, grant_id: str, message: bytes,  # type: ignore[no-untyped-def]
                        renews: str | None = None):
        sent_handshake.append((grant_id, message))
        return await inner(api_url, grant_id, message, renews)

    channel_a = await a.handshakes.connect(grant.grant_id, recording, NOW)
    serve_messaging(a)
    serve_messaging(b)
    # Both directions: the responder sends requests on the same session too.
    await Messaging(a.store, a.jail, a.reads).send(
        channel_a, "hello B", message_id=os.urandom(16), now=NOW, transport=p2p_to(b, NOW))
    channel_b = await b.keeper.channel(channel_a.session_id, NOW)
    await Messaging(b.store, b.jail, b.reads).send(
        channel_b, "hello A", message_id=os.urandom(16), now=NOW, transport=p2p_to(a, NOW))

    # Both processes restart: stores and read models reopened, nothing kept in memory.
    a = await reopen(a, jails, 0, tmp_path / "a", directory)
    b = await reopen(b, jails, 1, tmp_path / "b", directory)
    try:
        serve_messaging(a)
        serve_messaging(b)
        # The grant stays used across the restart: a replayed message 1 is refused.
        with pytest.raises(NodeRefused, match="grant-used"):
            await b.handshakes.respond(*sent_handshake[0], NOW + 1)
        assert (await a.book.token_state(grant.grant_id)).status is TokenStatus.CONSUMED
        # The session resumes from the log on both sides, each way.
        resumed_a = await a.keeper.channel(channel_a.session_id, NOW + 2)
        await Messaging(a.store, a.jail, a.reads).send(
            resumed_a, "again, B", message_id=os.urandom(16), now=NOW + 2,
            transport=p2p_to(b, NOW + 2))
        resumed_b = await b.keeper.channel(channel_a.session_id, NOW + 3)
        await Messaging(b.store, b.jail, b.reads).send(
            resumed_b, "again, A", message_id=os.urandom(16), now=NOW + 3,
            transport=p2p_to(a, NOW + 3))
        assert sorted(m.text for m in await Messaging(b.store, b.jail, b.reads).inbox()) == [
            "again, B", "hello B"]
        assert sorted(m.text for m in await Messaging(a.store, a.jail, a.reads).inbox()) == [
            "again, A", "hello A"]
        # The lifecycle: the session expires at the end of its life, on both sides.
        end = NOW + 86400
        assert await a.keeper.expire(end - 1) == []
        assert await a.keeper.expire(end) == [channel_a.session_id]
        assert await b.keeper.expire(end) == [channel_a.session_id]
        with pytest.raises(NodeRefused, match="session-expired"):
            await a.keeper.channel(channel_a.session_id, end)
        assert ev.SESSION_EXPIRED in await b.types()
    finally:
        nodes_now = (a, b)
        for node in nodes_now:
            await node.close()
    # Every entry, signature, checkpoint and projection (the modules' too) verifies.
    for node, name in ((a, "a"), (b, "b")):
        report = verify(tmp_path / name, key=node.keys.sign_key)
        assert report.ok, report.reason
        assert any(s.number == 7 and s.status == "ok" for s in report.steps)
