"""The binary P2P envelope that carries file chunks (openred.node.envelope_binary).

The parser alone, then real nodes over HTTP: a binary envelope is the JSON one in another
encoding — the same answer, the same refusals for anything tampered, replayed or moved to
another session, route or request — and malformed or oversized bodies are clear 4xx problems.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openred.crypto.identity import b64url
from openred.errors import DecryptionFailed, NodeRefused
from openred.modules.file_sharing.service import CHUNK, OFFER
from openred.node.envelope import MAX_CIPHERTEXT, Envelope, SessionChannel
from openred.node.envelope_binary import (
    HEADER_LEN,
    MAGIC,
    MAX_ANSWER_CIPHERTEXT,
    MEDIA_TYPE,
    decode,
    encode,
)
from tests.modules.file_sharing.world import Pair, files, served_pair
from tests.node.test_app import granted
from tests.node.world import Directory, JailPair

HOUR = 3600
SID = b"\x07" * 16


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    async with served_pair(jails, directory, tmp_path) as served:
        yield served


# -- the format --

def test_an_envelope_survives_the_round_trip_byte_for_byte() -> None:
    envelope = Envelope(b64url(SID), 2**40 + 5, os.urandom(1000))
    raw = encode(envelope)
    assert raw == MAGIC + SID + struct.pack(">Q", 2**40 + 5) + envelope.ciphertext
    assert len(raw) == HEADER_LEN + 1000
    assert decode(raw) == envelope
    # The same three fields as the JSON envelope.
    assert Envelope.from_json(envelope.to_json()) == decode(raw)


@pytest.mark.parametrize("cut", range(HEADER_LEN))
def test_a_truncated_header_is_malformed(cut: int) -> None:
    raw = encode(Envelope(b64url(SID), 1, b"x" * 32))
    with pytest.raises(NodeRefused) as caught:
        decode(raw[:cut])
    assert (caught.value.status, caught.value.reason) == (400, "malformed-envelope")


@pytest.mark.parametrize("magic", [b"OREB\x02", b"OREB\x00", b"oreb\x01", b'{"ses'])
def test_another_magic_or_version_is_malformed(magic: bytes) -> None:
    raw = magic + encode(Envelope(b64url(SID), 1, b"x" * 32))[len(MAGIC):]
    with pytest.raises(NodeRefused) as caught:
        decode(raw)
    assert (caught.value.status, caught.value.reason) == (400, "malformed-envelope")


def test_the_reserved_counter_is_malformed() -> None:
    raw = MAGIC + SID + b"\xff" * 8 + b"x" * 32
    with pytest.raises(NodeRefused) as caught:
        decode(raw)
    assert (caught.value.status, caught.value.reason) == (400, "malformed-envelope")
    assert decode(MAGIC + SID + b"\xff" * 7 + b"\xfe").counter == 2**64 - 2


def test_an_oversized_ciphertext_is_refused() -> None:
    header = MAGIC + SID + struct.pack(">Q", 1)
    assert len(decode(header + bytes(MAX_CIPHERTEXT)).ciphertext) == MAX_CIPHERTEXT
    with pytest.raises(NodeRefused) as caught:
        decode(header + bytes(MAX_CIPHERTEXT + 1))
    assert (caught.value.status, caught.value.reason) == (413, "envelope-too-large")
    # Answers may be larger (a file chunk), within their own bound.
    big = header + bytes(MAX_ANSWER_CIPHERTEXT)
    assert len(decode(big, max_ciphertext=MAX_ANSWER_CIPHERTEXT).ciphertext) == len(big) - 29
    with pytest.raises(NodeRefused) as caught:
        decode(big + b"\x00", max_ciphertext=MAX_ANSWER_CIPHERTEXT)
    assert caught.value.status == 413


# -- on real nodes --

async def post(url: str, body: bytes, content_type: str = MEDIA_TYPE) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.post(
        url, data=body, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, resp.content_type, await resp.read()


def problem_of(status: int, kind: str, body: bytes) -> tuple[int, str]:
    assert kind == "application/problem+json", body[:200]
    return status, json.loads(body)["type"].rsplit(":", 1)[-1]


async def offer_and_channel(pair: Pair, tmp_path: Path) -> tuple[str, SessionChannel, bytes]:
    """A offers a small file to B; B's channel to A and a chunk request for the first chunk."""
    (tmp_path / "f").write_bytes(os.urandom(5000))
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=HOUR)
    channel = await pair.b.services.keeper.channel(pair.session_id, pair.b.services.now())
    request = json.dumps({"offer_id": offer.offer_id, "offset": 0, "length": 5000}).encode()
    return f"{pair.a.url}/api/v3/p2p/", channel, request


async def log_size(pair: Pair) -> int:
    return len(await pair.a.services.store.read())


async def test_binary_and_json_envelopes_get_the_same_answer(pair: Pair, tmp_path: Path) -> None:
    base, channel, request = await offer_and_channel(pair, tmp_path)
    sealed = channel.seal_request(CHUNK, request)
    status, kind, body = await post(f"{base}{CHUNK}", encode(sealed))
    assert (status, kind) == (200, MEDIA_TYPE)
    answer = decode(body, max_ciphertext=MAX_ANSWER_CIPHERTEXT)
    assert answer.session_id == sealed.session_id
    binary = channel.open_answer(CHUNK, sealed.counter, answer)
    sealed = channel.seal_request(CHUNK, request)
    async with aiohttp.ClientSession() as session, session.post(
        f"{base}{CHUNK}", json=sealed.to_json()
    ) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        plain = channel.open_answer(CHUNK, sealed.counter, Envelope.from_json(await resp.json()))
    assert binary == plain and plain.endswith((tmp_path / "f").read_bytes())


