"""The file_sharing module's event types (never file contents: names, sizes, hashes, states).

Each offer has its own stream ``file_offer:<offer_id>`` on both nodes.

* ``FileOffered {offer_id, peer, session_id, name, size, digest, root, chunk_size, expires_at,
  source, mtime_ns}`` — the sender offered a local file (``source`` its absolute path,
  ``mtime_ns`` its modification time in nanoseconds when hashed, a decimal string: it is
  beyond JSON's safe integers; both stay on the sender).
* ``FileOfferReceived {offer_id, peer, session_id, name, size, digest, root, chunk_size,
  expires_at}`` — an offer arrived from ``peer``.
* ``FileOfferRevoked {offer_id}`` — the sender revoked it (logged by the sender, and by the
  receiver when told).
* ``FileOfferDeclined {offer_id}`` — the receiver declined it (logged on both sides).
* ``FileOfferExpired {offer_id}`` — found expired (at a request, or when offers are listed).
* ``FileTransferStarted {offer_id, resumed_from}`` — a fetch began at ``resumed_from``
  verified bytes.
* ``FileTransferCompleted {offer_id, path, size}`` — the whole digest matched, the file is at
  ``path``.
* ``FileTransferFailed {offer_id, reason, detail, verified_bytes}`` — the fetch stopped; the
  partial file is kept for a resume.
"""

from __future__ import annotations

from openred.store.events import EventRegistry

FILE_OFFERED = "FileOffered"
FILE_OFFER_RECEIVED = "FileOfferReceived"
FILE_OFFER_REVOKED = "FileOfferRevoked"
FILE_OFFER_DECLINED = "FileOfferDeclined"
FILE_OFFER_EXPIRED = "FileOfferExpired"
FILE_TRANSFER_STARTED = "FileTransferStarted"
FILE_TRANSFER_COMPLETED = "FileTransferCompleted"
FILE_TRANSFER_FAILED = "FileTransferFailed"

FILE_EVENT_TYPES = (
    FILE_OFFERED,
    FILE_OFFER_RECEIVED,
    FILE_OFFER_REVOKED,
    FILE_OFFER_DECLINED,
    FILE_OFFER_EXPIRED,
    FILE_TRANSFER_STARTED,
    FILE_TRANSFER_COMPLETED,
    FILE_TRANSFER_FAILED,
)


def register_events(registry: EventRegistry) -> None:
    """Declare the file_sharing event types at their current schema versions."""
    for event_type in FILE_EVENT_TYPES:
        registry.register(event_type)


def offer_stream(offer_id: str) -> str:
    return f"file_offer:{offer_id}"
