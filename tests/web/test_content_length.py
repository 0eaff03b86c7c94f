"""JsonRequest.content_length equals Werkzeug's for every combination of the two headers."""

from __future__ import annotations

import itertools

from quart.wrappers import Request
from werkzeug.datastructures import Headers

from openred.web.problems import JsonRequest

LENGTHS = [None, "0", "12", " 12 ", "-1", "abc", "99999999999999999999", "1,2"]
ENCODINGS = [None, "chunked", "gzip", "identity", "Chunked"]


def make(cls: type[Request], length: str | None, encoding: str | None,
         extra: list[tuple[str, str]]) -> Request:
    headers = Headers()
    if length is not None:
        headers.add("Content-Length", length)
    if encoding is not None:
        headers.add("Transfer-Encoding", encoding)
    for name, value in extra:
        headers.add(name, value)
    return cls("POST", "http", "/", b"", headers, "", "1.1", max_content_length=None,
               body_timeout=None, send_push_promise=push, scope={})  # type: ignore[arg-type]


async def push(path: str, headers: Headers) -> None:
    """No server push in these tests."""


def test_the_same_content_length_as_werkzeug() -> None:
    for length, encoding, extra in itertools.product(
            LENGTHS, ENCODINGS, [[], [("Content-Length", "7")], [("content-length", "3")]]):
        ours = make(JsonRequest, length, encoding, extra)
        theirs = make(Request, length, encoding, extra)
        assert ours.content_length == theirs.content_length, (length, encoding, extra)