async def test_a_replayed_binary_envelope_is_refused_in_either_encoding(
    pair: Pair, tmp_path: Path
) -> None:
    base, channel, request = await offer_and_channel(pair, tmp_path)
    sealed = channel.seal_request(CHUNK, request)
    assert (await post(f"{base}{CHUNK}", encode(sealed)))[0] == 200
    before = await log_size(pair)
    assert problem_of(*await post(f"{base}{CHUNK}", encode(sealed))) == (409, "replayed-message")
    async with aiohttp.ClientSession() as session, session.post(
        f"{base}{CHUNK}", json=sealed.to_json()
    ) as resp:
        assert resp.status == 409
    # And one first sent as JSON is a replay as binary.
    other = channel.seal_request(CHUNK, request)
    async with aiohttp.ClientSession() as session, session.post(
        f"{base}{CHUNK}", json=other.to_json()
    ) as resp:
        assert resp.status == 200
    assert problem_of(*await post(f"{base}{CHUNK}", encode(other))) == (409, "replayed-message")
    assert await log_size(pair) == before


async def test_a_tampered_binary_envelope_does_not_authenticate(
    pair: Pair, tmp_path: Path
) -> None:
    base, channel, request = await offer_and_channel(pair, tmp_path)
    before = await log_size(pair)
    for flip in (HEADER_LEN, HEADER_LEN + 10, -1):  # ciphertext, again, the tag
        raw = bytearray(encode(channel.seal_request(CHUNK, request)))
        raw[flip] ^= 0x01
        assert problem_of(*await post(f"{base}{CHUNK}", bytes(raw))) == (401, "message-rejected")
    # The counter is the nonce and in no way a free field.
    raw = bytearray(encode(channel.seal_request(CHUNK, request)))
    raw[HEADER_LEN - 1] ^= 0x40
    assert problem_of(*await post(f"{base}{CHUNK}", bytes(raw))) == (401, "message-rejected")
    # A session id nobody has.
    raw = bytearray(encode(channel.seal_request(CHUNK, request)))
    raw[len(MAGIC)] ^= 0x01
    assert problem_of(*await post(f"{base}{CHUNK}", bytes(raw))) == (404, "unknown-session")
    assert await log_size(pair) == before


async def test_a_binary_envelope_moved_to_another_route_or_session_is_refused(
    pair: Pair, tmp_path: Path
) -> None:
    base, channel, request = await offer_and_channel(pair, tmp_path)
    # Another action of the same module.
    sealed = channel.seal_request(CHUNK, request)
    assert problem_of(*await post(f"{base}{OFFER}", encode(sealed))) == (401, "message-rejected")
    # Another session between the same two nodes.
    other_id = (await pair.a.services.connect(await granted(pair.world))).session_id
    assert other_id != pair.session_id
    sealed = channel.seal_request(CHUNK, request)
    moved = Envelope(other_id, sealed.counter, sealed.ciphertext)
    assert problem_of(*await post(f"{base}{CHUNK}", encode(moved))) == (401, "message-rejected")
    # The message itself is still good on its own session.
    assert (await post(f"{base}{CHUNK}", encode(sealed)))[0] == 200


async def test_a_binary_answer_opens_only_for_its_own_request(
    pair: Pair, tmp_path: Path
) -> None:
    base, channel, request = await offer_and_channel(pair, tmp_path)
    first = channel.seal_request(CHUNK, request)
    second = channel.seal_request(CHUNK, request)
    answers = []
    for sealed in (first, second):
        status, _, body = await post(f"{base}{CHUNK}", encode(sealed))
        assert status == 200
        answers.append(decode(body, max_ciphertext=MAX_ANSWER_CIPHERTEXT))
    with pytest.raises(DecryptionFailed):  # bound to the first request's counter
        channel.open_answer(CHUNK, second.counter, answers[0])
    with pytest.raises(NodeRefused) as refused:  # not a route we asked
        channel.open_answer(OFFER, first.counter, answers[0])
    assert refused.value.reason == "unexpected-answer"
    assert channel.open_answer(CHUNK, first.counter, answers[0]).endswith(
        (tmp_path / "f").read_bytes())


@pytest.mark.parametrize("body,status,slug", [
    (b"", 400, "malformed-envelope"),
    (MAGIC + SID, 400, "malformed-envelope"),
    (b'{"session_id": "x", "counter": 1, "ciphertext": ""}', 400, "malformed-envelope"),
    (MAGIC + SID + struct.pack(">Q", 1) + bytes(MAX_CIPHERTEXT + 1), 413,
     "envelope-too-large"),
])
async def test_malformed_or_oversized_binary_bodies_are_clear_problems(
    pair: Pair, tmp_path: Path, body: bytes, status: int, slug: str
) -> None:
    base, _, _ = await offer_and_channel(pair, tmp_path)
    before = await log_size(pair)
    assert problem_of(*await post(f"{base}{CHUNK}", body)) == (status, slug)
    assert problem_of(*await post(f"{base}nope/chunk", body))[0] in (404, status)
    assert await log_size(pair) == before


async def test_a_json_body_still_takes_the_json_path(pair: Pair, tmp_path: Path) -> None:
    base, channel, request = await offer_and_channel(pair, tmp_path)
    sealed = channel.seal_request(CHUNK, request)
    status, kind, body = await post(f"{base}{CHUNK}", json.dumps(sealed.to_json()).encode(),
                                    "application/json")
    assert (status, kind) == (200, "application/json")
    answer: Any = json.loads(body)
    assert channel.open_answer(CHUNK, sealed.counter, Envelope.from_json(answer))
