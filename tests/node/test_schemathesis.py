"""Schemathesis over the node's /openapi.json: no server error, no undocumented status.

A real directory and three real nodes (``openred node init`` + ``openred node serve``, as
processes, every built-in module enabled) are started; ``a`` connects to ``b`` through the
directory, as the CLI does. Every operation of the node's peer-facing API gets schema-valid
(POSITIVE) and schema-violating (NEGATIVE) examples, the request bodies as the document
describes them (:mod:`openred.node.schemas`); the checks are ``not_a_server_error`` and
``status_code_conformance``, and no process may print a traceback. ``make test`` runs a
bounded number of examples per operation and mode; ``make test-long`` 100.

What positive examples are given so they get past the first check (negative ones are sent as
generated, except that half of those for ``p2p/<module>/<action>`` keep a real route so their
bodies are read; every whole float becomes an int, as JSON Schema's "integer" allows ``3.0``
and the node's strict parsers refuse it first):

* ``POST /api/v3/tokens/receive`` goes to node ``c``, whose pinned directory key is one this
  test holds: every request is signed (RFC 9421, keyid ``directory``) over the exact bytes
  sent, so examples pass the request signature check. The grant is made to name ``c`` (its id
  and its current record's hash) and a well-formed signed record of a peer, and is signed by
  that key, so examples pass the grant signature, party, record and peer record checks and
  reach the log entry, checkpoint and inclusion proof checks (422 ``unverifiable-delivery``);
  its terms are made ones a node takes (a suite it implements, issued now, the default life).
  Past those a delivery is a real one (the test holds the key and could mint it, but then
  nothing is generated): ``tests/node/test_app.py`` covers that path.
* ``POST /api/v3/p2p/handshake`` goes to node ``b`` with the id of a grant ``b`` really holds,
  unused, as responder (asked for at the real directory by a node this test registered), so
  each example reaches the jail's Noise KKpsk0 ``noise_respond`` with the generated message
  (401 ``tokens-do-not-match``), or, with a ``renews`` proof naming ``b``'s real session, the
  renewal check (422 ``invalid-renewal``). A message Noise accepts needs the grant's other
  token, which only its initiator could have: no handshake is ever completed.
* ``POST /api/v3/p2p/<module>/<action>`` and ``POST /api/v3/p2p/batch`` go to ``b`` with the
  id of its real active session (with ``a``) and, in turn, every P2P action the modules offer,
  so examples reach the session's replay window and AEAD open (401 ``message-rejected``).
  Bodies encrypted under the session key cannot be made here (the key is in ``a``'s and
  ``b``'s state only), so no example reaches a module's handler; those are the modules' own
  tests (they found no undocumented status but 416 ``bad-range``, see test_transfer.py).
  Binary (``application/octet-stream``) envelopes are not in the document: a Hypothesis loop
  beside schemathesis sends random bytes and headers naming the real session (any counter and
  ciphertext) and holds their answers to the route's documented statuses.
* ``GET /api/v3/health`` needs nothing.

The local admin API (``/admin/v1``, loopback only, bearer key) publishes no OpenAPI document
and is not covered here (docs/decisions.md, "Schemathesis over the node's APIs").
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import nacl.signing
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from crypto_jail.noise import SUITES
from openred.crypto.grants import DEFAULT_TTL, Grant
from openred.crypto.identity import SignKey, b64url, from_b64url
from openred.crypto.records import SignedNodeRecord, record_hash
from openred.errors import CryptoError
from openred.node.envelope_binary import MAGIC, MEDIA_TYPE
from tests.cli.network import Network, network, openred
from tests.conftest import LONG
from tests.crypto_jail.test_server import short_dir
from tests.directory.test_schemathesis import SignAuth, record
from tests.servers import free_port

EXAMPLES = 100 if LONG else 15
MODULES = "messaging,file_sharing,authentication,monitoring"
P2P_ROUTES = ("messaging/send", "file_sharing/offer", "file_sharing/chunk",
              "file_sharing/decline", "file_sharing/revoke", "authentication/prove")
DELIVERY = "/api/v3/tokens/receive"


def directory_sign(key: nacl.signing.SigningKey) -> SignAuth:
    """Signs every prepared request as the directory (keyid ``directory``), over the bytes sent."""
    return SignAuth(key, keyid="directory")


class Reach:
    """What positive examples are given so they get past the first check (module docstring)."""

    def __init__(self, *, session_id: str, grant_id: str, c_id: str, c_record: str,
                 directory: nacl.signing.SigningKey) -> None:
        self.peer = record(nacl.signing.SigningKey.generate(), free_port())
        """A well-formed signed record of a peer that does not exist, for the deliveries."""
        self.session_id = session_id
        self.grant_id = grant_id
        self.c_id = c_id
        self.c_record = c_record
        self.directory = directory
        self.turn = 0
        self.cases = 0

    def route(self) -> str:
        self.turn += 1
        return P2P_ROUTES[self.turn % len(P2P_ROUTES)]

    def __call__(self, case: schemathesis.Case, mode: GenerationMode) -> None:
        path = case.operation.path
        self.cases += 1
        if path.endswith("/{module}/{action}") and (
                mode is GenerationMode.POSITIVE or self.cases % 2):
            # Half the negative examples keep a real route, so their bodies are read too.
            module, action = self.route().split("/")
            case.path_parameters = {"module": module, "action": action}
        if mode is not GenerationMode.POSITIVE:
            return
        case.body = body = integral(case.body)
        if not isinstance(body, dict):
            return
        if path == DELIVERY:
            self.delivery(body)
            return
        if path.endswith("/handshake"):
            body["grant_id"] = self.grant_id
            if isinstance(body.get("renews"), dict):
                body["renews"]["session_id"] = self.session_id
            return
        if "session_id" in body:
            body["session_id"] = self.session_id
        for call in body.get("calls", []) if isinstance(body.get("calls"), list) else []:
            if isinstance(call, dict):
                call["session_id"], call["route"] = self.session_id, self.route()

    def delivery(self, body: dict[str, Any]) -> None:
        grant = body.get("grant")
        if not isinstance(grant, dict):
            return
        grant["responder"], grant["responder_record"] = self.c_id, self.c_record
        grant["initiator"] = str(self.peer.record.node_id)
        grant["initiator_record"] = b64url(record_hash(self.peer))
        body["peer_record"] = self.peer.to_wire()
        # Terms a node takes (Grant.terms_problem): a suite it implements, issued now, living
        # the default time; what is generated for them would be refused before the log checks.
        grant["suite"] = sorted(SUITES)[self.cases % len(SUITES)]
        grant["issued_at"] = int(time.time())
        grant["expires_at"] = grant["issued_at"] + DEFAULT_TTL
        try:
            parsed = Grant.from_dict(grant)
        except CryptoError:
            return
        body["grant_signature"] = b64url(self.directory.sign(parsed.canonical_bytes()).signature)


def integral(value: Any) -> Any:
    """``value`` with every whole float an int: JSON Schema's "integer" admits ``3.0``, which
    the node's strict parsers refuse (400) before anything else is read."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def exercise(operation: Any, mode: GenerationMode, base_url: str, session: requests.Session,
             reach: Reach) -> list[str]:
    """Send EXAMPLES cases of one operation in one mode; the problem slugs (or statuses)."""
    seen: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        reach(case, mode)
        response = case.call(base_url=base_url, session=session, timeout=30)
        answer = response.json() if response.status_code >= 400 else {}
        kind = answer.get("type", "") if isinstance(answer, dict) else ""
        seen.append(kind.rsplit(":", 1)[-1] or str(response.status_code))
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    run()
    return seen


