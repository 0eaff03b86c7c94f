"""The jail's frame format: strict base64url, strict JSON, envelopes, lengths and stalls."""

from __future__ import annotations

import json
import struct

import pytest

from crypto_jail.errors import FrameError, OpRefused
from crypto_jail.protocol import (
    MAX_BODY,
    b64d,
    b64e,
    decode_json,
    encode_error,
    encode_frame,
    encode_ok,
    encode_request,
    parse_request,
    parse_response,
    request_id_of,
)


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xff" * 31, bytes(range(256))])
def test_b64_roundtrip(raw: bytes) -> None:
    text = b64e(raw)
    assert "=" not in text
    assert b64d(text) == raw


@pytest.mark.parametrize(
    "text",
    ["AA==", "A", "AB+/", "a b", "AB\n", "AB", 17, None, b"AAAA"],
)
def test_b64d_refuses_other_spellings(text: object) -> None:
    # "AB" has non-zero trailing bits ("AA" is the one spelling of b"\x00"); padding,
    # standard-alphabet characters, whitespace and non-strings are refused.
    with pytest.raises(OpRefused) as info:
        b64d(text, name="data")
    assert info.value.code == "bad_request"
    assert "data" in info.value.detail


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b'{"a":1,"a":2}', b"NaN", b'{"x": Infinity}', b"[" * 100_000],
)
def test_decode_json_refuses_malformed(body: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode_json(body)
    assert info.value.code == "malformed_frame"
    assert not info.value.fatal


def test_request_roundtrip() -> None:
    frame = encode_request(7, "sign", {"kind": "entry_hash", "data": "AA"})
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    request = parse_request(decode_json(frame[4:]))
    assert (request.id, request.op) == (7, "sign")
    assert request.args == {"kind": "entry_hash", "data": "AA"}


@pytest.mark.parametrize(
    ("obj", "expected_id"),
    [
        ([], None),
        ({"op": "sign"}, None),
        ({"id": True, "op": "sign"}, None),
        ({"id": -1, "op": "sign"}, None),
        ({"id": 2**53, "op": "sign"}, None),
        ({"id": 1.5, "op": "sign"}, None),
        ({"id": 3, "op": 5}, 3),
        ({"id": 4, "op": "sign", "args": []}, 4),
        ({"id": 5, "op": "sign", "args": {}, "extra": 1}, 5),
    ],
)
def test_parse_request_refuses_bad_envelopes(obj: object, expected_id: int | None) -> None:
    with pytest.raises(OpRefused) as info:
        parse_request(obj)
    assert info.value.code == "bad_request"
    assert request_id_of(obj) == expected_id


def test_missing_args_means_empty() -> None:
    assert parse_request({"id": 0, "op": "public_keys"}).args == {}


def test_answers_parse_back() -> None:
    ok = parse_response(encode_ok(9, {"x": "y"})[4:])
    assert (ok.id, ok.ok, ok.result) == (9, True, {"x": "y"})
    err = parse_response(encode_error(None, "refused", "no")[4:])
    assert (err.id, err.ok, err.code, err.detail) == (None, False, "refused", "no")


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"id": 1},
        {"id": 1, "ok": "yes"},
        {"id": 1, "ok": True},
        {"id": None, "ok": True, "result": {}},
        {"id": 1, "ok": False},
        {"id": 1, "ok": False, "error": {"code": 1, "detail": "x"}},
        {"id": "1", "ok": True, "result": {}},
    ],
)
def test_parse_response_refuses_malformed_answers(obj: object) -> None:
    with pytest.raises(FrameError) as info:
        parse_response(json.dumps(obj).encode())
    assert info.value.fatal


def test_encode_frame_refuses_oversized_bodies() -> None:
    with pytest.raises(FrameError) as info:
        encode_frame({"data": "A" * MAX_BODY})
    assert info.value.code == "frame_too_large"
