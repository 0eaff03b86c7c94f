"""The node routes' answers are exactly what validating them against their models would send.

``register``, ``heartbeat``, ``discover`` and ``deregister`` build their answers once
(``routing.answer``) and document their models with ``document_response`` instead of
validating the answer again on every request. These tests pin both halves: every answer
validates against its documented model, and its bytes are the ones the former
``validate_response`` path produced (the model's dump through the app's JSON provider:
sorted keys, no whitespace, a final newline). The OpenAPI document still lists the models.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from openred.directory.schemas import DeregisterReply, HeartbeatReply, NodeItem, NodePage
from openred.web.client import Reply
from tests.directory.conftest import Directory


def validated_bytes(model: type[BaseModel], body: bytes) -> bytes:
    """What quart-schema's validate_response would have sent for this answer."""
    dumped = model.model_validate(json.loads(body)).model_dump()
    return (json.dumps(dumped, sort_keys=True, separators=(",", ":")) + "\n").encode()


def check(reply: Reply, model: type[BaseModel], status: int) -> Any:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.body == validated_bytes(model, reply.body)
    return reply.json()


async def test_node_answers_match_their_models_byte_for_byte(
    directory: Directory, make_node: Any
) -> None:
    alice, bob = await make_node(), await make_node()
    first = check(await alice.register(), NodeItem, 201)
    assert first["record"]["node_id"] == alice.node_id
    check(await bob.register(), NodeItem, 201)
    again = check(await alice.register(), NodeItem, 200)  # a newer version: an update
    assert again["record"]["version"] == 2
    one = check(await alice.call("GET", f"/api/v3/nodes/discover?node_id={bob.node_id}"),
                NodePage, 200)
    assert [item["record"]["node_id"] for item in one["items"]] == [bob.node_id]
    page = check(await alice.call("GET", "/api/v3/nodes/discover?limit=1"), NodePage, 200)
    assert page["next_cursor"] is not None
    check(await alice.call("POST", "/api/v3/nodes/heartbeat", {}), HeartbeatReply, 200)
    check(await bob.call("DELETE", f"/api/v3/nodes/{bob.node_id}"), DeregisterReply, 200)


async def test_the_openapi_document_still_names_the_answer_models(
    directory: Directory, make_node: Any
) -> None:
    node = await make_node()
    doc = (await node.call("GET", "/openapi.json", signed=False)).json()

    def schema_of(path: str, method: str, status: str) -> str:
        content = doc["paths"][path][method]["responses"][status]["content"]
        return str(content["application/json"]["schema"]["title"])

    assert schema_of("/api/v3/nodes/register", "post", "201") == "NodeItem"
    assert schema_of("/api/v3/nodes/register", "post", "200") == "NodeItem"
    assert schema_of("/api/v3/nodes/discover", "get", "200") == "NodePage"
    assert schema_of("/api/v3/nodes/heartbeat", "post", "200") == "HeartbeatReply"
    assert schema_of("/api/v3/nodes/{node_id}", "delete", "200") == "DeregisterReply"
    assert "NodeItem" in doc["components"]["schemas"]