def binary_envelopes(base_url: str, reach: Reach, schema: Any) -> None:
    """The encrypted call's binary body (``application/octet-stream``, not in the document):
    random bytes, and headers naming the real session with any counter and ciphertext, each
    answered with a documented status and a problem, never a 500."""
    path = "/api/v3/p2p/{module}/{action}"
    documented = {int(code) for code in schema.raw_schema["paths"][path]["post"]["responses"]}
    session_raw = from_b64url(reach.session_id)
    seen: list[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(raw=st.binary(max_size=64), counter=st.integers(0, 2**64 - 1), framed=st.booleans())
    def run(raw: bytes, counter: int, framed: bool) -> None:
        body = MAGIC + session_raw + counter.to_bytes(8, "big") + raw if framed else raw
        reply = requests.post(f"{base_url}/api/v3/p2p/{reach.route()}", data=body, timeout=30,
                              headers={"Content-Type": MEDIA_TYPE})
        assert reply.status_code in documented and reply.status_code != 200, reply.text
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        seen.append(reply.json()["type"].rsplit(":", 1)[-1])

    run()
    assert "message-rejected" in seen, seen  # framed bodies reach AEAD


def node_with_own_directory_key(net: Network, name: str, key: nacl.signing.SigningKey) -> str:
    """``openred node init`` pinning ``key`` as the directory's (this test signs as it)."""
    port = free_port()
    out = openred("node", "init", "--data-dir", str(net.root / name), "--directory",
                  net.directory_url, "--directory-key", SignKey(bytes(key.verify_key)).b64url(),
                  "--api-url", f"http://127.0.0.1:{port}", "--admin-port", str(free_port()),
                  "--allow-private-urls", env=net.env)
    net.ids[name] = out.stdout.strip().splitlines()[-1]
    return net.ids[name]


def registered_stranger(net: Network) -> requests.Session:
    """A session signing as a node this test registered at the directory (its key in-process,
    nothing listening at its URL)."""
    sk = nacl.signing.SigningKey.generate()
    session = requests.Session()
    session.auth = SignAuth(sk)
    reply = session.post(net.directory_url + "/api/v3/nodes/register",
                         json=record(sk, free_port()).to_wire())
    assert reply.status_code == 201, reply.text
    return session


def unused_responder_grant(net: Network, stranger: requests.Session, target: str) -> str:
    """A grant ``target`` holds as responder, unused: asked for by the stranger (its own half
    cannot be pushed, so the directory answers 502 after delivering ``target``'s)."""
    reply = stranger.post(net.directory_url + "/api/v3/tokens/request-connection",
                          json={"target": target})
    assert reply.status_code == 502, reply.text
    answer = reply.json()
    assert answer["delivered"] == {"initiator": False, "responder": True}, answer
    return str(answer["grant_id"])


def current_record_hash(net: Network, stranger: requests.Session, node_id: str) -> str:
    """The hash of ``node_id``'s record as the directory serves it (its current one)."""
    reply = stranger.get(net.directory_url + "/api/v3/nodes/discover",
                         params={"node_id": node_id})
    assert reply.status_code == 200, reply.text
    item = reply.json()["items"][0]
    signed = SignedNodeRecord.from_wire({"record": item["record"],
                                         "signature": item["signature"]})
    return b64url(record_hash(signed))


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_status() -> None:
    directory_key = nacl.signing.SigningKey.generate()
    with network(short_dir(), OPENRED_MODULES=MODULES,
                 OPENRED_HANDSHAKE_REFUSALS="1000000", OPENRED_PUSH_ATTEMPTS="1",
                 OPENRED_PUSH_TIMEOUT="1") as net:
        net.init_directory()
        net.start_directory()
        # The three nodes are initialised, then started, at once: most of the setup's time.
        with ThreadPoolExecutor(3) as pool:
            _, b_id, c_id = pool.map(lambda init: init(), [
                lambda: net.init_node("a"), lambda: net.init_node("b"),
                lambda: node_with_own_directory_key(net, "c", directory_key)])
            list(pool.map(net.start_node, ["a", "b", "c"]))
        net.wait_registered("b")
        net.cli_json("a", "connect", b_id)
        net.wait_registered("c")
        sessions = net.cli_json("b", "sessions")
        assert [s["state"] for s in sessions] == ["active"], sessions
        stranger = registered_stranger(net)
        reach = Reach(session_id=sessions[0]["session_id"],
                      grant_id=unused_responder_grant(net, stranger, b_id), c_id=c_id,
                      c_record=current_record_hash(net, stranger, c_id),
                      directory=directory_key)
        b, c = net.servers["b"], net.servers["c"]
        signed = requests.Session()
        signed.auth = directory_sign(directory_key)
        plain = requests.Session()
        schema = schemathesis.openapi.from_url(b.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 5, [op.label for op in operations]
        sent = {}
        for operation in operations:
            url, session = (c.url, signed) if operation.path == DELIVERY else (b.url, plain)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    sent[operation.label, mode] = exercise(operation, mode, url, session, reach)
                except Unsatisfiable:
                    # Nothing to violate (no parameters, no body): only positive cases exist.
                    assert mode is GenerationMode.NEGATIVE, operation.label
        for operation in operations:
            assert sent[operation.label, GenerationMode.POSITIVE], operation.label
        # The hooks reach what the docstring says: the delivery's log checks, Noise, AEAD.
        positive = {label: set(seen) for (label, mode), seen in sent.items()
                    if mode is GenerationMode.POSITIVE}
        assert "unverifiable-delivery" in positive["POST " + DELIVERY], positive
        assert "tokens-do-not-match" in positive["POST /api/v3/p2p/handshake"], positive
        assert "message-rejected" in positive["POST /api/v3/p2p/{module}/{action}"], positive
        binary_envelopes(b.url, reach, schema)
        for name, server in net.servers.items():
            assert "Traceback" not in server.output(), (name, server.output())
