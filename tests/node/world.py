"""Two real nodes in one process for the node tests: each a real crypto jail, a real SQLite log.

A test "directory" (an in-process Ed25519 key) mints grants exactly as DESIGN §5 says; the
delivery's transparency checks go through :class:`ScriptedChecks`, a double of the
``DeliveryChecks`` port whose answer each test chooses (the real adapter is the directory's
``openred.crypto.transparency``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing

from openred.crypto.client import JailClient, JailSigner, PublicKeys
from openred.crypto.grants import Grant, mint_tokens, new_grant, seal_token
from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url
from openred.errors import VerificationError
from openred.node.book import NodeBook
from openred.node.envelope import Envelope, Route
from openred.node.events import node_registry
from openred.node.handshake_service import HandshakeAnswer, Handshakes
from openred.node.p2p import P2PActions, dispatch
from openred.node.projections import node_projections
from openred.node.readmodels import ReadModels
from openred.node.sessions import SessionKeeper
from openred.node.token_service import DeliveryChecks, Forked, TokenReceiver, Verified
from openred.node.tokens import HeldCheckpoint, PeerInfo
from openred.store.sqlite import SQLiteEventStore
from tests.crypto_jail.test_server import JailProc, dev_keystore, short_dir, spawn_jail

NOW = 1_790_000_000
SUITE = "25519_ChaChaPoly_SHA256"


class JailPair:
    """Two jails (nodes A and B) for a test module; stopped by pid at the end."""

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


@dataclass
class ScriptedChecks:
    """The DeliveryChecks port answering what the test sets: verified, forked, or an error."""

    peers: dict[str, PeerInfo] = field(default_factory=dict)
    checkpoint: HeldCheckpoint = field(
        default_factory=lambda: HeldCheckpoint("directory.example/log", 10, "note 10")
    )
    fork: bool = False
    error: str | None = None
    calls: int = 0

    async def verify(
        self, delivery: Mapping[str, Any], grant: Grant, peer: NodeId,
        held: HeldCheckpoint | None,
    ) -> Verified | Forked:
        self.calls += 1
        if self.error is not None:
            raise VerificationError(self.error)
        if self.fork:
            return Forked("forked note")
        return Verified(self.peers[str(peer)], self.checkpoint)


class Node:
    """One node's services over its jail and store."""

    def __init__(self, name: str, jail: JailClient, keys: PublicKeys, store: SQLiteEventStore,
                 reads: ReadModels, checks: DeliveryChecks, directory_key: SignKey) -> None:
        self.name = name
        self.jail = jail
        self.keys = keys
        self.store = store
        self.reads = reads
        self.book = NodeBook(reads)
        self.keeper = SessionKeeper(store, jail, self.book)
        self.handshakes = Handshakes(store=store, jail=jail, book=self.book, keeper=self.keeper)
        self.tokens = TokenReceiver(me=keys.node_id, directory_key=directory_key, store=store,
                                    jail=jail, book=self.book, checks=checks)
        self.actions = P2PActions()

    @property
    def id(self) -> NodeId:
        return self.keys.node_id

    def info(self) -> PeerInfo:
        return PeerInfo(self.id, f"https://{self.name}.example", self.keys.sign_key,
                        self.keys.box_key)

    def restart_sessions(self) -> None:
        """Forget every in-memory session, as a restarted process would."""
        self.keeper = SessionKeeper(self.store, self.jail, self.book)
        self.handshakes.keeper = self.keeper

    async def types(self) -> list[str]:
        return [e.type for e in await self.store.read()]

    async def close(self) -> None:
        await self.reads.close()
        await self.store.close()
        await self.jail.close()


async def open_node(name: str, socket: Path, data: Path, checks: DeliveryChecks,
                    directory_key: SignKey) -> Node:
    jail = JailClient(socket, timeout=10)
    keys = await jail.public_keys()
    data.mkdir(parents=True, exist_ok=True)
    store = await SQLiteEventStore.open(
        data, await JailSigner.create(jail), registry=node_registry(),
        projections=node_projections(), checkpoint_interval=0,
    )
    return Node(name, jail, keys, store, ReadModels.open(data / "openred.db"), checks,
                directory_key)


class Directory:
    """Mints signed grants and sealed tokens like the directory (DESIGN §5)."""

    def __init__(self) -> None:
        self.signing = nacl.signing.SigningKey.generate()
        self.key = SignKey(bytes(self.signing.verify_key))

    def delivery(self, grant: Grant, sealed: bytes, peer: PeerInfo) -> dict[str, Any]:
        signature = self.signing.sign(grant.canonical_bytes()).signature
        return {
            "grant": grant.to_dict(), "grant_signature": b64url(signature),
            "sealed_token": b64url(sealed),
            "peer_record": {"record": peer.payload(), "signature": b64url(bytes(64))},
            "entry": {}, "checkpoint": "note", "inclusion_proof": {},
        }

    def grant(self, initiator: NodeId, responder: NodeId, *, issued_at: int = NOW,
              ttl: int = 300) -> Grant:
        return new_grant(initiator, responder, grant_id=os.urandom(16), issued_at=issued_at,
                         ttl=ttl, suite=SUITE)

    def pair(self, a: Node, b: Node, **kw: Any) -> tuple[Grant, dict[str, Any], dict[str, Any]]:
        """A grant from a to b, and each side's delivery."""
        grant = self.grant(a.id, b.id, **kw)
        token_a, token_b = mint_tokens(grant, os.urandom(32))
        for_a = self.delivery(grant, seal_token(token_a, BoxKey(a.keys.box_key.raw)), b.info())
        for_b = self.delivery(grant, seal_token(token_b, BoxKey(b.keys.box_key.raw)), a.info())
        return grant, for_a, for_b


def transport_to(node: Node, now: int) -> Any:
    """The initiator's handshake transport: a direct call into the responder's service."""

    async def send(api_url: str, grant_id: str, message: bytes) -> HandshakeAnswer:
        return await node.handshakes.respond(grant_id, message, now)

    return send


def p2p_to(node: Node, now: int, sent: list[Envelope] | None = None) -> Any:
    """A P2P transport into ``node``'s dispatcher, recording each request envelope."""

    async def send(route: Route, envelope: Envelope) -> Envelope:
        if sent is not None:
            sent.append(envelope)
        return await dispatch(route, envelope.to_json(), actions=node.actions,
                              keeper=node.keeper, store=node.store, now=now)

    return send
