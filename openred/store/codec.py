"""Canonical payload bytes and the entry-hash encoding of the log (DESIGN §8).

Payloads are RFC 8785 (JCS) canonical JSON. The ``rfc8785`` library is the reference; a fast
path produces the same bytes with the standard library for the common case (keys of ASCII or
other characters below U+D800, strings, safe integers, booleans, null, nested objects and
arrays) and falls back to the library for anything else (floats, keys with characters from
U+D800 up, big integers, strings the fast path cannot encode). Property tests hold the two
equal.

The entry hash is SHA-256 over a domain-separated, length-prefixed encoding, so no byte can
move across a field boundary without changing the hash::

    entry_hash = SHA-256( "openred/v3 log entry" 0x00
                          u64 seq ‖ lp(stream) ‖ u64 stream_version ‖ lp(type)
                          ‖ u32 schema_version ‖ lp(recorded_at) ‖ lp(payload) ‖ prev_hash )

where integers are big-endian, ``lp(x) = u32(len(x)) ‖ x`` and ``prev_hash`` is 32 bytes
(all zero for the first entry).
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import struct
from collections.abc import Callable, Mapping
from typing import Any

import rfc8785

ENTRY_DOMAIN = b"openred/v3 log entry\x00"
GENESIS_PREV_HASH = bytes(32)
HASH_SIZE = 32
SIGNATURE_SIZE = 64
_SAFE_INT = 2**53 - 1
_FIRST_SURROGATE = "\ud800"

_encode_json = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def _not_json(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _c_encoder() -> Callable[[Any], str] | None:
    """``_encode_json`` without its per-call set-up: the C encoder it builds, built once.

    ``JSONEncoder.encode`` makes a new ``_json.Encoder`` with these very settings on every call
    (sorted keys, ``,``/``:`` separators, no ASCII escaping, NaN refused). Without the
    circular-reference check: only values :func:`_fast_path_ok` accepted reach it, and that
    walk never accepts a cycle. None where the C accelerator is missing or takes other
    arguments (then ``_encode_json`` is used, as before).
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # private to json; typeshed omits it
    if make is None:  # pragma: no cover - CPython always has it
        return None
    try:
        encoder = make(None, _not_json, json.encoder.encode_basestring, None, ":", ",", True,
                       False, False)
    except TypeError:  # pragma: no cover - a Python whose private encoder takes other arguments
        return None

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))  # the chunks JSONEncoder.encode joins

    return encode


_encode_fast = _c_encoder() or _encode_json


def _fast_path_ok(value: Any) -> bool:
    """True when the standard library's sorted JSON equals RFC 8785 for ``value``.

    A container met twice (a value that contains itself, or one shared by two places) is left
    to the library: the walk keeps the ids of the containers it took, so it always ends.
    """
    stack = [value]
    taken: set[int] = set()  # ids of the containers taken (all alive: no id is reused)
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            count = len(taken)
            taken.add(id(item))
            if len(taken) == count:
                return False
            for key, sub in item.items():
                # RFC 8785 sorts keys by UTF-16 code units; for keys of characters below U+D800
                # (one code unit each, equal to the code point) that is the code-point order
                # json's sort_keys uses. Surrogates and characters beyond the BMP go the slow way.
                if type(key) is not str or not (key.isascii() or max(key) < _FIRST_SURROGATE):
                    return False
                sub_kind = type(sub)
                if sub_kind is str or sub is None or sub_kind is bool:
                    continue
                if sub_kind is int:
                    if -_SAFE_INT <= sub <= _SAFE_INT:
                        continue
                    return False
                stack.append(sub)
        elif kind is list:
            count = len(taken)
            taken.add(id(item))
            if len(taken) == count:
                return False
            stack.extend(item)
        elif kind is str or item is None or kind is bool:
            continue
        elif kind is int:
            if not -_SAFE_INT <= item <= _SAFE_INT:
                return False
        else:
            return False
    return True


def canonical_json(value: Mapping[str, Any] | list[Any]) -> bytes:
    """RFC 8785 canonical JSON bytes of ``value``.

    ``ValueError`` for anything RFC 8785 cannot encode, including a value that contains itself
    or is nested deeper than the interpreter's recursion limit.
    """
    try:
        if _fast_path_ok(value):
            try:
                return _encode_fast(value).encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate in a string: the library's refusal
                pass
        return rfc8785.dumps(value)
    except RecursionError as exc:
        raise ValueError("payload cannot be canonicalized: it contains itself or is nested "
                         "too deep") from exc
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ValueError(f"payload cannot be canonicalized: {exc}") from exc


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse canonical payload bytes back into a JSON object."""
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise ValueError("payload is not a JSON object")
    return value


_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


def entry_hash_raw(
    seq: int,
    stream: bytes,
    stream_version: int,
    type: bytes,
    schema_version: int,
    recorded_at: bytes,
    payload: bytes,
    prev_hash: bytes,
) -> bytes:
    """:func:`entry_hash` over already-encoded text fields (the append path's inner loop)."""
    h = hashlib.sha256(ENTRY_DOMAIN)
    h.update(
        b"".join(
            (
                _U64.pack(seq), _U32.pack(len(stream)), stream, _U64.pack(stream_version),
                _U32.pack(len(type)), type, _U32.pack(schema_version),
                _U32.pack(len(recorded_at)), recorded_at, _U32.pack(len(payload)),
            )
        )
    )
    h.update(payload)
    h.update(prev_hash)
    return h.digest()


def entry_hash(
    *,
    seq: int,
    stream: str,
    stream_version: int,
    type: str,
    schema_version: int,
    recorded_at: str,
    payload: bytes,
    prev_hash: bytes,
) -> bytes:
    """SHA-256 of the domain-separated, length-prefixed encoding of one log entry."""
    if len(prev_hash) != HASH_SIZE:
        raise ValueError("prev_hash must be 32 bytes")
    return entry_hash_raw(
        seq, stream.encode("utf-8"), stream_version, type.encode("utf-8"), schema_version,
        recorded_at.encode("utf-8"), payload, prev_hash,
    )
