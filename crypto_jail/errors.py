"""The crypto jail's own error types (the jail never imports ``openred``).

::

    JailFailure                 base of every error the jail raises on purpose
    ├── OpRefused               an operation was refused; carries a stable ``code`` for the wire
    ├── FrameError              a frame could not be read (bad length, truncated, too large)
    └── KeystoreError           the keystore is missing, exists already, is damaged, or the
                                passphrase is wrong

The client maps the wire codes to ``openred.errors`` in exactly one place
(``openred/crypto/client.py``). Details never carry secret material.
"""

from __future__ import annotations

# Stable wire codes (the client maps them; keep in sync with openred/crypto/client.py).
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
REFUSED = "refused"
HANDSHAKE_FAILED = "handshake_failed"
DECRYPT_FAILED = "decrypt_failed"
UNKNOWN_HANDLE = "unknown_handle"
MALFORMED_FRAME = "malformed_frame"
FRAME_TOO_LARGE = "frame_too_large"
INTERNAL = "internal"


class JailFailure(Exception):
    """Root of the errors the jail raises on purpose."""


class OpRefused(JailFailure):
    """An operation was refused; ``code`` is one of the wire codes above."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class FrameError(JailFailure):
    """A frame could not be read; ``code`` says why and ``fatal`` whether to drop the peer."""

    def __init__(self, code: str, detail: str, *, fatal: bool) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.fatal = fatal


class KeystoreError(JailFailure):
    """The keystore cannot be created or opened (the message is safe to print)."""
