"""Pseudonymized bundles: every peer hidden, and every check still made.

A bundle marked pseudonymized proves what an unmarked one proves except the contents of its
rewritten peer entries. The mark is an unsigned header field: flipping it on any bundle, intact
or tampered, must not change what verify concludes about anything else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import pytest
from click.testing import CliRunner

from audit_tools.cli import main as cli_main
from audit_tools.verify import Report, verify
from openred.crypto.grants import mint_tokens, new_grant, seal_token
from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url, from_b64url
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.vectors import make_fixtures as mf

VECTORS = Path(mf.__file__).parent
OWNER = InProcessSigner.from_seed(b"\x41" * 32)
DIRECTORY = nacl.signing.SigningKey(b"\x42" * 32)
SUITE = "25519_ChaChaPoly_SHA256"


@dataclass(frozen=True)
class Peer:
    node_id: NodeId
    sign_key: SignKey
    box_key: BoxKey
    api_url: str


def peer(i: int) -> Peer:
    sign_key = SignKey(bytes(nacl.signing.SigningKey(bytes([0x50 + i]) * 32).verify_key))
    box_key = BoxKey(bytes(nacl.public.PrivateKey(bytes([0x60 + i]) * 32).public_key))
    return Peer(sign_key.node_id, sign_key, box_key, f"https://node{i}.example.org:8443/api")


PEERS = [peer(i) for i in range(3)]


@dataclass(frozen=True)
class Secrets:
    """Everything in the log that names or locates a peer."""

    values: frozenset[str]


async def build(path: Path) -> Secrets:
    owner_id = OWNER.sign_key.node_id
    secrets: set[str] = set()
    store = await SQLiteEventStore.open(path, OWNER, registry=node_registry(),
                                        projections=node_projections(), checkpoint_every=4,
                                        checkpoint_interval=0)
    try:
        await store.append([NewEvent(ev.node_stream(owner_id), ev.NODE_REGISTERED, {
            "directory": "https://directory.example", "node_id": owner_id,
            "api_url": "https://owner.example",
        })])
        for i, p in enumerate(PEERS):
            secrets |= {p.node_id, p.sign_key.b64url(), p.box_key.b64url(), p.api_url}
            await store.append([NewEvent(ev.node_stream(p.node_id), ev.PEER_DISCOVERED, {
                "node_id": p.node_id, "api_url": p.api_url, "sign_key": p.sign_key.b64url(),
                "box_key": p.box_key.b64url(),
            })])
            # A real grant, minted and signed as the directory does, the owner initiating.
            peer_record = bytes([0xB0 + i]) * 32
            grant = new_grant(owner_id, p.node_id, grant_id=bytes([i + 1]) * 16,
                              issued_at=1_790_000_000 + i, suite=SUITE,
                              initiator_record=bytes([0xA0 + i]) * 32,
                              responder_record=peer_record)
            canonical = grant.canonical_bytes()
            signature = DIRECTORY.sign(canonical).signature
            token_a, _token_b = mint_tokens(grant, bytes([0x70 + i]) * 32)
            sealed = seal_token(token_a, BoxKey(bytes(
                nacl.public.PrivateKey(b"\x41" * 32).public_key)))
            secrets |= {grant.grant_id, b64url(signature), b64url(canonical), b64url(peer_record)}
            session_id = b64url(bytes([0x80 + i]) * 16)
            await store.append([
                NewEvent(ev.grant_stream(grant.grant_id), ev.TOKEN_RECEIVED, {
                    "grant_id": grant.grant_id, "peer": p.node_id, "role": "initiator",
                    "suite": SUITE, "issued_at": grant.issued_at,
                    "expires_at": grant.expires_at, "grant": b64url(canonical),
                    "grant_signature": b64url(signature), "sealed_token": b64url(sealed),
                }),
                NewEvent(ev.grant_stream(grant.grant_id), ev.TOKEN_CONSUMED,
                         {"grant_id": grant.grant_id, "session_id": session_id}),
                NewEvent(ev.session_stream(session_id), ev.SESSION_ESTABLISHED, {
                    "session_id": session_id, "peer": p.node_id, "grant_id": grant.grant_id,
                    "role": "initiator", "suite": SUITE, "expires_at": grant.expires_at,
                    "wrapped_state": b64url(bytes(100)),
                }),
                NewEvent(ev.session_stream(session_id), ev.MESSAGE_RECEIVED, {
                    "message_id": b64url(bytes([0x90 + i]) * 16), "session_id": session_id,
                    "peer": p.node_id, "size": 12, "body": b64url(bytes(40)),
                }),
            ])
    finally:
        await store.close()
    return Secrets(frozenset(secrets))


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Secrets]:
    path = tmp_path_factory.mktemp("pseudo") / "openred.db"
    return path, asyncio.run(build(path))


def cli(*args: str | Path) -> Any:
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, base64url strings that carry JSON decoded and walked too."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value
        if re.fullmatch(r"[A-Za-z0-9_-]{4,}", value):
            try:
                raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
                inner = json.loads(raw)
            except ValueError:
                return
            yield from strings(inner)


def decoded_bundle(bundle: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = bundle.read_bytes().splitlines()
    entries = []
    for line in lines[1:]:
        entry = json.loads(line)
        entry["payload"] = json.loads(from_b64url(entry["payload"]))
        entries.append(entry)
    return json.loads(lines[0]), entries


def test_pseudonymization_hides_every_field_that_names_or_locates_a_peer(
    log: tuple[Path, Secrets], tmp_path: Path,
) -> None:
    db, secrets = log
    bundle = tmp_path / "pseudo.jsonl"
    assert cli("export", db, "--out", bundle, "--pseudonymize").exit_code == 0
    header, entries = decoded_bundle(bundle)
    found = {s for e in entries for s in strings(e)} | set(strings(header))
    # The decoded, walked strings would show them: the unpseudonymized export does.
    plain = tmp_path / "plain.jsonl"
    assert cli("export", db, "--out", plain).exit_code == 0
    plain_found = {s for e in decoded_bundle(plain)[1] for s in strings(e)}
    assert secrets.values <= plain_found
    for secret in secrets.values:
        leaks = [s for s in found if secret in s]
        assert not leaks, (secret, leaks)
    # Ids inside the embedded grant were rewritten consistently with the payload's own ids.
    received = [e["payload"] for e in entries if e["type"] == ev.TOKEN_RECEIVED]
    for payload in received:
        grant = json.loads(from_b64url(payload["grant"]))
        assert grant["responder"] == payload["peer"]
        assert grant["initiator"] == OWNER.sign_key.node_id
        assert grant["grant_id"] == payload["grant_id"]
    # The owner stays, and the bundle still verifies with every check made.
    assert OWNER.sign_key.node_id in found and OWNER.sign_key.b64url() in found
    report = verify(bundle, key=OWNER.sign_key, jobs=1)
    assert report.ok, report.reason
    assert report.pseudonymized and report.rewritten == len(entries) - 1 - 0  # all but genesis
    assert report.checkpoints_checked > 0


# -- the mark switches nothing off ------------------------------------------------------------


def flipped(bundle: Path, out: Path, **header_changes: Any) -> Path:
    lines = bundle.read_bytes().splitlines(keepends=True)
    header = json.loads(lines[0])
    header.update(header_changes)
    out.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n"
                    + b"".join(lines[1:]))
    return out


def outcome(report: Report) -> tuple[bool, list[tuple[int, str]], int | None, str]:
    return (report.ok, [(s.number, s.status) for s in report.steps], report.failed_seq,
            report.reason)


def _fixtures() -> list[dict[str, Any]]:
    fixtures: list[dict[str, Any]] = json.loads((VECTORS / mf.INDEX_NAME).read_text())[
        "fixtures"]
    return fixtures


@pytest.mark.parametrize("fixture", _fixtures(), ids=lambda f: str(f["file"]))
def test_marking_any_golden_bundle_pseudonymized_changes_no_verdict(
    fixture: dict[str, Any], tmp_path: Path,
) -> None:
    note = (VECTORS / fixture["checkpoint"]).read_bytes() if fixture["checkpoint"] else None
    key = SignKey(from_b64url(fixture["key"])) if fixture["key"] else None
    plain = verify(VECTORS / fixture["file"], key=key, checkpoint=note, jobs=1)
    marked = verify(flipped(VECTORS / fixture["file"], tmp_path / "m.jsonl", pseudonymized=True),
                    key=key, checkpoint=note, jobs=1)
    assert marked.pseudonymized and marked.rewritten == 0
    assert outcome(marked)[::2] == outcome(plain)[::2]
    assert [n for n, status in outcome(marked)[1] if status == "failed"] == \
        [n for n, status in outcome(plain)[1] if status == "failed"]


def _edit_entry(bundle: Path, out: Path, line: int, changes: dict[str, Any]) -> Path:
    lines = bundle.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[line])
    entry.update(changes)
    lines[line] = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    out.write_bytes(b"".join(lines))
    return out


@pytest.mark.parametrize(("seq", "changes", "step", "reason"), [
    (1, {"recorded_at": "2020-01-01T00:00:00.000000Z"}, 3, "entry_hash does not match"),
    (mf.ROTATION_SEQ, {"recorded_at": "2020-01-01T00:00:00.000000Z"}, 3,
     "entry_hash does not match"),
    (12, {"type": "KeyRotated"}, 3, "entry_hash does not match"),
    (12, {"stream": "log"}, 3, "entry_hash does not match"),
    (12, {"signature": b64url(bytes(64))}, 4, "signature does not verify"),
    (12, {"prev_hash": b64url(bytes(32))}, 3, "prev_hash does not match"),
    (12, {"seq": 13}, 3, "sequence broken"),
])
def test_a_marked_bundle_still_proves_the_log_stream_order_links_and_signatures(
    tmp_path: Path, seq: int, changes: dict[str, Any], step: int, reason: str,
) -> None:
    marked = flipped(VECTORS / "good.jsonl", tmp_path / "marked.jsonl", pseudonymized=True)
    bad = _edit_entry(marked, tmp_path / "bad.jsonl", seq, changes)
    report = verify(bad, jobs=1)
    assert not report.ok
    assert report.failed_seq == seq and reason in report.reason, report.reason
    assert [s.number for s in report.steps if s.status == "failed"] == [step]


@pytest.mark.parametrize(("header", "reason"), [
    ({"count": 30}, "the bundle header counts 30 entries, the bundle holds 24"),
    ({"key_history": [{"from_seq": 1, "sign_key": b64url(bytes(32))}]},
     "the bundle header's key history is not the one its entries sign"),
    ({"checkpoints": []}, ""),
    ({"checkpoints": [], "count": 99}, "the bundle header counts 99 entries, the bundle holds 24"),
])
def test_a_marked_bundle_checks_its_header_claims(tmp_path: Path, header: dict[str, Any],
                                                  reason: str) -> None:
    bad = flipped(VECTORS / "good.jsonl", tmp_path / "bad.jsonl", pseudonymized=True, **header)
    report = verify(bad, jobs=1)
    if reason:
        assert not report.ok and reason in report.reason, report.reason
    else:
        # Checkpoints stripped from the header: still valid entries, but nothing covers them,
        # and verify says so instead of looking healthy.
        assert report.ok and report.uncovered == 24
        assert report.steps[4].status == "warning"


def test_a_pseudonymized_bundle_with_a_forged_rewritten_entry_is_caught_by_its_links(
    log: tuple[Path, Secrets], tmp_path: Path,
) -> None:
    db, _ = log
    bundle = tmp_path / "pseudo.jsonl"
    assert cli("export", db, "--out", bundle, "--pseudonymize").exit_code == 0
    lines = bundle.read_bytes().splitlines()
    entry = json.loads(lines[3])
    # A rewritten payload may differ from its hash, but not its link, seq or signature.
    bad = _edit_entry(bundle, tmp_path / "bad.jsonl", 3,
                      {"entry_hash": b64url(bytes(32)), "prev_hash": entry["prev_hash"]})
    report = verify(bad, jobs=1)
    assert not report.ok
    assert (report.failed_seq, report.reason) == (3, "signature does not verify")


def test_a_pseudonym_key_file_too_short_or_missing_is_refused_saying_how_to_make_one(
    log: tuple[Path, Secrets], tmp_path: Path,
) -> None:
    """An empty key file was taken as the key b"": pseudonyms anyone could recompute from the
    (public) node ids. A missing one said only "No such file or directory", though the help
    said "random if absent"."""
    path, _ = log
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    for key_file in (short, tmp_path / "absent.key"):
        out = tmp_path / f"{key_file.stem}.jsonl"
        result = cli("export", path, "--out", out, "--pseudonymize",
                     "--pseudonym-key-file", key_file)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "head -c 32 /dev/urandom" in lines[0], result.output
        assert not out.exists()
    good = tmp_path / "good.key"
    good.write_bytes(bytes(range(32)))
    result = cli("export", path, "--out", tmp_path / "good.jsonl", "--pseudonymize",
                 "--pseudonym-key-file", good)
    assert result.exit_code == 0, result.output
