"""Canonical payloads and the entry-hash encoding."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from openred.store.codec import (
    GENESIS_PREV_HASH,
    _encode_fast,
    _encode_json,
    _fast_path_ok,
    canonical_json,
    entry_hash,
)
from openred.store.sqlite import utc_timestamp
from tests.conftest import LONG

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_canonical_json_equals_rfc8785(value: dict[str, object]) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        with pytest.raises(ValueError):
            canonical_json(value)
        return
    assert canonical_json(value) == expected


# Characters from every region that matters to the fast path: ASCII (controls, quotes and
# backslashes included), Latin-1, BMP letters below the surrogates, U+2028/U+2029, the BMP above
# the surrogates (sorts differently in UTF-16 against non-BMP characters), and non-BMP.
# Each character is drawn from a region picked first (the regions are equally likely; a one_of
# over them would not be: Hypothesis merges it into one alphabet, mostly ASCII). The regions'
# strategies are built once, not per character.
_REGIONS = st.sampled_from([
    st.characters(min_codepoint=low, max_codepoint=high, exclude_categories=("Cs",))
    for low, high in [(0x00, 0x7F), (0x80, 0xFF), (0x100, 0x2FFF), (0x2028, 0x2029),
                      (0x3000, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
])
_chars = _REGIONS.flatmap(lambda region: region)
_texts = st.text(_chars, max_size=12)
_keys = st.text(_chars, max_size=6) | st.sampled_from(["", "a", "b", "é", "ö", "\u00e9\u0301",
                                                        "\U0001f600", "\uff61", "z"])
_wide_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**53), 2**53)
    | st.sampled_from([2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 0, -1]) | _texts,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(_keys, children, max_size=5),
    max_leaves=30,
)


def _reference(value: object) -> bytes | type[Exception]:
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, ValueError):  # IntegerDomainError, surrogates
        return ValueError


# 200 examples in ``make test`` (new ones every run), 500 in ``make test-long``.
@settings(max_examples=500 if LONG else 200, deadline=None)
@given(st.dictionaries(_keys, _wide_values, max_size=8))
def test_canonical_json_is_byte_identical_to_rfc8785_over_wide_payloads(
    value: dict[str, object]
) -> None:
    expected = _reference(value)
    if expected is ValueError:
        with pytest.raises(ValueError):
            canonical_json(value)
    else:
        assert canonical_json(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(st.characters(max_codepoint=0xD7FF), max_size=6),
                       st.lists(_texts | st.integers(-(2**53) + 1, 2**53 - 1), max_size=3),
                       max_size=8))
def test_the_fast_path_covers_bmp_keys_and_matches_the_reference(
    value: dict[str, object]
) -> None:
    assert _fast_path_ok(value)
    assert canonical_json(value) == rfc8785.dumps(value)


def test_what_the_fast_path_leaves_to_the_reference_library() -> None:
    # Keys whose UTF-16 order differs from their code-point order, and keys or strings with
    # lone surrogates, are never encoded by the fast path.
    tricky = {"\U0001f600": 1, "\uff61": 2}
    assert not _fast_path_ok(tricky)
    assert canonical_json(tricky) == rfc8785.dumps(tricky)
    assert list(canonical_json(tricky).decode())[2] == "\U0001f600"  # UTF-16 order: D83D < FF61
    assert not _fast_path_ok({"\ud800": 1})
    assert not _fast_path_ok({"a": 2**53})
    for bad in ({"\ud800": 1}, {"a": "x\udfff"}, {"a": [1, {"b": "\ud83d"}]}, {"a": 2**64}):
        with pytest.raises(ValueError):
            rfc8785.dumps(bad)
        with pytest.raises(ValueError):
            canonical_json(bad)


def test_canonical_json_sorts_keys_and_strips_whitespace() -> None:
    expected = b'{"a":[true,null,"\xc3\xa9\\n"],"b":1}'
    assert canonical_json({"b": 1, "a": [True, None, "é\n"]}) == expected


def test_floats_go_through_the_reference_library() -> None:
    assert canonical_json({"x": 1.5}) == rfc8785.dumps({"x": 1.5})


FIELDS = dict(
    seq=7, stream="node:abc", stream_version=3, type="MessageReceived", schema_version=1,
    recorded_at="2026-11-25T17:00:00.000000Z", payload=b'{"a":1}', prev_hash=GENESIS_PREV_HASH,
)


def test_entry_hash_changes_with_every_field() -> None:
    base = entry_hash(**FIELDS)  # type: ignore[arg-type]
    changes = dict(
        seq=8, stream="node:abd", stream_version=4, type="MessageSent", schema_version=2,
        recorded_at="2026-11-25T17:00:00.000001Z", payload=b'{"a":2}', prev_hash=b"\x01" * 32,
    )
    for name, value in changes.items():
        assert entry_hash(**{**FIELDS, name: value}) != base, name  # type: ignore[arg-type]


def test_a_byte_moved_across_a_field_boundary_changes_the_hash() -> None:
    strings = ["stream", "type", "recorded_at"]
    base = entry_hash(**FIELDS)  # type: ignore[arg-type]
    for left, right in itertools.permutations(strings, 2):
        moved = dict(FIELDS)
        moved[left] = str(FIELDS[left]) + "x"
        moved[right] = str(FIELDS[right])[:-1]
        assert entry_hash(**moved) != base  # type: ignore[arg-type]
    moved = dict(FIELDS, recorded_at=str(FIELDS["recorded_at"])[:-1], payload=b'Z{"a":1}')
    assert entry_hash(**moved) != base  # type: ignore[arg-type]


def test_prev_hash_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        entry_hash(**{**FIELDS, "prev_hash": b"\x00" * 31})  # type: ignore[arg-type]


def test_the_prebuilt_encoder_writes_what_json_encoder_writes() -> None:
    """The fast path's one C encoder and ``JSONEncoder.encode`` with the same settings agree."""
    values: list[Any] = [
        {}, [], {"b": 1, "a": [True, False, None, "x"], "é": {"\u2028": "\x00\x1f\"\\/"}},
        {"nested": [{"k": [-(2**53) + 1, 2**53 - 1, 0]}, "ünïcödé", "\U0001f600"]},
    ]
    for value in values:
        assert _encode_fast(value) == _encode_json(value)


def test_a_payload_that_contains_itself_is_refused_not_walked_forever() -> None:
    """A dict or list inside itself used to keep the fast-path check looping (and growing its
    stack) forever; it is a clear ValueError now, wherever the cycle is."""
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    items: list[Any] = [1]
    items.append(items)
    deep: dict[str, Any] = {"x": {"y": [{"z": None}]}}
    deep["x"]["y"][0]["z"] = deep["x"]
    for value in (looped, {"items": items}, [items], deep):
        assert not _fast_path_ok(value)
        with pytest.raises(ValueError, match="contains itself"):
            canonical_json(value)


def test_a_shared_but_acyclic_value_is_still_encoded() -> None:
    shared = [1, {"k": "v"}]
    value = {"a": shared, "b": shared, "c": [shared, shared]}
    assert canonical_json(value) == rfc8785.dumps(value)


def test_nesting_deeper_than_the_recursion_limit_is_a_value_error() -> None:
    """The fast path's walk is iterative but the encoders recurse: a RecursionError from
    either is the same clear ValueError as any other value that cannot be encoded."""
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deep"):
        canonical_json({"deep": deep})


@given(st.datetimes(timezones=st.timezones()))
def test_recorded_at_is_strftimes_string(moment: datetime) -> None:
    """``utc_timestamp`` formats what ``strftime`` would, for any zone and year."""
    assert utc_timestamp(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
