"""The fast path's one-pass lookup of the three signature fields equals three lookups."""

from __future__ import annotations

import random

from openred.crypto.httpsig import HttpRequest, _signature_headers, _single_header

SPELLINGS = ["Signature", "signature", "SIGNATURE", "Signature-Input", "signature-input",
             "Content-Digest", "content-digest", "Content-Type", "Host", "X-Other"]


def test_one_pass_equals_three_single_lookups() -> None:
    rng = random.Random(9421)
    for _ in range(2000):
        headers = {name: f"v{i}" for i, name in
                   enumerate(rng.sample(SPELLINGS, rng.randint(0, len(SPELLINGS))))}
        req = HttpRequest("GET", "http://h/", headers)
        three = tuple(_single_header(req, n) for n in
                      ("signature-input", "signature", "content-digest"))
        expected = None if None in three else three
        assert _signature_headers(req) == expected
