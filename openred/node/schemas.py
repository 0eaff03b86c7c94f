"""The request bodies of the node's P2P API as the OpenAPI document publishes them (DESIGN §5, §6).

Documentation only (quart-schema's ``document_request``): the routes parse their bodies
strictly themselves (:func:`~openred.node.handshake.parse_handshake`,
:meth:`~openred.node.envelope.Envelope.from_json`, :func:`~openred.node.batch.parse_batch`,
:meth:`~openred.node.token_service.TokenReceiver.receive`) and answer their own slugs (400
``malformed-*``, 413, 422 ``invalid-*``), never quart-schema's 422. The models say what those
parsers accept, so a client (and schemathesis) knows the shape without reading the code.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from openred.crypto.session import MAX_COUNTER
from openred.directory.schemas import NodeIdText, SignedRecordBody
from openred.node.envelope import MAX_CIPHERTEXT
from openred.node.handshake import MAX_MESSAGE

__all__ = ["BatchBody", "BatchCall", "DeliveryBody", "EnvelopeBody", "GrantBody",
           "HandshakeBody"]

_B64 = r"[A-Za-z0-9_-]"
_CANONICAL = rf"(?:{_B64}{{4}})*(?:{_B64}[AQgw]|{_B64}{{2}}[AEIMQUYcgkosw048])?"
"""Canonical base64url without padding: the unused bits of the last character are zero."""

Id16 = Annotated[str, Field(pattern=rf"^{_B64}{{21}}[AQgw]$", min_length=22, max_length=22)]
"""16 bytes, base64url without padding (session and grant ids)."""
Counter = Annotated[int, Field(ge=0, le=MAX_COUNTER - 1)]
Ciphertext = Annotated[str, Field(pattern=rf"^{_CANONICAL}$",
                                  max_length=(MAX_CIPHERTEXT * 4 + 2) // 3)]
Seconds = Annotated[int, Field(ge=0, le=2**53 - 1)]
Hash32 = Annotated[str, Field(pattern=rf"^{_B64}{{42}}[AEIMQUYcgkosw048]$")]
Base64url = Annotated[str, Field(pattern=rf"^{_CANONICAL}$", max_length=4096)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvelopeBody(_Strict):
    """An encrypted call (``POST /api/v3/p2p/<module>/<action>``): exactly these fields."""

    session_id: Id16
    counter: Counter
    ciphertext: Ciphertext


class HandshakeBody(_Strict):
    """Noise KKpsk0 message 1 for a grant; ``renews``: a renewal proof sealed on the old
    session (DESIGN §6)."""

    grant_id: Id16
    message: Annotated[str, Field(pattern=rf"^{_CANONICAL}$", min_length=2,
                                  max_length=(MAX_MESSAGE * 4 + 2) // 3)]
    renews: EnvelopeBody | None = None


class BatchCall(_Strict):
    """One call of a batch: its route and the envelope its own route would carry."""

    route: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}/[a-z][a-z0-9_]{0,31}$")]
    session_id: Id16
    counter: Counter
    ciphertext: Ciphertext


class BatchBody(_Strict):
    """``{"calls": [...]}``: 1 to 64 calls (:data:`openred.node.batch.MAX_CALLS`)."""

    calls: Annotated[list[BatchCall], Field(min_length=1, max_length=64)]


class GrantBody(_Strict):
    """A grant as the directory signs it (DESIGN §5)."""

    v: Literal[3]
    grant_id: Id16
    initiator: NodeIdText
    responder: NodeIdText
    issued_at: Seconds
    expires_at: Seconds
    suite: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    initiator_record: Hash32
    responder_record: Hash32


class LogEntryBody(_Strict):
    """The directory log entry that logged the grant (every field its hash covers)."""

    seq: Seconds
    stream: Annotated[str, Field(max_length=256)]
    stream_version: Seconds
    type: Annotated[str, Field(max_length=128)]
    schema_version: Seconds
    recorded_at: Annotated[str, Field(max_length=64)]
    payload: Base64url
    prev_hash: Base64url
    entry_hash: Base64url
    signature: Base64url


class InclusionProofBody(_Strict):
    """RFC 6962 inclusion proof of the entry in the checkpoint's tree."""

    leaf_index: Seconds
    tree_size: Seconds
    hashes: Annotated[list[Hash32], Field(max_length=64)]


class DeliveryBody(_Strict):
    """A grant half pushed by the directory (``POST /api/v3/tokens/receive``)."""

    grant: GrantBody
    grant_signature: Annotated[str, Field(pattern=rf"^{_B64}{{85}}[AQgw]$")]
    sealed_token: Annotated[str, Field(pattern=rf"^{_B64}{{106}}[AEIMQUYcgkosw048]$")]
    """80 bytes: the token sealed to this node's box key."""
    peer_record: SignedRecordBody
    entry: LogEntryBody
    checkpoint: Annotated[str, Field(max_length=4096)]
    inclusion_proof: InclusionProofBody
