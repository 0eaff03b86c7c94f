"""The node's local admin API (DESIGN §10): what the ``openred`` CLI talks to.

A second Quart app served beside the P2P app, bound to 127.0.0.1 only, every request
authenticated by the bearer key in ``DATA_DIR/admin-key`` (:mod:`openred.node.admin_auth`).
Errors are RFC 9457 problems, like the P2P API's. Routes (all under ``/admin/v1``):

=============================  ==============================================================
``GET  /status``               node id, URL, log size, sessions, modules, directory state
``GET  /peers``                peers this node verified (from grants), with session counts
``GET  /sessions``             sessions (``?state=active``)
``POST /connect``              ``{peer}``: ask the directory for a grant, wait for this
                               node's half, shake hands; the new session (sensitive)
``POST /send``                 ``{peer, text}`` (or ``{session_id, text}``): send on the
                               newest active session with the peer; the receipt (sensitive)
``GET  /inbox``                received messages, newest first (``?limit=``) (sensitive)
=============================  ==============================================================

Modules add their own admin routes through ``register_admin_routes(admin_app)``
(:func:`openred.modules.install_admin_hooks`); they find the node's services with
:func:`node_services`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Any

from quart import Quart, Response, current_app, request
from sqlmodel import select
from werkzeug.exceptions import NotFound

from openred import __version__
from openred.errors import NodeRefused, RequestRefused
from openred.modules import LoadReport
from openred.modules.monitoring.health import run_checks
from openred.node.admin_auth import ADMIN_KEY, require_bearer, require_local_caller, sensitive
from openred.node.readmodels import PeerRow
from openred.node.routes import EXTENSION
from openred.node.services import NodeServices
from openred.node.tokens import TokenStatus
from openred.web.problems import install, problem_response

__all__ = ["ADMIN_PREFIX", "NODE_APP", "REGISTRAR", "admin_body", "create_admin_app",
           "explain_missing_routes", "node_services"]

ADMIN_PREFIX = "/admin/v1"
NODE_APP = "openred.admin.node_app"
REGISTRAR = "openred.node.registrar"
"""Key of the :class:`~openred.node.lifecycle.Registrar` in the node app's extensions."""
TOKEN_WAIT = 10.0


OWNERS = {"metrics": "monitoring"}
"""Admin routes a module serves outside ``/admin/v1/<module name>/``."""


def explain_missing_routes(app: Quart, report: LoadReport) -> None:
    """Answer a request for an admin route that does not exist with a problem that says why.

    The CLI offers every installed module's commands (it cannot know what a node enables): a
    module's command on a node that does not enable the module, or on which it failed to load,
    got Werkzeug's "The requested URL was not found on the server. If you entered the URL
    manually please check your spelling and try again." Now it is 404 ``module-not-enabled``
    (or ``module-failed``) naming the module and what to do; any other unknown route is named.
    """

    @app.errorhandler(NotFound)
    async def _not_found(exc: NotFound) -> Response:
        rest = request.path.removeprefix(ADMIN_PREFIX + "/")
        first = rest.split("/", 1)[0]
        module = OWNERS.get(first, first)
        if rest != request.path and module in report.not_enabled:
            return problem_response(
                404, "module-not-enabled",
                f"the {module} module is not enabled on this node: add it to OPENRED_MODULES "
                "(the data directory's .env) and restart the node")
        if rest != request.path and module in report.failed:
            return problem_response(
                404, "module-failed",
                f"the {module} module failed to load on this node: "
                f"{report.failed[module]}")
        return problem_response(404, "not-found",
                                f"the admin API has no route {request.method} {request.path}")


def node_services() -> NodeServices:
    """The running node's services, or 503 while the node is starting or stopping."""
    node_app: Quart = current_app.extensions[NODE_APP]
    services = node_app.extensions.get(EXTENSION)
    if not isinstance(services, NodeServices):
        raise RequestRefused(503, "node-not-ready", "the node is starting or stopping",
                             retry_after=1)
    return services


async def admin_body() -> dict[str, Any]:
    """The request's body, a JSON object: 400 when it is not one, 422 when a string in it (a
    value or a key, at any depth) is not Unicode text.

    JSON's ``\\uXXXX`` escapes can carry lone surrogates (``"\\ud800"``), which Python's parser
    accepts and which no UTF-8 encoder takes: a node id, a session id, a message or a purpose
    holding one failed in SQLite, in the HTTP client or in the problem naming it (500). Every
    admin route that reads a body reads it here (the modules' routes too).
    """
    body = await request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise RequestRefused(400, "malformed", "the request body is not a JSON object")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRefused(422, "invalid-text", "the request body holds a string that is not "
                             "Unicode text (a lone surrogate)") from None
    return body


def _text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise RequestRefused(422, "invalid-field", f"{name} must be a non-empty string")
    return value


