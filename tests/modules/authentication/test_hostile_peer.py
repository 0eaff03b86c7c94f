"""The challenger against a hostile paired peer, on two real nodes served over HTTP.

B is modified to answer ``authentication/prove`` with problems of its own choosing: a new
``type`` slug every time, or one of 200 000 characters. Its refusal reaches A through the
P2P transport's problem parsing; A logs it (``PeerAuthenticationFailed``) and counts it
(``openred_peer_authentications_total``).
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from quart import Quart, Response

from openred.errors import NodeRefused
from openred.modules import install_admin_hooks
from openred.modules.authentication import events as ev
from openred.modules.authentication.service import PROVE, PeerAuthentication
from openred.node.admin import create_admin_app
from openred.node.p2p import P2P_ACTIONS, Outcome, RequestContext
from tests.modules.authentication.test_authentication import Pair, pair, scrape
from tests.servers import serve_in_loop

__all__ = ["pair"]


def hostile_answers(pair: Pair, slugs: list[str]) -> None:
    """B answers each challenge with a 403 problem whose slug is the next of ``slugs``."""
    queue = iter(slugs)

    async def refuse(ctx: RequestContext, plaintext: bytes) -> Outcome:
        raise NodeRefused(403, next(queue), "x" * 100_000)

    pair.b.app.extensions[P2P_ACTIONS]._handlers[PROVE] = refuse


async def test_a_peer_cannot_name_metric_series_or_write_its_text_into_the_log(
    pair: Pair, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "openred.authentication")
    slugs = [f"chosen-by-the-peer-{i}" for i in range(30)] + ["a" * 200_000, "Not A Slug\n!"]
    hostile_answers(pair, slugs)
    for _ in slugs:
        try:
            await pair.prove()
        except NodeRefused as refused:
            assert refused.status == 403
        else:
            raise AssertionError("a refusal was taken as a proof")
    results = {dict(labels)["result"] for (name, labels) in await scrape(pair.a)
               if name == "openred_peer_authentications_total"}
    # One series for whatever the peer refused with, not one per slug it chose.
    assert len(results) <= 2, sorted(r[:40] for r in results)
    logged = [payload for kind, payload in await pair.logged(pair.a)
              if kind == ev.PEER_AUTHENTICATION_FAILED]
    assert len(logged) == len(slugs)  # every refusal is still logged
    reasons = [str(p["reason"]) for p in logged]
    assert reasons[:30] == slugs[:30]  # a slug of a slug's shape is kept as the peer sent it
    assert all(len(r) <= 64 for r in reasons), [len(r) for r in reasons]
    assert reasons[30:] == ["peer-refused", "peer-refused"]
    # The service's log lines say what the peer answered, cut short.
    lines = [r.getMessage() for r in caplog.records if r.name == "openred.authentication"]
    assert len(lines) == len(slugs) and max(map(len, lines)) < 1000


@pytest.mark.parametrize("answer", [b"not json", b"[]", b'"a string"', b"\xff\xfe",
                                    b"[" * 100_000], ids=["text", "array", "string", "not-utf8",
                                                          "deep-nesting"])
async def test_an_answer_that_is_no_json_object_is_a_logged_failure(
    pair: Pair, answer: bytes,
) -> None:
    """B answers the challenge, encrypted and on time, with something that is not an answer.

    It was refused as 422 ``invalid-challenge`` (as if the operator had asked wrongly) and
    nothing was logged: the log kept no trace of a peer that failed to prove its key.
    """
    async def garbage(ctx: RequestContext, plaintext: bytes) -> Outcome:
        return Outcome(answer)

    pair.b.app.extensions[P2P_ACTIONS]._handlers[PROVE] = garbage
    with pytest.raises(NodeRefused) as refused:
        await pair.prove()
    assert (refused.value.status, refused.value.reason) == (502, "bad-answer")
    [(kind, payload)] = await pair.logged(pair.a)
    assert kind == ev.PEER_AUTHENTICATION_FAILED and payload["reason"] == "bad-answer"
    assert not pair.auth(pair.a)._pending  # and the challenge is no longer waiting
    results = {dict(labels)["result"] for (name, labels) in await scrape(pair.a)
               if name == "openred_peer_authentications_total"}
    assert results == {"bad-answer"}


async def test_the_operator_gets_a_problem_of_our_own_shape_whatever_the_peer_answered(
    pair: Pair,
) -> None:
    """The admin API passed a peer's refusal on as it came: its ``type`` was
    ``urn:openred:problem:`` followed by whatever the peer wrote (spaces, a line break: no
    URI, RFC 9457 §3.1.1), its detail the peer's 100 000 characters, which the CLI printed."""
    hostile_answers(pair, ["Not A Slug\n!"])
    admin = create_admin_app(pair.a.app, "k" * 43)
    install_admin_hooks(admin, pair.a.services.modules)
    reply = await admin.test_client().post(
        "/admin/v1/authentication/challenge", headers={"Authorization": "Bearer " + "k" * 43},
        json={"peer": str(pair.b.id), "purpose": "operator"})
    problem = await reply.get_json()
    assert reply.status_code == 403 and reply.content_type == "application/problem+json"
    assert re.fullmatch(r"urn:openred:problem:[a-z0-9][a-z0-9-]*", problem["type"]), problem
    assert problem["type"].endswith(":peer-refused")
    assert problem["detail"].startswith("the peer's authentication/prove: xxx")
    assert len(problem["detail"]) < 1000


