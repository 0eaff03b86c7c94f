"""The jail's wire protocol: length-prefixed JSON frames over a Unix stream socket.

A frame is a 4-byte big-endian body length followed by the body; a body is at most
:data:`MAX_BODY` bytes of UTF-8 JSON. Requests are ``{"id": int, "op": str, "args": {...}}``;
answers are ``{"id": int, "ok": true, "result": {...}}`` or
``{"id": int | null, "ok": false, "error": {"code": str, "detail": str}}``. Binary values travel
as unpadded base64url strings. Both the jail and ``openred.crypto.client`` import this module,
so it uses the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from crypto_jail.errors import (
    BAD_REQUEST,
    FRAME_TOO_LARGE,
    MALFORMED_FRAME,
    FrameError,
    OpRefused,
)

__all__ = [
    "HEADER",
    "MAX_BATCH",
    "MAX_BODY",
    "MAX_DETAIL",
    "MAX_ID",
    "MAX_SIGN_MANY",
    "MAX_VALUES",
    "Request",
    "Response",
    "b64d",
    "b64e",
    "decode_json",
    "encode_error",
    "encode_frame",
    "encode_ok",
    "encode_request",
    "parse_request",
    "parse_response",
    "request_id_of",
]

HEADER = struct.Struct(">I")
MAX_BODY = 4 * 1024 * 1024
"""Largest body either side accepts (4 MiB); a bigger length prefix ends the connection."""
MAX_BATCH = 32768
"""Most entry hashes one ``sign_batch`` takes: its answer (N × 64 bytes) must fit in a frame."""
MAX_SIGN_MANY = 64
"""Most items one ``sign_many`` takes (each a structure ``sign`` accepts, at most 8 KiB)."""
MAX_ID = 2**53 - 1
"""Request ids are non-negative integers that survive any JSON implementation exactly."""
MAX_VALUES = 16384
"""Most JSON values a body larger than :data:`_SMALL_BODY` may hold, counted as its commas,
``{`` and ``[`` (the largest request, a full ``sign_many`` with proofs, has about 4,400). Tiny
values cost Python ~30 times their JSON size: a 4 MiB ``[{},{},...]`` was ~100 MB in the jail,
and its 128 clients could ask that at once."""
MAX_DETAIL = 1024
"""Longest error detail an answer carries (characters)."""
_SMALL_BODY = 64 * 1024
"""Bodies up to this size are parsed without counting (at most ~2 MB of objects)."""

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_REQUEST_KEYS = frozenset({"id", "op", "args"})


def b64e(raw: bytes) -> str:
    """Unpadded base64url, the encoding of every binary value on the wire."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: object, *, name: str = "value") -> bytes:
    """Decode strict unpadded base64url (one spelling per value); else OpRefused(bad_request)."""
    if not isinstance(text, str) or len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise OpRefused(BAD_REQUEST, f"{name} must be unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the regex rules these out
        raise OpRefused(BAD_REQUEST, f"{name} must be unpadded base64url") from exc
    if len(text) % 4 and b64e(raw) != text:  # non-zero trailing bits: a second spelling
        raise OpRefused(BAD_REQUEST, f"{name} is not canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(body: bytes) -> Any:
    """Parse a frame body as strict JSON (UTF-8, no duplicate keys, no NaN, at most
    :data:`MAX_VALUES` values in a large body); else FrameError."""
    if len(body) > _SMALL_BODY and (
        body.count(b",") + body.count(b"{") + body.count(b"[") > MAX_VALUES
    ):
        raise FrameError(MALFORMED_FRAME, "body holds too many JSON values", fatal=False)
    try:
        return json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError too
        raise FrameError(MALFORMED_FRAME, "body is not a JSON document", fatal=False) from exc


def encode_frame(obj: dict[str, Any]) -> bytes:
    """One frame carrying ``obj`` as compact JSON."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(body) > MAX_BODY:
        raise FrameError(FRAME_TOO_LARGE, f"body exceeds {MAX_BODY} bytes", fatal=False)
    return HEADER.pack(len(body)) + body


def encode_request(request_id: int, op: str, args: dict[str, Any]) -> bytes:
    """A request frame."""
    return encode_frame({"id": request_id, "op": op, "args": args})


def encode_ok(request_id: int, result: dict[str, Any]) -> bytes:
    """A success answer frame."""
    return encode_frame({"id": request_id, "ok": True, "result": result})


def encode_error(request_id: int | None, code: str, detail: str) -> bytes:
    """An error answer frame (``request_id`` is None when the request could not be read).

    ``detail`` is cut to :data:`MAX_DETAIL` characters: a refusal may name what the request
    held (an unexpected field), and a name of a megabyte must not make an answer too large
    for a frame.
    """
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    return encode_frame({"id": request_id, "ok": False, "error": {"code": code, "detail": detail}})


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def parse_request(obj: Any) -> Request:
    """Check the request envelope; OpRefused(bad_request) names what is wrong.

    The server answers a refused envelope with the id from :func:`request_id_of`, so a request
    with a good id but bad fields still gets an error its sender can match.
    """
    if not isinstance(obj, dict):
        raise OpRefused(BAD_REQUEST, "a request is a JSON object")
    if not _is_id(obj.get("id")):
        raise OpRefused(BAD_REQUEST, f"id must be an integer in [0, {MAX_ID}]")
    extra = set(obj) - _REQUEST_KEYS
    if extra:
        raise OpRefused(BAD_REQUEST, f"unexpected request fields {sorted(extra)}")
    op = obj.get("op")
    if not isinstance(op, str):
        raise OpRefused(BAD_REQUEST, "op must be a string")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise OpRefused(BAD_REQUEST, "args must be a JSON object")
    return Request(obj["id"], op, args)


def request_id_of(obj: Any) -> int | None:
    """The request id if ``obj`` carries a valid one (for error answers), else None."""
    if isinstance(obj, dict) and _is_id(obj.get("id")):
        value: int = obj["id"]
        return value
    return None


@dataclass(frozen=True, slots=True)
class Response:
    """One parsed answer: ``result`` when ok, otherwise ``code`` and ``detail``."""

    id: int | None
    ok: bool
    result: dict[str, Any]
    code: str = ""
    detail: str = ""


def parse_response(body: bytes) -> Response:
    """Parse an answer body; FrameError(malformed_frame) if it is not a well-formed answer."""
    obj = decode_json(body)

    def bad(why: str) -> FrameError:
        return FrameError(MALFORMED_FRAME, f"malformed answer: {why}", fatal=True)

    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise bad("not an answer object")
    request_id = obj.get("id")
    if request_id is not None and not _is_id(request_id):
        raise bad("bad id")
    if obj["ok"]:
        result = obj.get("result")
        if not isinstance(result, dict) or request_id is None:
            raise bad("ok answer without id or result object")
        return Response(request_id, True, result)
    error = obj.get("error")
    if not isinstance(error, dict):
        raise bad("error answer without error object")
    code, detail = error.get("code"), error.get("detail")
    if not isinstance(code, str) or not isinstance(detail, str):
        raise bad("error code and detail must be strings")
    return Response(request_id, False, {}, code, detail)
