"""The directory's pure parts: decisions, the proof tree, the rate limiter, the projections."""

from __future__ import annotations

import json
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from openred.crypto.identity import BoxKey, SignKey, b64url
from openred.crypto.records import NodeRecord, SignedNodeRecord
from openred.directory import decisions as d
from openred.directory import events as ev
from openred.directory.projections import directory_projections
from openred.directory.tree import ProofTree
from openred.errors import RequestRefused
from openred.ratelimit import FairShare, InFlight, RateLimiter
from openred.store import merkle
from openred.store.events import RecordedEvent

NOW = 1_800_000_000


def signed(sk: nacl.signing.SigningKey, version: int = 1, **kw: object) -> SignedNodeRecord:
    args: dict[str, object] = {"sign_key": SignKey(bytes(sk.verify_key)),
                               "box_key": BoxKey(b"\x01" * 32), "api_url": "https://n.example",
                               "issued_at": NOW - 10, "version": version}
    args.update(kw)
    record = NodeRecord.build(**args)  # type: ignore[arg-type]
    return SignedNodeRecord(record, sk.sign(record.canonical_bytes()).signature)


def view(s: SignedNodeRecord, status: str = d.ACTIVE, last_seen: int = NOW) -> d.NodeView:
    wire = s.to_wire()
    return d.NodeView(str(s.record.node_id), status, s.record.version, b64url(s.hash),
                      last_seen, json.dumps(wire["record"]), wire["signature"])


class _Refusal:
    def __init__(self, status: int, slug: str) -> None:
        self.status, self.slug = status, slug

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        assert isinstance(exc, RequestRefused), f"expected a refusal, got {exc!r}"
        assert (exc.status, exc.slug) == (self.status, self.slug)
        return True


def test_registration_decisions() -> None:
    sk = nacl.signing.SigningKey.generate()
    s1, s2 = signed(sk, 1), signed(sk, 2)
    me = str(s1.record.node_id)
    status, events = d.decide_registration(None, s1, signer=me, now=NOW, window=60)
    assert status == 201 and [e.type for e in events] == [ev.NODE_REGISTERED]
    assert d.decide_registration(view(s1), s1, signer=me, now=NOW, window=60) == (200, [])
    status, events = d.decide_registration(view(s1, d.STALE), s1, signer=me, now=NOW,
                                           window=60)
    assert status == 200 and events[0].payload["status"] == d.ACTIVE
    status, events = d.decide_registration(view(s1), s2, signer=me, now=NOW, window=60)
    assert [e.type for e in events] == [ev.NODE_UPDATED]
    with _Refusal(409, "stale-record"):
        d.decide_registration(view(s2), signed(sk, 1, api_url="https://old.example"),
                              signer=me, now=NOW, window=60)
    with _Refusal(409, "stale-record"):
        d.decide_registration(view(s2), signed(sk, 2, api_url="https://x.example"), signer=me,
                              now=NOW, window=60)
    with _Refusal(403, "not-your-node"):
        d.decide_registration(None, s1, signer="b" * 32, now=NOW, window=60)
    with _Refusal(403, "revoked"):
        d.decide_registration(view(s1, d.REVOKED), s2, signer=me, now=NOW, window=60)
    with _Refusal(422, "invalid-record"):
        d.decide_registration(None, signed(sk, 1, issued_at=NOW + 3600), signer=me, now=NOW,
                              window=60)
    forged = SignedNodeRecord(s1.record, nacl.signing.SigningKey.generate().sign(
        s1.record.canonical_bytes()).signature)
    with _Refusal(422, "invalid-record"):
        d.decide_registration(None, forged, signer=me, now=NOW, window=60)
    status, events = d.decide_registration(view(s1, d.DEREGISTERED), s2, signer=me, now=NOW,
                                           window=60)
    assert status == 201 and events[0].type == ev.NODE_REGISTERED


