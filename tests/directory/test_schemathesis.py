"""Schemathesis over the directory's /openapi.json: no server error, no undocumented status.

Every operation gets schema-valid and schema-violating examples, sent to a real directory
process; signed operations are signed (RFC 9421) by a registered node through a requests auth
hook, so the examples reach the code behind the signature check. ``make test`` runs a bounded
number of examples per operation and mode; ``make test-long`` at least 100.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request
from openred.crypto.identity import BoxKey, SignKey
from openred.crypto.records import NodeRecord, SignedNodeRecord
from tests.conftest import LONG
from tests.servers import free_port, running_process

EXAMPLES = 100 if LONG else 20


class SignAuth(requests.auth.AuthBase):
    """Signs every prepared request, over the exact bytes sent, by the given nodes in turn.

    Taking turns keeps each node under its nonce quota (1000 per window) in long runs.
    """

    def __init__(self, *keys: nacl.signing.SigningKey, keyid: str | None = None) -> None:
        self.keys = keys
        self.keyid = keyid  # None: each key's node id
        self.turn = 0

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode("utf-8")
        sk = self.keys[self.turn % len(self.keys)]
        self.turn += 1

        async def sign(base: bytes) -> bytes:
            return bytes(sk.sign(base).signature)

        keyid = self.keyid or str(SignKey(bytes(sk.verify_key)).node_id)
        signed = asyncio.run(sign_request(
            HttpRequest(str(r.method), str(r.url), {}, body), keyid=keyid, sign_base=sign,
            now=int(time.time()), nonce=new_nonce()))
        for name in ("Content-Digest", "Signature-Input", "Signature"):
            value = signed.header(name)
            assert value is not None
            r.headers[name] = value
        return r


def record(sk: nacl.signing.SigningKey, port: int) -> SignedNodeRecord:
    rec = NodeRecord.build(sign_key=SignKey(bytes(sk.verify_key)),
                           box_key=BoxKey(bytes(nacl.public.PrivateKey.generate().public_key)),
                           api_url=f"http://127.0.0.1:{port}", issued_at=int(time.time()),
                           version=1)
    return SignedNodeRecord(rec, sk.sign(rec.canonical_bytes()).signature)


def exercise(operation: Any, mode: GenerationMode, base_url: str,
             session: requests.Session) -> list[int]:
    """Send EXAMPLES cases of one operation in one mode; the statuses answered."""
    seen: list[int] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=30)
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    run()
    return seen


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(tmp_path: Path) -> None:
    data, port = tmp_path / "d", free_port()
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
           "OPENRED_RATE_PER_CLIENT": "10000000",
           "OPENRED_RATE_PER_INITIATOR": "10000000", "OPENRED_RATE_PER_TARGET": "10000000",
           "OPENRED_PUSHES_PER_NETWORK": "1000",
           "OPENRED_PUSH_ATTEMPTS": "1", "OPENRED_PUSH_TIMEOUT": "1",
           "OPENRED_JAIL_SOCKET": f"/tmp/openred-st-{port}/j.sock"}
    subprocess.run([sys.executable, "-m", "openred.cli", "directory", "init", "--data-dir",
                    str(data), "--port", str(port), "--allow-private-urls"], env=env,
                   check=True, capture_output=True, timeout=120)
    argv = [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir", str(data)]
    with running_process(argv, port=port, env=env) as server:
        session = requests.Session()
        nodes = [nacl.signing.SigningKey.generate() for _ in range(4)]
        for sk in nodes:
            reply = session.post(server.url + "/api/v3/nodes/register",
                                 json=record(sk, free_port()).to_wire(), auth=SignAuth(sk))
            assert reply.status_code == 201, reply.text
        session.auth = SignAuth(*nodes)
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 8, [op.label for op in operations]
        sent = {}
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    sent[operation.label, mode] = exercise(operation, mode, server.url, session)
                except Unsatisfiable:
                    # Nothing to violate (no parameters, no body): only positive cases exist.
                    assert mode is GenerationMode.NEGATIVE, operation.label
        for operation in operations:
            assert sent[operation.label, GenerationMode.POSITIVE], operation.label
        assert "Traceback" not in server.output()
