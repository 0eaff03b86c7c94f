"""``make demo``: a small network's history, written through real crypto jails, then audited.

Until the directory and node services exist, this plays their parts in one process — but every
key lives in a real crypto jail process (one per participant, keystore encrypted with Argon2id),
every grant is signed by the directory's jail, every token is sealed to its node's X25519 key,
every handshake is a real Noise KKpsk0 run inside two jails, and every log entry and checkpoint
is signed through the jail. What is synthetic is only the transport (no HTTP) and the clock
(simulated, so grants and sessions can expire in seconds).

Each participant's log lands in ``./demo-data/<participant>/openred.db``; afterwards each log is
verified with ``audit_tools`` and a summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from audit_tools.verify import verify
from openred.crypto.client import JailClient, JailSigner, JailSupervisor, PublicKeys, SessionKeys
from openred.crypto.grants import Grant, new_grant, seal_token, verify_signed_grant
from openred.crypto.grants import mint_tokens as mint
from openred.crypto.identity import b64url
from openred.crypto.methods import DEFAULT_REGISTRY, select_crypto_method
from openred.crypto.records import NodeRecord, SignedNodeRecord, sign_record
from openred.crypto.session import SessionCipher
from openred.crypto.transparency import connection_granted_payload
from openred.directory.events import (
    CONNECTION_GRANTED,
    NODE_REGISTERED,
    directory_registry,
    grant_stream,
    record_event,
)
from openred.directory.projections import directory_projections
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import EventRegistry, NewEvent
from openred.store.sqlite import SQLiteEventStore

NODES = ("alice", "bob", "carol")
ROUNDS = 30  # rounds of the six-message chat: enough traffic for a periodic checkpoint
DIRECTORY_URL = "http://127.0.0.1:8700"

console = Console(highlight=False)


class SimClock:
    """Simulated UTC time: starts now, moves only when the story says so."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=3)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @property
    def unix(self) -> int:
        return int(self.now.timestamp())


@dataclass
class Participant:
    name: str
    data_dir: Path
    supervisor: JailSupervisor
    client: JailClient
    keys: PublicKeys
    store: SQLiteEventStore
    record: SignedNodeRecord | None = None
    sessions: dict[str, tuple[str, SessionCipher]] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return str(self.keys.node_id)

    async def log(self, *events: NewEvent) -> None:
        await self.store.append(list(events))


async def start_participant(
    name: str, out: Path, sockets: Path, clock: SimClock, registry: EventRegistry, node: bool
) -> Participant:
    """Create a keystore in a fresh data dir, start its jail, and open its log."""
    data_dir = out / name
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    keystore = data_dir / "keystore.json"
    passphrase = secrets.token_urlsafe(24)
    env = {**os.environ, "OPENRED_JAIL_PASSPHRASE": passphrase}
    subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
        [sys.executable, "-I", "-m", "crypto_jail", "init", "--keystore", str(keystore),
         "--kdf", "interactive", "--json"],
        env=env, check=True, capture_output=True,
    )
    supervisor = JailSupervisor(keystore, sockets / name / "jail.sock",
                                passphrase=passphrase.encode())
    await supervisor.start()
    client = JailClient(supervisor.socket_path, supervisor=supervisor)
    keys = await client.public_keys()
    store = await SQLiteEventStore.open(
        data_dir, await JailSigner.create(client), registry=registry,
        projections=node_projections() if node else directory_projections(), clock=clock,
        kind="node" if node else "directory",
    )
    return Participant(name, data_dir, supervisor, client, keys, store)


@contextlib.asynccontextmanager
async def network(
    out: Path, clock: SimClock
) -> AsyncIterator[tuple[Participant, list[Participant]]]:
    """The directory and the nodes, each with its own jail and log; all closed afterwards."""
    sockets = Path(tempfile.mkdtemp(prefix="openred-demo-"))
    started: list[Participant] = []
    try:
        directory = await start_participant("directory", out, sockets, clock,
                                            directory_registry(), node=False)
        started.append(directory)
        for name in NODES:
            started.append(await start_participant(name, out, sockets, clock, node_registry(),
                                                   node=True))
        yield directory, started[1:]
    finally:
        for p in started:
            await stop(p)
        shutil.rmtree(sockets, ignore_errors=True)


async def stop(p: Participant) -> None:
    """Close a participant's log (signing a final checkpoint), then its jail."""
    await p.store.close()
    await p.client.close()
    await p.supervisor.stop()


async def register(directory: Participant, node: Participant, clock: SimClock) -> None:
    api_url = f"http://127.0.0.1:{8701 + NODES.index(node.name)}"
    record = NodeRecord.build(sign_key=node.keys.sign_key, box_key=node.keys.box_key,
                              api_url=api_url, modules=["messaging"], issued_at=clock.unix,
                              version=1)
    node.record = await sign_record(record, node.client.sign)
    await directory.log(record_event(NODE_REGISTERED, node.record, clock.unix))
    await node.log(NewEvent(ev.node_stream(node.node_id), ev.NODE_REGISTERED, {
        "directory": DIRECTORY_URL, "node_id": node.node_id, "api_url": api_url,
    }))


