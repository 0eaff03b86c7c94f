"""The nodes projection stores a record's RFC 8785 bytes and hash, as rfc8785 computes them."""

from __future__ import annotations

import hashlib
import json
import random

import rfc8785

from openred.crypto.identity import b64url
from openred.directory.projections import _record_columns
from tests.crypto.test_records_fast import random_record


def test_record_columns_match_rfc8785_over_random_records() -> None:
    rng = random.Random(4)
    for _ in range(300):
        record = json.loads(json.dumps(random_record(rng).to_dict()))
        columns = _record_columns({"record": record, "signature": "s" * 86})
        canonical = rfc8785.dumps(record)
        assert columns["record"] == canonical.decode()
        assert columns["record_hash"] == b64url(hashlib.sha256(canonical).digest())