def test_grant_and_status_decisions() -> None:
    a = view(signed(nacl.signing.SigningKey.generate()))
    b = view(signed(nacl.signing.SigningKey.generate()))
    d.decide_grant(a, b, signer=a.node_id, target_id=b.node_id)
    cases = [
        (a, a, a.node_id, 422, "same-node"),
        (a, None, b.node_id, 404, "unknown-target"),
        (a, view(signed(nacl.signing.SigningKey.generate()), d.DEREGISTERED), b.node_id, 404,
         "unknown-target"),
        (a, view(signed(nacl.signing.SigningKey.generate()), d.REVOKED), b.node_id, 403,
         "target-revoked"),
        (a, view(signed(nacl.signing.SigningKey.generate()), d.EXPIRED), b.node_id, 410,
         "target-expired"),
        (a, view(signed(nacl.signing.SigningKey.generate()), d.STALE), b.node_id, 409,
         "target-not-active"),
        (None, b, b.node_id + "x", 401, "bad-signature"),
    ]
    for initiator, target, target_id, status, slug in cases:
        with _Refusal(status, slug):
            d.decide_grant(initiator, target, signer=a.node_id, target_id=target_id)
    with _Refusal(403, "revoked"):
        d.decide_grant(view(signed(nacl.signing.SigningKey.generate()), d.REVOKED), b,
                       signer=a.node_id, target_id=b.node_id)
    with _Refusal(409, "initiator-not-active"):
        d.decide_grant(view(signed(nacl.signing.SigningKey.generate()), d.STALE), b,
                       signer=a.node_id, target_id=b.node_id)
    # Status: active → stale → expired, "never" keeps a node stale.
    kw = {"stale_after": 120, "expire_after": 86400}
    assert d.decide_status(a, last_seen=NOW, now=NOW + 119, **kw) == []
    (stale,) = d.decide_status(a, last_seen=NOW, now=NOW + 120, **kw)
    assert stale.payload["status"] == d.STALE
    stale_view = view(signed(nacl.signing.SigningKey.generate()), d.STALE)
    (expired,) = d.decide_status(stale_view, last_seen=NOW, now=NOW + 86400, **kw)
    assert expired.payload["status"] == d.EXPIRED
    assert d.decide_status(stale_view, last_seen=NOW, now=NOW + 10**9, stale_after=120,
                           expire_after=None) == []
    assert d.decide_status(view(signed(nacl.signing.SigningKey.generate()), d.REVOKED),
                           last_seen=0, now=NOW, **kw) == []


def test_heartbeat_deregistration_revocation_decisions() -> None:
    a = view(signed(nacl.signing.SigningKey.generate()))
    assert d.decide_heartbeat(a, signer=a.node_id, now=NOW) == []
    with _Refusal(404, "unknown-node"):
        d.decide_heartbeat(None, signer=a.node_id, now=NOW)
    revoked = view(signed(nacl.signing.SigningKey.generate()), d.REVOKED)
    with _Refusal(403, "revoked"):
        d.decide_heartbeat(revoked, signer=revoked.node_id, now=NOW)
    with _Refusal(403, "not-your-node"):
        d.decide_deregistration(a, node_id=a.node_id, signer="b" * 32, now=NOW)
    assert d.decide_deregistration(a, node_id=a.node_id, signer=a.node_id, now=NOW)
    assert d.decide_revocation(a, node_id=a.node_id, reason="x", now=NOW)
    with _Refusal(409, "already-revoked"):
        d.decide_revocation(view(signed(nacl.signing.SigningKey.generate()), d.REVOKED),
                            node_id=a.node_id, reason="x", now=NOW)