FORGED = "done\n12:00:00 ERROR   openred.node forged line\x1b[2J\r\u202eevil"
"""A detail meant to forge a line in the console log and act on the operator's terminal."""


@pytest.mark.parametrize("slug", ["internal", "unhealthy", "signer-unavailable"])
async def test_a_peer_cannot_pass_its_5xx_off_as_one_of_our_own_failures(
    pair: Pair, slug: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B answers 500 with a slug our own problem handler treats specially: ``internal`` made
    A's handler log "unhandled error" with a traceback (the peer's refusal is no bug of A's),
    ``unhealthy`` made it log nothing (its producer, the health checks, logs it), and
    ``signer-unavailable`` told the operator A's own signer was down. The detail's control
    characters reached A's log lines as they came (a forged line in the console format)."""
    hostile = Quart("hostile-peer")  # B's address, answering every P2P call with a problem

    @hostile.post("/api/v3/p2p/<path:rest>")
    async def refuse(rest: str) -> Response:
        return Response(json.dumps({"type": f"urn:openred:problem:{slug}", "status": 500,
                                    "title": "Internal Server Error", "detail": FORGED}),
                        status=500, content_type="application/problem+json")

    svc = pair.a.services
    transport = svc._p2p_transport
    admin = create_admin_app(pair.a.app, "k" * 43)
    install_admin_hooks(admin, svc.modules)
    caplog.set_level(logging.INFO)
    async with serve_in_loop(hostile) as url:
        monkeypatch.setattr(svc, "_p2p_transport", lambda api_url: transport(url))
        reply = await admin.test_client().post(
            "/admin/v1/authentication/challenge",
            headers={"Authorization": "Bearer " + "k" * 43},
            json={"peer": str(pair.b.id), "purpose": "operator"})
    problem = await reply.get_json()
    assert reply.status_code == 502, problem
    assert problem["type"] == "urn:openred:problem:peer-refused", problem
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e]", problem["detail"]), problem
    assert "\\x0a12:00:00" in problem["detail"], problem  # shown, not acted upon
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a peer's refusal"
    relayed = [r.getMessage() for r in caplog.records if "forged" in r.getMessage()]
    assert relayed and all("\n" not in line and "\x1b" not in line for line in relayed), relayed


async def test_a_challenge_nested_too_deep_is_refused_not_a_500(
    pair: Pair, caplog: pytest.LogCaptureFixture,
) -> None:
    """A sends B a "challenge" of 100 000 ``[``: B's JSON parser recursed (RecursionError,
    not the ValueError ``_object`` caught), so B answered 500 and logged a traceback, as often
    as any paired peer liked; the challenger's side had the same gap (the answer above)."""
    caplog.set_level(logging.INFO)
    svc = pair.a.services
    peer = await svc.book.peer(str(pair.b.id))
    assert peer is not None
    channel = await svc.keeper.channel(pair.session_id, svc.now())
    with pytest.raises(NodeRefused) as refused:
        await PeerAuthentication._ask(channel, b"[" * 100_000,
                                      svc._p2p_transport(peer.api_url), None)
    assert (refused.value.status, refused.value.reason) == (422, "invalid-challenge")
    assert not [r for r in caplog.records if r.exc_info], "a traceback for a peer's challenge"
