"""A grant's canonical bytes (what the directory's jail signs) are RFC 8785, byte for byte.

``Grant`` takes them from the store's canonical encoder (the standard library for plain
strings and safe integers); compared here with the ``rfc8785`` library over random grants.
"""

from __future__ import annotations

import random
import secrets

import rfc8785

from crypto_jail.noise import SUITES
from openred.crypto.grants import Grant, new_grant
from openred.crypto.identity import NodeId, SignKey


def _node() -> NodeId:
    return SignKey(secrets.token_bytes(32)).node_id


def test_canonical_bytes_are_rfc8785_over_random_grants() -> None:
    rng = random.Random(7)
    for _ in range(300):
        issued = rng.choice([0, 1, rng.randrange(2**31), 2**53 - 1 - 86400])
        grant = new_grant(
            _node(), _node(), grant_id=secrets.token_bytes(16), issued_at=issued,
            ttl=rng.choice([1, 300, 86400]), suite=rng.choice(sorted(SUITES)),
            initiator_record=secrets.token_bytes(32), responder_record=secrets.token_bytes(32))
        plain = {k: str(v) if isinstance(v, NodeId) else v for k, v in grant.to_dict().items()}
        assert grant.canonical_bytes() == rfc8785.dumps(plain)
        assert Grant.from_canonical(grant.canonical_bytes()) == grant
