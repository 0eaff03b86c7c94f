"""Session lifecycle decisions, the validated-session cache, and sessions that survive restarts."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from openred.crypto.identity import b64url
from openred.errors import NodeRefused
from openred.modules.messaging import MESSAGING_SERVICE, MessagingModule
from openred.modules.messaging.service import SEND, Messaging
from openred.node import events as ev
from openred.node.envelope import Envelope, SessionChannel
from openred.node.p2p import P2P_ACTIONS, Outcome, RequestContext, dispatch
from openred.node.sessions import (
    SessionCache,
    SessionView,
    decide_tick,
    decide_use,
    renewal_due,
)
from tests.node.test_envelope import pair
from tests.node.world import NOW, Directory, Node, p2p_to, transport_to


def view(**kw: Any) -> SessionView:
    base: dict[str, Any] = {"session_id": "s", "state": "active", "expires_at": NOW + 1000,
                            "renew_at": NOW + 800, "renewed_by": None}
    return SessionView(**{**base, **kw})


def test_decide_use_refuses_unknown_expired_and_closed_sessions() -> None:
    assert decide_use(view(), NOW) is None
    assert decide_use(None, NOW).status == 404  # type: ignore[union-attr]
    assert decide_use(view(), NOW + 1000).status == 410  # type: ignore[union-attr]
    assert decide_use(view(state="expired"), NOW).status == 410  # type: ignore[union-attr]
    assert decide_use(view(state="closed"), NOW).status == 410  # type: ignore[union-attr]


def test_a_session_expires_at_the_end_of_its_life_once() -> None:
    assert decide_tick(view(), NOW + 999) == []
    [event] = decide_tick(view(), NOW + 1000)
    assert event.type == ev.SESSION_EXPIRED and event.payload == {"session_id": "s"}
    assert decide_tick(view(state="expired"), NOW + 2000) == []


def test_renewal_is_due_from_80_percent_of_life_until_expiry() -> None:
    assert not renewal_due(view(), NOW + 799)
    assert renewal_due(view(), NOW + 800)
    assert renewal_due(view(), NOW + 999)
    assert not renewal_due(view(), NOW + 1000)
    assert not renewal_due(view(renewed_by="t"), NOW + 900)
    assert not renewal_due(view(state="closed"), NOW + 900)
    assert not renewal_due(view(renew_at=None), NOW + 900)


def test_the_cache_is_lru_and_forgets_after_its_ttl_or_the_sessions_expiry() -> None:
    clock = [0.0]
    cache = SessionCache(max_size=2, ttl=10, clock=lambda: clock[0])
    channels = [pair()[0] for _ in range(3)]
    cache.put(channels[0], NOW + 100)
    cache.put(channels[1], NOW + 100)
    assert cache.get(channels[0].session_id, NOW) is channels[0]  # now most recent
    cache.put(channels[2], NOW + 100)
    assert cache.get(channels[1].session_id, NOW) is None  # least recently used went
    assert cache.get(channels[0].session_id, NOW + 100) is None  # the session expired
    clock[0] = 10.0
    assert cache.get(channels[2].session_id, NOW) is None  # past the TTL
    # Kept for its keeper to take back once it checked the session again (never a copy).
    assert cache.revalidate(channels[2].session_id, NOW) is channels[2]
    assert cache.get(channels[2].session_id, NOW) is channels[2]  # for another TTL
    assert cache.revalidate(channels[2].session_id, NOW + 100) is None  # the session expired
    assert cache.get(channels[2].session_id, NOW + 100) is None
    assert len(cache) == 0
    with pytest.raises(ValueError):
        SessionCache(max_size=0)


# -- sessions over real jails and logs --

def serve_messaging(node: Node) -> Messaging:
    service = Messaging(node.store, node.jail, node.reads)
    app = SimpleNamespace(extensions={MESSAGING_SERVICE: service, P2P_ACTIONS: node.actions})
    MessagingModule().register_routes(app)
    return service


async def connected(directory: Directory, a: Node, b: Node) -> SessionChannel:
    grant, for_a, for_b = await directory.pair(a, b)
    await a.tokens.receive(for_a, NOW)
    await b.tokens.receive(for_b, NOW)
    return await a.handshakes.connect(grant.grant_id, transport_to(b, NOW), NOW)


async def refused(coro: Any, status: int, reason: str) -> None:
    with pytest.raises(NodeRefused) as info:
        await coro
    assert (info.value.status, info.value.reason) == (status, reason)


async def test_requests_on_the_wire_are_checked_before_any_handler_runs(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    channel = await connected(directory, a, b)
    request = channel.seal_request(SEND, b'{"not":"a message"}')
    body = request.to_json()

    def call(route: Any = SEND, payload: Any = body, now: int = NOW) -> Any:
        return dispatch(route, payload, actions=b.actions, keeper=b.keeper, store=b.store,
                        now=now)

    size = b.store.head.size
    await refused(call(payload={**body, "counter": "1"}), 400, "malformed-envelope")
    await refused(call(payload={**body, "session_id": b64url(os.urandom(16))}), 404,
                  "unknown-session")
    from openred.node.envelope import Route

    await refused(call(route=Route("messaging", "read")), 404, "unknown-route")
    flipped = bytes([request.ciphertext[0] ^ 1]) + request.ciphertext[1:]  # always differs
    tampered = {**body, "ciphertext": b64url(flipped)}
    await refused(call(payload=tampered), 401, "message-rejected")
    await refused(call(now=NOW + 86400), 410, "session-expired")
    # The handler refuses the content (not a message) after authentication: 422.
    await refused(call(), 422, "invalid-message")
    # ...and that counter was used: the same envelope again is a replay.
    await refused(call(), 409, "replayed-message")
    # Nothing of this reached the log. The expiry check evicted the channel from the cache;
    # the next call takes it back while anything still holds it (a traceback, here) or else
    # restores it, and a restore saves the session's state: at most that one entry.
    assert [e.type for e in await b.store.read(size + 1)] in ([], [ev.SESSION_STATE_SAVED])


async def test_a_restarted_responder_resumes_and_accepts_nothing_twice(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    sender = Messaging(a.store, a.jail, a.reads)
    channel = await connected(directory, a, b)
    sent: list[Envelope] = []
    for text in ("one", "two"):
        await sender.send(channel, text, message_id=os.urandom(16), now=NOW,
                          transport=p2p_to(b, NOW, sent))
    b.restart_sessions()  # a new process: nothing in memory, state only in the log
    for envelope in sent:  # replays of accepted requests are refused after the restart
        await refused(dispatch(SEND, envelope.to_json(), actions=b.actions, keeper=b.keeper,
                               store=b.store, now=NOW), 409, "replayed-message")
    receipt = await sender.send(channel, "three", message_id=os.urandom(16), now=NOW + 5,
                                transport=p2p_to(b, NOW + 5))
    assert receipt.received_at == NOW + 5
    inbox = await Messaging(b.store, b.jail, b.reads).inbox()
    assert sorted(m.text for m in inbox) == ["one", "three", "two"]
    saved = [e for e in await b.store.read() if e.type == ev.SESSION_STATE_SAVED]
    assert len(saved) == 1  # the restored state was saved before it sent anything


async def test_a_restarted_sender_never_reuses_a_nonce(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    sender = Messaging(a.store, a.jail, a.reads)
    channel = await connected(directory, a, b)
    sent: list[Envelope] = []
    await sender.send(channel, "before", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW, sent))
    used = {(e.counter >> 32, e.counter) for e in sent}
    for _restart in range(3):
        a.restart_sessions()
        resumed = await a.keeper.channel(channel.session_id, NOW + 1)
        assert resumed is not channel
        await sender.send(resumed, "after", message_id=os.urandom(16), now=NOW + 1,
                          transport=p2p_to(b, NOW + 1, sent))
        fresh = (sent[-1].counter >> 32, sent[-1].counter)
        assert fresh not in used and fresh[0] > max(e for e, _ in used)
        used.add(fresh)
    assert len(await Messaging(b.store, b.jail, b.reads).inbox()) == 4


async def test_the_cache_keeps_the_message_path_off_the_jail(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    calls: list[str] = []

    async def echo(ctx: RequestContext, plaintext: bytes) -> Outcome:
        return Outcome(plaintext)

    b.actions.add("test", "echo", echo)
    channel = await connected(directory, a, b)
    original = b.jail.call

    async def counting(op: str, args: dict[str, Any], *, retry: bool = True) -> Any:
        calls.append(op)
        return await original(op, args, retry=retry)

    b.jail.call = counting  # type: ignore[method-assign]
    from openred.node.envelope import Route

    route = Route("test", "echo")
    for i in range(20):
        request = channel.seal_request(route, b"%d" % i)
        answer = await dispatch(route, request.to_json(), actions=b.actions, keeper=b.keeper,
                                store=b.store, now=NOW)
        assert channel.open_answer(route, request.counter, answer) == b"%d" % i
    assert calls == []


async def test_epoch_rotation_is_saved_at_once(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    channel = await connected(directory, a, b)
    assert await a.keeper.rotate(channel) == 1
    a.restart_sessions()
    resumed = await a.keeper.channel(channel.session_id, NOW)
    assert resumed.cipher.send_epoch == 2  # restored past the rotated epoch, never into it
    receipt = await Messaging(a.store, a.jail, a.reads).send(
        resumed, "hi", message_id=os.urandom(16), now=NOW, transport=p2p_to(b, NOW))
    assert receipt.received_at == NOW


async def test_an_expired_session_cannot_be_restored(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    channel = await connected(directory, a, b)
    [row] = await a.book.sessions()
    for event in decide_tick(SessionView.of(row), row.expires_at):
        await a.store.append_one(event)
    a.restart_sessions()
    await refused(a.keeper.channel(channel.session_id, NOW), 410, "session-expired")
    [row] = await a.book.sessions()
    assert row.state == "expired"


async def test_a_renewal_closes_the_old_session(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    old = await connected(directory, a, b)
    grant, for_a, for_b = await directory.pair(a, b, issued_at=NOW + 70000)
    await a.tokens.receive(for_a, NOW + 70000)
    await b.tokens.receive(for_b, NOW + 70000)
    new = await a.handshakes.connect(grant.grant_id, transport_to(b, NOW + 70000),
                                     NOW + 70000, renews=old.session_id)
    for node in (a, b):  # both sides close the old session
        rows = {r.session_id: r for r in await node.book.sessions()}
        assert rows[old.session_id].state == "closed"
        assert rows[old.session_id].renewed_by == new.session_id
        assert rows[new.session_id].state == "active"
        assert ev.SESSION_RENEWED in await node.types()
    await refused(b.keeper.channel(old.session_id, NOW + 70000), 410, "session-expired")


async def test_a_renewal_must_name_a_session_with_that_peer_that_is_due(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, c = nodes
    old = await connected(directory, a, b)
    other = await connected(directory, c, b)  # B's session with another peer
    for renews, now in ((old.session_id, NOW + 100), (other.session_id, NOW + 70000),
                        (b64url(os.urandom(16)), NOW + 70000)):
        grant, for_a, for_b = await directory.pair(a, b, issued_at=now)
        await a.tokens.receive(for_a, now)
        await b.tokens.receive(for_b, now)
        with pytest.raises(NodeRefused) as info:
            await a.handshakes.connect(grant.grant_id, transport_to(b, now), now, renews=renews)
        assert (info.value.status, info.value.reason) == (422, "invalid-renewal")
    rows = {r.session_id: r.state for r in await b.book.sessions()}
    assert rows[old.session_id] == rows[other.session_id] == "active"
    # A holds no session `other` or the random one: it refuses those itself, B sees only one.
    assert (await b.types()).count(ev.HANDSHAKE_REJECTED) == 1


async def test_renews_swapped_on_the_path_for_another_due_session_is_refused(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    """Two sessions between A and B, both due: someone on the path cannot make A's renewal of
    one close the other — neither by renaming the proof's session nor by replaying a proof
    sealed on the other session for another handshake."""
    a, b, _ = nodes
    first = await connected(directory, a, b)
    second = await connected(directory, a, b)
    now = NOW + 70000
    captured: list[Envelope] = []

    async def keep(api_url: str, gid: str, message: bytes, renews: Any) -> Any:
        captured.append(renews)
        raise NodeRefused(502, "peer-unreachable", "the test keeps the proof")

    grant, for_a, for_b = await directory.pair(a, b, issued_at=now)
    await a.tokens.receive(for_a, now)
    await b.tokens.receive(for_b, now)
    with pytest.raises(NodeRefused):  # a proof sealed on `second` for another handshake
        await a.handshakes.connect(grant.grant_id, keep, now, renews=second.session_id)
    [second_proof] = captured
    inner = transport_to(b, now)

    async def renamed(api_url: str, gid: str, message: bytes, renews: Any) -> Any:
        swapped = Envelope(second.session_id, renews.counter, renews.ciphertext)
        return await inner(api_url, gid, message, swapped)

    async def replayed(api_url: str, gid: str, message: bytes, renews: Any) -> Any:
        return await inner(api_url, gid, message, second_proof)

    for swap in (renamed, replayed):
        grant, for_a, for_b = await directory.pair(a, b, issued_at=now)
        await a.tokens.receive(for_a, now)
        await b.tokens.receive(for_b, now)
        with pytest.raises(NodeRefused) as info:
            await a.handshakes.connect(grant.grant_id, swap, now, renews=first.session_id)
        assert (info.value.status, info.value.reason) == (422, "invalid-renewal")
    for node in (a, b):
        rows = {r.session_id: r for r in await node.book.sessions()}
        assert rows[first.session_id].state == rows[second.session_id].state == "active"
        assert rows[second.session_id].renewed_by is None
        assert ev.SESSION_RENEWED not in await node.types()
    # The genuine renewal of `first` still goes through and closes `first` only.
    grant, for_a, for_b = await directory.pair(a, b, issued_at=now)
    await a.tokens.receive(for_a, now)
    await b.tokens.receive(for_b, now)
    new = await a.handshakes.connect(grant.grant_id, inner, now, renews=first.session_id)
    rows = {r.session_id: r for r in await b.book.sessions()}
    assert rows[first.session_id].renewed_by == new.session_id
    assert rows[second.session_id].state == "active"


async def test_concurrent_first_uses_restore_a_session_once(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    import asyncio

    a, b, _ = nodes
    channel = await connected(directory, a, b)
    a.restart_sessions()
    restored = await asyncio.gather(*(a.keeper.channel(channel.session_id, NOW)
                                      for _ in range(5)))
    assert all(r is restored[0] for r in restored)
    assert (await a.types()).count(ev.SESSION_STATE_SAVED) == 1


async def test_the_node_ledger_never_hands_out_a_send_epoch_twice(tmp_path: Any) -> None:
    from openred.crypto.session import SessionCipher
    from openred.node.sessions import NodeSessionLedger

    a, _ = pair()
    state = a.cipher.to_state()
    path = tmp_path / "ledger.json"
    # The same saved state restored by two processes (two ledger objects on one file), and
    # again after a crash before anything was saved: every restore sends in a fresh epoch.
    epochs = [SessionCipher.from_state(state, ledger=NodeSessionLedger(path),
                                       session_id=a.session_id).send_epoch for _ in range(3)]
    assert epochs == [1, 2, 3]
    # Receive marks are not kept: the log and the pending answers guard acceptance instead.
    ledger = NodeSessionLedger(path)
    ledger.raise_recv_mark(a.session_id, 99)
    assert ledger.recv_mark(a.session_id) == -1


async def test_a_sender_moves_past_a_strict_peers_receive_floor_after_its_restart(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    from openred.crypto.session import FileSessionLedger
    from openred.node.sessions import SessionKeeper

    a, b, _ = nodes
    path = b.store.path.parent / "strict-ledger.json"
    b.keeper = SessionKeeper(b.store, b.jail, b.book, FileSessionLedger(path))
    b.handshakes.keeper = b.keeper
    serve_messaging(b)
    channel = await connected(directory, a, b)
    sender = Messaging(a.store, a.jail, a.reads)
    await sender.send(channel, "before", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW))
    # B restarts with a ledger that keeps receive marks: it refuses counters up to its mark.
    b.keeper = SessionKeeper(b.store, b.jail, b.book, FileSessionLedger(path))
    await refused(sender.send(channel, "refused", message_id=os.urandom(16), now=NOW,
                              transport=p2p_to(b, NOW)), 409, "replayed-message")
    # With rotate, the sender moves to a fresh epoch and the message goes through once.
    receipt = await sender.send(channel, "after", message_id=os.urandom(16), now=NOW,
                                transport=p2p_to(b, NOW), rotate=a.keeper.rotate)
    assert receipt.received_at == NOW
    inbox = sorted(m.text for m in await Messaging(b.store, b.jail, b.reads).inbox())
    assert inbox == ["after", "before"]


async def test_send_keys_rotate_every_epoch_interval_and_messages_keep_flowing(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    channel = await connected(directory, a, b)
    sender = Messaging(a.store, a.jail, a.reads)
    assert await a.keeper.rotate_due(NOW + 3599, 3600) == []
    assert await a.keeper.rotate_due(NOW + 3600, 3600) == [channel.session_id]
    assert channel.cipher.send_epoch == 1
    assert (await a.types())[-1] == ev.SESSION_STATE_SAVED  # saved at once
    assert await a.keeper.rotate_due(NOW + 3601, 3600) == []  # a new epoch, a new interval
    await sender.send(channel, "in epoch 1", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW))
    responder = b.keeper.cache.get(channel.session_id, NOW)
    assert responder is not None and responder.cipher.recv_epoch == 1


async def test_a_request_logged_while_the_state_is_being_saved_is_not_accepted_twice(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    # The saved state is taken before the jail wraps it; a request accepted during that wrap
    # is in neither the saved state nor (if the log kept only what follows the save) the
    # counters re-marked on restore. A restarted node must still refuse it.
    a, b, _ = nodes
    serve_messaging(b)
    sender = Messaging(a.store, a.jail, a.reads)
    channel = await connected(directory, a, b)
    await sender.send(channel, "first", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW))
    responder = await b.keeper.channel(channel.session_id, NOW)
    during: list[Envelope] = []
    original = b.jail.wrap

    async def wrap_while_a_request_arrives(label: str, plaintext: bytes) -> bytes:
        if not during:
            await sender.send(channel, "during the save", message_id=os.urandom(16), now=NOW,
                              transport=p2p_to(b, NOW, during))
        return await original(label, plaintext)

    b.jail.wrap = wrap_while_a_request_arrives  # type: ignore[method-assign]
    await b.keeper.save(responder)
    b.jail.wrap = original  # type: ignore[method-assign]
    types = await b.types()
    assert types.index(ev.MESSAGE_RECEIVED, types.index(ev.MESSAGE_RECEIVED) + 1) < (
        len(types) - 1 - types[::-1].index(ev.SESSION_STATE_SAVED))  # logged before the save
    b.restart_sessions()
    [envelope] = during
    await refused(dispatch(SEND, envelope.to_json(), actions=b.actions, keeper=b.keeper,
                           store=b.store, now=NOW), 409, "replayed-message")


async def test_concurrent_uses_past_save_every_save_the_state_once(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    import asyncio

    a, b, _ = nodes
    serve_messaging(b)
    channel = await connected(directory, a, b)
    b.keeper.save_every = 4
    sender = Messaging(a.store, a.jail, a.reads)
    wraps: list[str] = []
    original = b.jail.wrap

    async def counting(label: str, plaintext: bytes) -> bytes:
        if label.startswith("session:"):
            wraps.append(label)
        await asyncio.sleep(0.01)  # a slow jail: the other requests finish meanwhile
        return await original(label, plaintext)

    b.jail.wrap = counting  # type: ignore[method-assign]
    before = (await b.types()).count(ev.SESSION_STATE_SAVED)
    await asyncio.gather(*(sender.send(channel, f"m{i}", message_id=os.urandom(16), now=NOW,
                                       transport=p2p_to(b, NOW)) for i in range(7)))
    saved = (await b.types()).count(ev.SESSION_STATE_SAVED) - before
    # 7 uses with save_every 4: one save (at the 4th), not one per request still in flight.
    assert saved == len(wraps) == 1
    assert len(await Messaging(b.store, b.jail, b.reads).inbox()) == 7


async def test_an_epoch_change_during_a_save_is_saved_by_the_next_use(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    serve_messaging(b)
    sender = Messaging(a.store, a.jail, a.reads)
    channel = await connected(directory, a, b)
    await sender.send(channel, "first", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW))
    responder = await b.keeper.channel(channel.session_id, NOW)
    original = b.jail.wrap
    moved: list[int] = []

    async def wrap_while_the_epoch_moves(label: str, plaintext: bytes) -> bytes:
        if not moved:
            moved.append(responder.cipher.rotate())  # after the state was taken
            # A request finishing now does not start a second save of this session.
            await sender.send(channel, "during", message_id=os.urandom(16), now=NOW,
                              transport=p2p_to(b, NOW))
        return await original(label, plaintext)

    b.jail.wrap = wrap_while_the_epoch_moves  # type: ignore[method-assign]
    before = (await b.types()).count(ev.SESSION_STATE_SAVED)
    await b.keeper.save(responder)
    assert (await b.types()).count(ev.SESSION_STATE_SAVED) == before + 1
    await sender.send(channel, "after", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW))
    # The saved state predates the epoch change, so the next use saves the new epoch.
    assert (await b.types()).count(ev.SESSION_STATE_SAVED) == before + 2
    await sender.send(channel, "again", message_id=os.urandom(16), now=NOW,
                      transport=p2p_to(b, NOW))
    assert (await b.types()).count(ev.SESSION_STATE_SAVED) == before + 2
    assert len(await Messaging(b.store, b.jail, b.reads).inbox()) == 4


def test_restoring_re_marks_the_counters_since_the_second_newest_save() -> None:
    from openred.node.sessions import accepted_counters
    from openred.store.events import RecordedEvent

    def event(seq: int, type_: str, **payload: Any) -> RecordedEvent:
        return RecordedEvent(seq, "session:s", seq, type_, 1, "", payload)

    events = [
        event(0, ev.SESSION_ESTABLISHED, wrapped_state="s0"),
        event(1, ev.MESSAGE_RECEIVED, counter=1),
        event(2, ev.SESSION_STATE_SAVED, wrapped_state="s1"),
        event(3, ev.MESSAGE_RECEIVED, counter=2),
        event(4, ev.MESSAGE_SENT),  # no counter: not caused by a request
        event(5, ev.SESSION_STATE_SAVED, wrapped_state="s2"),
        event(6, ev.MESSAGE_RECEIVED, counter=3),
    ]
    assert accepted_counters(events) == ("s2", [2, 3])
    assert accepted_counters(events[:2]) == ("s0", [1])
    assert accepted_counters(events[:3]) == ("s1", [1])
    with pytest.raises(Exception, match="no saved state"):
        accepted_counters(events[1:2])
