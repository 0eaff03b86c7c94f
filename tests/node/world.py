"""Two real nodes in one process for the node tests: each a real crypto jail, a real SQLite log.

A test directory keeps a real directory log (kind ``directory``, its key in-process) and mints
grants as DESIGN §5 says: a ``ConnectionGranted`` entry, a signed checkpoint and an inclusion
proof per delivery, for the nodes' real signed records (signed in their jails). Nodes check
deliveries with the real :class:`~openred.node.transparency.TransparencyChecks`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nacl.signing

from openred.crypto.client import JailClient, JailSigner, PublicKeys
from openred.crypto.grants import Grant, mint_tokens, new_grant, seal_token
from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url
from openred.crypto.records import NodeRecord, SignedNodeRecord, sign_record
from openred.crypto.transparency import (
    CONNECTION_GRANTED,
    InclusionProof,
    connection_granted_payload,
    entry_to_wire,
)
from openred.directory.tree import ProofTree
from openred.node.book import NodeBook
from openred.node.envelope import Envelope, Route
from openred.node.events import node_registry
from openred.node.handshake_service import HandshakeAnswer, Handshakes
from openred.node.p2p import P2PActions, dispatch
from openred.node.projections import node_projections
from openred.node.readmodels import ReadModels
from openred.node.sessions import NodeSessionLedger, SessionKeeper
from openred.node.token_service import TokenReceiver
from openred.node.tokens import PeerInfo
from openred.node.transparency import TransparencyChecks
from openred.store.events import EventRegistry, NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.crypto_jail.test_server import JailProc, dev_keystore, short_dir, spawn_jail

NOW = 1_790_000_000
SUITE = "25519_ChaChaPoly_SHA256"


class JailPair:
    """Three jails (nodes A, B, C) for a test module; stopped by pid at the end."""

    def __init__(self) -> None:
        self.root = short_dir()
        self.procs: list[JailProc] = []
        for name in ("a", "b", "c"):
            d = self.root / name
            d.mkdir()
            keystore, _ = dev_keystore(d)
            (d / "s").mkdir(mode=0o700)
            self.procs.append(spawn_jail(keystore, d / "s" / "j.sock"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Directory:
    """A directory log and key minting grants and deliveries like the directory (DESIGN §5).

    ``fork`` is a second log under the same key: what a directory showing different nodes
    different histories would sign.
    """

    def __init__(self, signing: nacl.signing.SigningKey, store: SQLiteEventStore,
                 fork: SQLiteEventStore) -> None:
        self.signing = signing
        self.key: SignKey = SignKey(bytes(signing.verify_key))
        self.store = store
        self.fork = fork
        self.serving = store

    @classmethod
    async def open(cls, path: Path) -> Directory:
        signing = nacl.signing.SigningKey.generate()
        signer = InProcessSigner(signing)
        registry = EventRegistry()
        registry.register(CONNECTION_GRANTED)
        logs = []
        for name in ("log", "fork"):
            (path / name).mkdir(parents=True)
            logs.append(await SQLiteEventStore.open(
                path / name, signer, registry=registry, kind="directory",
                checkpoint_every=10**6, checkpoint_interval=0))
        return cls(signing, logs[0], logs[1])

    async def close(self) -> None:
        await self.store.close()
        await self.fork.close()

    async def fetch(self, from_size: int, to_size: int | None = None,
                    ) -> tuple[bytes, list[bytes]]:
        """GET /api/v3/directory/checkpoint?from=SIZE[&to=SIZE]: the newest checkpoint, and a
        consistency proof from ``from_size`` to ``to_size`` (default: the newest's size)."""
        note = await self.serving.checkpoint()
        size, proof = await self.serving.consistency_proof(from_size)
        if to_size is None or to_size == size:
            return note, proof
        tree = ProofTree()
        for entry in await self.serving.read(1, to_size):
            tree.append(entry.entry_hash)
        return note, tree.consistency_proof(from_size, to_size)

    def grant(self, a: Node, b: Node, *, issued_at: int = NOW, ttl: int = 300) -> Grant:
        return new_grant(a.id, b.id, grant_id=os.urandom(16), issued_at=issued_at, ttl=ttl,
                         suite=SUITE, initiator_record=a.record.hash,
                         responder_record=b.record.hash)

    async def logged(self, grant: Grant, *, log: SQLiteEventStore | None = None,
                     ) -> dict[str, Any]:
        """Append the grant's ConnectionGranted; the delivery's entry, checkpoint and proof."""
        log = log or self.store
        entry = await log.append_one(NewEvent(f"grant:{grant.grant_id}", CONNECTION_GRANTED,
                                              connection_granted_payload(grant)))
        note = await log.checkpoint()
        size, hashes = await log.inclusion_proof(entry.seq)
        return {"entry": entry_to_wire(entry), "checkpoint": note.decode("utf-8"),
                "inclusion_proof": InclusionProof(entry.seq - 1, size, tuple(hashes)).to_wire()}

    def delivery(self, grant: Grant, sealed: bytes, peer: Node,
                 proofs: dict[str, Any]) -> dict[str, Any]:
        signature = self.signing.sign(grant.canonical_bytes()).signature
        return {"grant": grant.to_dict(), "grant_signature": b64url(signature),
                "sealed_token": b64url(sealed), "peer_record": peer.record.to_wire(), **proofs}

    async def pair(self, a: Node, b: Node, *, log: SQLiteEventStore | None = None,
                   **kw: Any) -> tuple[Grant, dict[str, Any], dict[str, Any]]:
        """A grant from a to b in the log, and each side's delivery."""
        grant = self.grant(a, b, **kw)
        proofs = await self.logged(grant, log=log)
        token_a, token_b = mint_tokens(grant, os.urandom(32))
        for_a = self.delivery(grant, seal_token(token_a, BoxKey(a.keys.box_key.raw)), b, proofs)
        for_b = self.delivery(grant, seal_token(token_b, BoxKey(b.keys.box_key.raw)), a, proofs)
        return grant, for_a, for_b


class Node:
    """One node's services over its jail and store."""

    def __init__(self, name: str, jail: JailClient, keys: PublicKeys, store: SQLiteEventStore,
                 reads: ReadModels, record: SignedNodeRecord, directory: Directory) -> None:
        self.name = name
        self.record = record
        self.jail = jail
        self.keys = keys
        self.store = store
        self.reads = reads
        self.book = NodeBook(reads)
        self.keeper = self._keeper()
        self.handshakes = Handshakes(store=store, jail=jail, book=self.book, keeper=self.keeper)
        self.checks = TransparencyChecks(directory.key, directory.fetch)
        self.tokens = TokenReceiver(me=keys.node_id, directory_key=directory.key, store=store,
                                    jail=jail, book=self.book, checks=self.checks,
                                    own_record=lambda: self.record.hash)
        self.actions = P2PActions()

    @property
    def id(self) -> NodeId:
        return self.keys.node_id

    def info(self) -> PeerInfo:
        return PeerInfo(self.id, self.record.record.api_url, self.keys.sign_key,
                        self.keys.box_key)

    def _keeper(self) -> SessionKeeper:
        ledger = NodeSessionLedger(self.store.path.parent / "session-ledger.json")
        return SessionKeeper(self.store, self.jail, self.book, ledger)

    def restart_sessions(self) -> None:
        """Forget every in-memory session, as a restarted process would (the ledger re-read)."""
        self.keeper = self._keeper()
        self.handshakes.keeper = self.keeper

    async def types(self) -> list[str]:
        return [e.type for e in await self.store.read()]

    async def close(self) -> None:
        await self.reads.close()
        await self.store.close()
        await self.jail.close()


async def open_node(name: str, socket: Path, data: Path, directory: Directory) -> Node:
    jail = JailClient(socket, timeout=10)
    keys = await jail.public_keys()
    record = await sign_record(NodeRecord.build(
        sign_key=keys.sign_key, box_key=keys.box_key, api_url=f"https://{name}.example:8443",
        modules=("messaging",), issued_at=NOW, version=1), jail.sign)
    data.mkdir(parents=True, exist_ok=True)
    store = await SQLiteEventStore.open(
        data, await JailSigner.create(jail), registry=node_registry(),
        projections=node_projections(), checkpoint_interval=0,
    )
    return Node(name, jail, keys, store, ReadModels.open(data / "openred.db"), record,
                directory)


def transport_to(node: Node, now: int) -> Any:
    """The initiator's handshake transport: a direct call into the responder's service."""

    async def send(api_url: str, grant_id: str, message: bytes,
                   renews: str | None = None) -> HandshakeAnswer:
        return await node.handshakes.respond(grant_id, message, now, renews)

    return send


def p2p_to(node: Node, now: int, sent: list[Envelope] | None = None) -> Any:
    """A P2P transport into ``node``'s dispatcher, recording each request envelope."""

    async def send(route: Route, envelope: Envelope) -> Envelope:
        if sent is not None:
            sent.append(envelope)
        return await dispatch(route, envelope.to_json(), actions=node.actions,
                              keeper=node.keeper, store=node.store, now=now)

    return send


def record_envelopes(monkeypatch: Any, envelopes: list[dict[str, Any]]) -> None:
    """Record (as JSON) every envelope the node services post to a peer's messaging route."""
    import openred.node.services as node_services

    original = node_services.post_envelope

    async def recording(http: Any, url: str, envelope: Envelope, **kw: Any) -> Envelope:
        if "/p2p/messaging/" in url:
            envelopes.append(envelope.to_json())
        return await original(http, url, envelope, **kw)

    monkeypatch.setattr(node_services, "post_envelope", recording)