async def discover(node: Participant, peers: list[Participant]) -> None:
    await node.log(*[
        NewEvent(ev.node_stream(p.node_id), ev.PEER_DISCOVERED, {
            "node_id": p.node_id, "api_url": f"http://127.0.0.1:{8701 + NODES.index(p.name)}",
            "sign_key": p.keys.sign_key.b64url(), "box_key": p.keys.box_key.b64url(),
        })
        for p in peers if p is not node
    ])


@dataclass
class Delivered:
    grant: Grant
    canonical: bytes
    signature: bytes
    sealed: Mapping[str, bytes]


async def grant_connection(
    directory: Participant, a: Participant, b: Participant, clock: SimClock
) -> Delivered:
    """The directory's part: mint, sign, seal, log ConnectionGranted — and forget the secret."""
    method = select_crypto_method(clock.now, "hourly")
    assert a.record is not None and b.record is not None, "both nodes registered their records"
    grant = new_grant(a.keys.node_id, b.keys.node_id, grant_id=secrets.token_bytes(16),
                      issued_at=clock.unix, suite=DEFAULT_REGISTRY.suite(method),
                      initiator_record=a.record.hash, responder_record=b.record.hash)
    canonical = grant.canonical_bytes()
    signature = await directory.client.sign("grant", canonical)
    token_a, token_b = mint(grant, secrets.token_bytes(32))
    sealed = {
        a.name: seal_token(token_a, a.keys.box_key),
        b.name: seal_token(token_b, b.keys.box_key),
    }
    del token_a, token_b
    await directory.log(NewEvent(grant_stream(grant.grant_id), CONNECTION_GRANTED,
                                 connection_granted_payload(grant)))
    return Delivered(grant, canonical, signature, sealed)


async def receive_token(
    node: Participant, d: Delivered, directory: Participant, role: str, peer: Participant
) -> None:
    """A node's part of delivery: check the directory's signature, check the seal, log it."""
    verify_signed_grant(d.canonical, d.signature, directory.keys.sign_key)
    await node.client.open_sealed(d.sealed[node.name])
    await node.log(NewEvent(ev.grant_stream(d.grant.grant_id), ev.TOKEN_RECEIVED, {
        "grant_id": d.grant.grant_id, "peer": peer.node_id, "role": role,
        "suite": d.grant.suite, "issued_at": d.grant.issued_at,
        "expires_at": d.grant.expires_at, "grant": b64url(d.canonical),
        "grant_signature": b64url(d.signature), "sealed_token": b64url(d.sealed[node.name]),
    }))


async def establish(
    a: Participant, b: Participant, d: Delivered, clock: SimClock
) -> tuple[str, bytes]:
    """KKpsk0 between two jails; both sides log TokenConsumed and SessionEstablished."""
    started = await a.client.noise_initiate(
        suite=d.grant.suite, grant=d.canonical, grant_signature=d.signature,
        sealed_token=d.sealed[a.name], remote_static=b.keys.box_key.raw,
    )
    responded = await b.client.noise_respond(
        suite=d.grant.suite, grant=d.canonical, grant_signature=d.signature,
        sealed_token=d.sealed[b.name], remote_static=a.keys.box_key.raw,
        message=started.message,
    )
    a_keys = await a.client.noise_finish(started.handle, responded.message)
    session_id = b64url(a_keys.handshake_hash[:16])
    for node, keys, role, peer in ((a, a_keys, "initiator", b), (b, responded.keys,
                                                                  "responder", a)):
        await open_session(node, keys, role, peer, d, session_id, clock)
    return session_id, started.message


async def open_session(
    node: Participant, keys: SessionKeys, role: str, peer: Participant, d: Delivered,
    session_id: str, clock: SimClock,
) -> None:
    cipher = SessionCipher(d.grant.suite, keys.send_key, keys.recv_key)
    node.sessions[peer.name] = (session_id, cipher)
    wrapped = await node.client.wrap(f"session:{session_id}", cipher.to_state())
    await node.log(
        NewEvent(ev.grant_stream(d.grant.grant_id), ev.TOKEN_CONSUMED,
                 {"grant_id": d.grant.grant_id, "session_id": session_id}),
        NewEvent(ev.session_stream(session_id), ev.SESSION_ESTABLISHED, {
            "session_id": session_id, "peer": peer.node_id, "grant_id": d.grant.grant_id,
            "role": role, "suite": d.grant.suite, "expires_at": clock.unix + 24 * 3600,
            "wrapped_state": b64url(wrapped),
        }),
    )


