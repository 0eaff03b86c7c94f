"""The node's event types (DESIGN §5, §6, §10) and their registry.

Payload conventions: node ids are 32-character strings, keys and binary values base64url,
instants are Unix seconds (UTC). Secrets are never written in clear: tokens are kept exactly as
they arrived (sealed to the node's own X25519 key), session state and message bodies are
wrapped by the crypto jail before they reach the log.
"""

from __future__ import annotations

from openred.store.events import EventRegistry

NODE_REGISTERED = "NodeRegistered"
PEER_DISCOVERED = "PeerDiscovered"
TOKEN_RECEIVED = "TokenReceived"
TOKEN_CONSUMED = "TokenConsumed"
TOKEN_EXPIRED = "TokenExpired"
HANDSHAKE_REJECTED = "HandshakeRejected"
DIRECTORY_FORK_DETECTED = "DirectoryForkDetected"
SESSION_ESTABLISHED = "SessionEstablished"
SESSION_EXPIRED = "SessionExpired"
SESSION_CLOSED = "SessionClosed"
SESSION_RENEWED = "SessionRenewed"
SESSION_STATE_SAVED = "SessionStateSaved"
MESSAGE_SENT = "MessageSent"
MESSAGE_RECEIVED = "MessageReceived"
MESSAGE_DELIVERED = "MessageDelivered"
PROJECTIONS_CLEANED = "ProjectionsCleaned"  # see openred.node.cleaning

NODE_EVENT_TYPES = (
    NODE_REGISTERED,
    PEER_DISCOVERED,
    TOKEN_RECEIVED,
    TOKEN_CONSUMED,
    TOKEN_EXPIRED,
    HANDSHAKE_REJECTED,
    DIRECTORY_FORK_DETECTED,
    SESSION_ESTABLISHED,
    SESSION_EXPIRED,
    SESSION_CLOSED,
    SESSION_RENEWED,
    SESSION_STATE_SAVED,
    MESSAGE_SENT,
    MESSAGE_RECEIVED,
    MESSAGE_DELIVERED,
    PROJECTIONS_CLEANED,
)


def node_registry() -> EventRegistry:
    """An event registry that knows every node event type at its current schema version."""
    from openred.modules.builtin import builtin_event_types

    registry = EventRegistry()
    for event_type in (*NODE_EVENT_TYPES, *builtin_event_types()):
        registry.register(event_type)
    return registry


def grant_stream(grant_id: str) -> str:
    return f"grant:{grant_id}"


def handshake_stream(grant_id: str) -> str:
    """Rejected handshakes for one grant id (apart from ``grant:``, whose versions they
    would otherwise move under a concurrent good handshake or a later delivery)."""
    return f"handshake:{grant_id}"


def session_stream(session_id: str) -> str:
    return f"session:{session_id}"


def node_stream(node_id: str) -> str:
    return f"node:{node_id}"