@given(st.integers(min_value=1, max_value=300), st.data())
def test_proof_tree_matches_the_store_merkle_module(size: int, data: st.DataObject) -> None:
    hashes = [bytes([i % 256, i // 256]) * 16 for i in range(size)]
    tree = ProofTree()
    for h in hashes:
        tree.append(h)
    assert tree.root(size) == merkle.root_from_entry_hashes(hashes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    n = data.draw(st.integers(min_value=index + 1, max_value=size))
    assert tree.inclusion_proof(index, n) == merkle.inclusion_proof(index, hashes[:n])
    old = data.draw(st.integers(min_value=0, max_value=n))
    assert tree.consistency_proof(old, n) == merkle.consistency_proof(old, hashes[:n])


def test_rate_limiter_window_and_retry_after() -> None:
    limiter = RateLimiter(2, 10.0, max_keys=3)
    for t in (0.0, 1.0):
        assert limiter.retry_after("a", t) is None
        limiter.hit("a", t)
    assert limiter.retry_after("a", 5.0) == pytest.approx(5.0)
    assert limiter.retry_after("a", 10.5) is None
    for key in "bcdef":
        limiter.hit(key, 20.0)
    assert len(limiter._hits) <= 3


def test_fair_share_gives_a_newcomer_its_share_and_bounds_the_key() -> None:
    budget = FairShare(4, 10.0, max_keys=3)
    for t in range(4):  # one party alone: the whole budget
        assert budget.retry_after("b", "n1", t) is None
        budget.hit("b", "n1", t)
    assert budget.retry_after("b", "n1", 4.0) == pytest.approx(6.0)
    assert budget.retry_after("b", "n2", 4.0) is None  # its share is 4 // 2
    budget.hit("b", "n2", 4.0)
    budget.hit("b", "n2", 4.5)
    assert budget.retry_after("b", "n2", 5.0) == pytest.approx(9.0)
    assert budget.retry_after("b", "n3", 5.0) is None  # 4 // 3: one
    budget.hit("b", "n3", 5.0)
    assert budget.retry_after("b", "n3", 5.5) is not None
    budget.hit("b", "n4", 5.5)  # 4 // 4: one
    assert budget.retry_after("b", "n5", 6.0) == pytest.approx(4.0)  # 2 × 4 in the key
    # n1's first hit left; it holds 3 and four parties share the key: wait for the next.
    assert budget.retry_after("b", "n1", 10.5) == pytest.approx(0.5)
    assert budget.retry_after("b", "n5", 10.5) is None  # 7 in the key: a fifth party gets in
    for key in "cdef":
        budget.hit(key, "n1", 30.0)
    assert len(budget._keys) <= 3


def test_in_flight_bounds_each_key_and_the_total_and_gives_back_once() -> None:
    gate = InFlight(4, 6)
    first = gate.enter("n1", 2)
    second = gate.enter("n1", 2)
    assert gate.blocked("n1", 2) == "key" and gate.blocked("n2", 2) is None
    gate.enter("n2", 2)
    assert gate.blocked("n3", 2) == "total"
    first.release()
    first.release_all()
    first.release_all()
    assert gate.held("n1") == 2 and gate.used == 4
    second.release_all()
    assert gate.held("n1") == 0 and gate.blocked("n1", 4) is None


def test_projections_keep_the_record_verbatim_and_follow_status() -> None:
    s = signed(nacl.signing.SigningKey.generate())
    registry = directory_projections()
    event = ev.record_event(ev.NODE_REGISTERED, s, NOW)
    recorded = RecordedEvent(1, event.stream, 1, event.type, 1, "t",
                             json.loads(json.dumps(dict(event.payload))))
    (op,) = registry.operations(recorded)
    assert op.row["record"] == s.record.canonical_bytes().decode()  # type: ignore[union-attr]
    assert op.row["record_hash"] == b64url(s.hash)  # type: ignore[union-attr]


async def test_node_cache_sees_foreign_writes_but_not_its_own_in_flight(tmp_path: Path) -> None:
    from openred.directory.events import directory_registry
    from openred.directory.projections import directory_projections
    from openred.directory.service import _NodeCache
    from openred.store.signer import InProcessSigner
    from openred.store.sqlite import SQLiteEventStore

    store = await SQLiteEventStore.open(tmp_path, InProcessSigner.generate(), kind="directory",
                                        registry=directory_registry(),
                                        projections=directory_projections())
    cache = _NodeCache(tmp_path / "openred.db")
    try:
        cache.check()  # the genesis entry predates the cache
        a = view(signed(nacl.signing.SigningKey.generate()))
        cache.put(a.node_id, a)
        # This process appends two entries; they come back out of order.
        cache.inflight += 2
        first = await store.append([ev.revoked_event("x" * 32, "r", NOW)])
        second = await store.append([ev.revoked_event("y" * 32, "r", NOW)])
        cache.check()
        assert a.node_id in cache.views  # committed but in flight: not foreign
        cache.inflight -= 2
        cache.appended(second)
        cache.appended(first)
        cache.check()
        assert a.node_id in cache.views and cache.known_size == second[0].seq
        # An append to a node's stream drops that node only.
        b = view(signed(nacl.signing.SigningKey.generate()))
        cache.put(b.node_id, b)
        cache.appended(await store.append([ev.revoked_event(a.node_id, "r", NOW)]))
        cache.check()
        assert a.node_id not in cache.views and b.node_id in cache.views
        # Another writer (another process: here, nobody told the cache) empties it.
        await store.append([ev.revoked_event("z" * 32, "r", NOW)])
        cache.check()
        assert cache.views == {}
    finally:
        cache.close()
        await store.close()


def test_client_keys_group_an_ipv6_network_and_unmap_ipv4() -> None:
    from openred.ratelimit import client_key

    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == (
        "address:2001:db8:1:2::/64")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:198.51.100.7") == client_key("198.51.100.7") == (
        "address:198.51.100.7")
    assert client_key("fe80::1%eth0") == "address:fe80::/64"
    assert client_key("<local>") == "address:<local>"
    assert client_key(None) == "address:None"