async def send(sender: Participant, receiver: Participant, text: str) -> None:
    """An end-to-end encrypted message; each side keeps the body wrapped by its own jail."""
    session_id, out = sender.sessions[receiver.name]
    _, inbound = receiver.sessions[sender.name]
    body = text.encode()
    counter, ciphertext = out.encrypt(body, ad=session_id.encode())
    plaintext = inbound.decrypt(counter, ciphertext, ad=session_id.encode())
    message_id = b64url(secrets.token_bytes(16))
    label = f"message:{message_id}"
    await sender.log(NewEvent(ev.session_stream(session_id), ev.MESSAGE_SENT, {
        "message_id": message_id, "session_id": session_id, "peer": receiver.node_id,
        "size": len(body), "body": b64url(await sender.client.wrap(label, body)),
    }))
    await receiver.log(NewEvent(ev.session_stream(session_id), ev.MESSAGE_RECEIVED, {
        "message_id": message_id, "session_id": session_id, "peer": sender.node_id,
        "size": len(plaintext), "body": b64url(await receiver.client.wrap(label, plaintext)),
    }))


async def story(out: Path) -> list[Participant]:
    clock = SimClock()
    async with network(out, clock) as (directory, nodes):
        alice, bob, carol = nodes
        console.print("[bold]1.[/] Three nodes register with the directory and discover "
                      "each other")
        for node in nodes:
            await register(directory, node, clock)
        for node in nodes:
            await discover(node, nodes)

        console.print("[bold]2.[/] The directory mints paired tokens; each pair runs a Noise "
                      "KKpsk0 handshake between their jails")
        first_message = b""
        for a, b in ((alice, bob), (bob, carol), (carol, alice)):
            clock.advance(40)
            d = await grant_connection(directory, a, b, clock)
            await receive_token(a, d, directory, "initiator", b)
            await receive_token(b, d, directory, "responder", a)
            session_id, message1 = await establish(a, b, d, clock)
            console.print(f"   {a.name} ⇄ {b.name}: session {session_id} ({d.grant.suite})")
            if a is alice:
                first_message, replayed = message1, d

        console.print("[bold]3.[/] A captured handshake is replayed to bob: its grant was "
                      "consumed, so it is refused — and audited")
        held = await bob.store.query("SELECT grant_id FROM tokens WHERE grant_id = ?",
                                     (replayed.grant.grant_id,))
        assert not held and first_message, "bob must no longer hold the consumed grant"
        await bob.log(NewEvent(ev.grant_stream(replayed.grant.grant_id), ev.HANDSHAKE_REJECTED,
                               {"grant_id": replayed.grant.grant_id, "peer": alice.node_id,
                                "reason": "already_consumed"}))

        console.print("[bold]4.[/] The directory grants alice a connection to carol that "
                      "she never uses — then the directory goes offline")
        unused = await grant_connection(directory, alice, carol, clock)
        await receive_token(alice, unused, directory, "initiator", carol)
        await receive_token(carol, unused, directory, "responder", alice)
        await stop(directory)

        console.print("[bold]5.[/] With the directory down, messages keep flowing end to end, "
                      "encrypted by the session ciphers")
        chat = [
            (alice, bob, "Hi Bob, the directory is only needed to introduce us."),
            (bob, alice, "And now it is down: we still talk directly."),
            (bob, carol, "Carol, the backup finished at 02:00."),
            (carol, bob, "Thanks, I will verify my log tonight."),
            (carol, alice, "Alice, are you coming to the meetup?"),
            (alice, carol, "Yes — I will bring the printed checkpoints."),
        ]
        for round_ in range(ROUNDS):
            for sender, receiver, text in chat:
                clock.advance(7)
                await send(sender, receiver, text if round_ == 0 else f"{text} ({round_ + 1})")
        console.print(f"   {ROUNDS * len(chat)} messages sent and received")

        console.print("[bold]6.[/] The unused grant expires; a day later the sessions expire")
        clock.advance(301)
        for node in (alice, carol):
            await node.log(NewEvent(ev.grant_stream(unused.grant.grant_id), ev.TOKEN_EXPIRED,
                                    {"grant_id": unused.grant.grant_id}))
        clock.advance(24 * 3600)
        for node in nodes:
            for _peer, (session_id, _cipher) in node.sessions.items():
                await node.log(NewEvent(ev.session_stream(session_id), ev.SESSION_EXPIRED,
                                        {"session_id": session_id}))
        participants = [directory, *nodes]
    return participants


def summarize(out: Path, names: list[str]) -> bool:
    table = Table(title="audit_tools verify, for every participant")
    for column in ("participant", "node id", "entries", "checkpoints", "result"):
        table.add_column(column)
    all_ok = True
    for name in names:
        report = verify(out / name)
        all_ok &= report.ok
        node_id = report.origin.removeprefix("openred/")
        result = "[green]valid[/]" if report.ok else f"[red]{report.reason}[/]"
        table.add_row(name, node_id, str(report.entries), str(report.checkpoints_checked),
                      result)
    console.print(table)
    return all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openred.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-data"),
                        help="where the participants' data directories go (default demo-data)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]OpenRed demo[/] — writing each participant's log under {out}/")
    participants = asyncio.run(story(out))
    names = [p.name for p in participants]
    console.print()
    ok = summarize(out, names)
    console.print(f"\nCheck any log yourself:  .venv/bin/audit_tools verify {out}/alice\n"
                  f"State as of any entry:   .venv/bin/audit_tools replay {out}/bob --until 10")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
