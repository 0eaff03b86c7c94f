"""The wire shapes of the directory API (pydantic, validated and published by quart-schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NodeIdText = Annotated[str, Field(pattern=r"^[a-z2-7]{32}$", examples=["a" * 32])]
KeyText = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$", min_length=43, max_length=43)]
Seconds = Annotated[int, Field(ge=0, le=2**53 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NodeRecordBody(_Strict):
    """A node record (DESIGN §2), exactly the fields the node signed."""

    node_id: NodeIdText
    api_url: Annotated[str, Field(min_length=8, max_length=512)]
    sign_key: KeyText
    box_key: KeyText
    modules: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)]
    issued_at: Seconds
    version: Annotated[int, Field(ge=1, le=2**53 - 1)]


class SignedRecordBody(_Strict):
    """``{record, signature}``: a record and the node's Ed25519 signature (base64url)."""

    record: NodeRecordBody
    signature: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{86}$")]


class NodeItem(_Strict):
    """A node as discovery shows it: its signed record verbatim, status and last heartbeat."""

    record: NodeRecordBody
    signature: str
    status: Literal["active", "stale", "expired", "revoked"]
    last_seen: int


class NodePage(_Strict):
    items: list[NodeItem]
    next_cursor: str | None


class DiscoverQuery(BaseModel):
    """``?node_id=`` for one node, or a page: ``?status=&limit=&cursor=``."""

    model_config = ConfigDict(extra="forbid")

    node_id: NodeIdText | None = None
    status: Literal["active", "stale", "expired", "revoked"] | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    cursor: NodeIdText | None = None


class EmptyBody(_Strict):
    """An empty JSON object."""


class HeartbeatReply(_Strict):
    node_id: str
    status: str
    last_seen: int
    heartbeat_interval: int


class DeregisterReply(_Strict):
    node_id: str
    status: Literal["deregistered"]


class ConnectionRequest(_Strict):
    target: NodeIdText


class Delivered(_Strict):
    initiator: bool
    responder: bool


class ConnectionReply(_Strict):
    grant_id: str
    expires_at: int
    suite: str
    delivered: Delivered


class NodeCounts(_Strict):
    active: int
    stale: int
    expired: int
    revoked: int


class LogFacts(_Strict):
    size: int
    root: str


class Health(_Strict):
    status: str
    version: str
    nodes: NodeCounts
    log: LogFacts


class DirectoryKey(_Strict):
    """The key nodes pin (``OPENRED_DIRECTORY_KEY``), its id, log origin and note vkey."""

    key: str
    id: str
    origin: str
    vkey: str


class CheckpointQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_size: Annotated[int | None, Field(alias="from", ge=0, le=2**63 - 1)] = None
    to_size: Annotated[int | None, Field(alias="to", ge=0, le=2**63 - 1)] = None


class CheckpointReply(_Strict):
    checkpoint: str
    consistency_proof: list[str] | None
