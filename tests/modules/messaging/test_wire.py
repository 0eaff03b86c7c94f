"""The messaging plaintexts are RFC 8785 canonical JSON, byte for byte what ``rfc8785`` writes."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from openred.modules.messaging.service import receipt_bytes, request_bytes

TEXTS = ["x" * 1024, "hello", "é ü 漢字 🙂", '"quoted" \\ back', "\x00\x01\x1f\x7f tabs\t\n\r",
         "\u2028\u2029", "\ufeffbom", "a" * 65536]


def test_requests_and_receipts_are_the_bytes_rfc8785_writes() -> None:
    for text in TEXTS:
        for sent_at in (0, 1_790_000_000, 2**53 - 1):
            assert request_bytes("A" * 22, text, sent_at) == rfc8785.dumps(
                {"message_id": "A" * 22, "text": text, "sent_at": sent_at})
    for received_at in (0, 1_790_000_000, 2**53 - 1):
        expected = rfc8785.dumps({"message_id": "b" * 22, "received_at": received_at})
        assert receipt_bytes("b" * 22, received_at) == expected
    for too_big in (2**53, 2**64):  # outside I-JSON: refused both ways
        with pytest.raises(ValueError):
            receipt_bytes("b" * 22, too_big)
        with pytest.raises(ValueError):
            rfc8785.dumps({"message_id": "b" * 22, "received_at": too_big})


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))),
       st.integers(min_value=0, max_value=2**53 - 1))
def test_any_text_gives_the_same_bytes(text: str, sent_at: int) -> None:
    assert request_bytes("Z" * 22, text, sent_at) == rfc8785.dumps(
        {"message_id": "Z" * 22, "text": text, "sent_at": sent_at})


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
               min_size=20, max_size=24),
       st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1))
def test_any_receipt_gives_the_same_bytes(message_id: str, received_at: int) -> None:
    assert receipt_bytes(message_id, received_at) == rfc8785.dumps(
        {"message_id": message_id, "received_at": received_at})


@pytest.mark.parametrize("message_id", ['"quoted"', "é" * 22, "\u2028" * 22, "a\\b" * 7])
def test_receipts_of_other_ids_go_through_the_encoder(message_id: str) -> None:
    assert receipt_bytes(message_id, 5) == rfc8785.dumps(
        {"message_id": message_id, "received_at": 5})
