"""Canonical payloads and the entry-hash encoding."""

from __future__ import annotations

import itertools

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from openred.store.codec import GENESIS_PREV_HASH, canonical_json, entry_hash

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