async def resolve_peer(services: NodeServices, text: str) -> str:
    """A node id: ``text`` itself when it is a full id, else the one known peer it prefixes."""
    if len(text) == 32:
        return text
    async with services.reads.session() as s:
        ids = [r.node_id for r in (await s.exec(select(PeerRow))).all()]
    matches = [node_id for node_id in ids if node_id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RequestRefused(404, "unknown-peer", f"no known peer starts with {text!r}")
    raise RequestRefused(409, "ambiguous-peer", f"{len(matches)} known peers start with {text!r}")


def create_admin_app(node_app: Quart, admin_key: str) -> Quart:
    """The admin app over ``node_app``'s services (opened when ``node_app`` starts serving)."""
    app = Quart("openred.node.admin")
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config[ADMIN_KEY] = admin_key
    app.extensions[NODE_APP] = node_app
    install(app)

    @app.before_request
    async def authenticate() -> None:
        if request.remote_addr not in (None, "127.0.0.1", "::1", "<local>"):
            raise RequestRefused(403, "admin-local-only", "the admin API is local only")
        require_local_caller()
        require_bearer()

    @app.get(f"{ADMIN_PREFIX}/status")
    async def status() -> dict[str, Any]:
        svc = node_services()
        health = await svc.health()
        checks = await run_checks(svc.health_probes())
        registrar = node_app.extensions.get(REGISTRAR)
        registration = asdict(registrar.state) if registrar is not None else None
        record = registrar.record if registrar is not None else None
        return {
            **health, "version": __version__, "api_url": svc.settings.base_url,
            "directory_url": svc.settings.directory_url,
            "registration": registration,
            "record_version": record.record.version if record is not None else None,
            "sessions": {"active": len(await svc.book.sessions(state="active")),
                         "total": len(await svc.book.sessions())},
            # What GET /api/v3/health checks: "ok" or why the part fails.
            "checks": {c.name: c.detail for c in checks},
        }

    @app.get(f"{ADMIN_PREFIX}/peers")
    async def peers() -> dict[str, Any]:
        svc = node_services()
        async with svc.reads.session() as s:
            rows = list((await s.exec(select(PeerRow).order_by(PeerRow.node_id))).all())
        active: dict[str, int] = {}
        for row in await svc.book.sessions(state="active"):
            active[row.peer] = active.get(row.peer, 0) + 1
        return {"items": [{
            "node_id": r.node_id, "api_url": r.api_url, "updated_at": r.updated_at,
            "last_session_at": r.last_session_at, "active_sessions": active.get(r.node_id, 0),
        } for r in rows]}

    @app.get(f"{ADMIN_PREFIX}/sessions")
    async def sessions() -> dict[str, Any]:
        svc = node_services()
        state = request.args.get("state") or None
        rows = sorted(await svc.book.sessions(state=state), key=lambda r: r.established_at)
        return {"items": [{
            "session_id": r.session_id, "peer": r.peer, "role": r.role, "state": r.state,
            "suite": r.suite, "established_at": r.established_at, "expires_at": r.expires_at,
            "renew_at": r.renew_at, "renewed_by": r.renewed_by,
        } for r in rows]}

    @app.post(f"{ADMIN_PREFIX}/connect")
    @sensitive
    async def connect() -> tuple[dict[str, Any], int]:
        svc = node_services()
        peer = await resolve_peer(svc, _text_field(await admin_body(), "peer"))
        if peer == str(svc.keys.node_id):
            raise RequestRefused(422, "self-connection", "a node does not connect to itself")
        grant_id = await svc.request_grant(peer)
        deadline = time.monotonic() + TOKEN_WAIT
        while (state := await svc.book.token_state(grant_id)).status is TokenStatus.UNKNOWN:
            if time.monotonic() > deadline:
                raise NodeRefused(504, "token-not-delivered",
                                  "the directory granted the connection but this node's token "
                                  f"did not arrive within {TOKEN_WAIT:.0f} s")
            await asyncio.sleep(0.05)
        # The grant id is the directory's word: it must be a grant from this node to the peer
        # asked for (a compromised directory could name one this node holds with someone else).
        token = state.token
        if token is not None and (token.role != "initiator" or str(token.peer) != peer):
            raise NodeRefused(502, "wrong-grant", "the directory answered with a grant for "
                              "another connection than the one asked for")
        channel = await svc.connect(grant_id)
        return {"session_id": channel.session_id, "peer": channel.peer,
                "grant_id": grant_id}, 201

    @app.post(f"{ADMIN_PREFIX}/send")
    @sensitive
    async def send() -> dict[str, Any]:
        svc = node_services()
        body = await admin_body()
        text = _text_field(body, "text")
        if isinstance(body.get("session_id"), str):
            session_id = body["session_id"]
        else:
            peer = await resolve_peer(svc, _text_field(body, "peer"))
            rows = [r for r in await svc.book.sessions(state="active") if r.peer == peer]
            if not rows:
                raise await svc.no_session(peer)
            session_id = max(rows, key=lambda r: r.established_at).session_id
        receipt = await svc.send_message(session_id, text)
        return {"message_id": receipt.message_id, "session_id": session_id,
                "received_at": receipt.received_at}

    @app.get(f"{ADMIN_PREFIX}/inbox")
    @sensitive
    async def inbox() -> dict[str, Any]:
        svc = node_services()
        try:
            limit = int(request.args.get("limit", "100"))
        except ValueError:
            raise RequestRefused(422, "invalid-field", "limit is an integer") from None
        if not 1 <= limit <= 1000:
            raise RequestRefused(422, "invalid-field", "limit is 1..1000")
        messages = await svc.messaging.inbox(limit=limit)
        return {"items": [{"message_id": m.message_id, "session_id": m.session_id,
                           "peer": m.peer, "text": m.text, "received_at": m.at}
                          for m in messages]}

    return app
