"""The messaging module's event types (their names predate modules and live in the node's list).

* ``MessageSent {message_id, session_id, peer, size, body}`` — body wrapped by the jail.
* ``MessageReceived {message_id, session_id, peer, size, body, counter, sent_at}`` — body
  wrapped; ``counter`` is the transport counter of the request that carried it, so a restored
  session re-marks it in its replay window (see :mod:`openred.node.sessions`).
* ``MessageDelivered {message_id, session_id, received_at}`` — the peer's delivery receipt,
  authenticated by the session and bound to the request it answers.
"""

from __future__ import annotations

from openred.node.events import MESSAGE_DELIVERED, MESSAGE_RECEIVED, MESSAGE_SENT
from openred.store.events import EventRegistry

__all__ = ["MESSAGE_DELIVERED", "MESSAGE_RECEIVED", "MESSAGE_SENT", "register_events"]

MESSAGING_EVENT_TYPES = (MESSAGE_SENT, MESSAGE_RECEIVED, MESSAGE_DELIVERED)


def register_events(registry: EventRegistry) -> None:
    """Declare the messaging event types at their current schema versions."""
    for event_type in MESSAGING_EVENT_TYPES:
        registry.register(event_type)
