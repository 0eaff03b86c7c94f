"""This node's own signed record (DESIGN §2): the one it registers, the one grants must name.

The record is kept in ``DATA_DIR/node-record.json`` with the version last logged as
``NodeRegistered``. :meth:`OwnRecord.current` compares what the stored record says (URL, keys,
modules) with what the node is now; on any change it signs a new record with the next
``version`` (so the directory accepts it as newer). The serving app asks for it before it
serves, so a token delivery is always checked against the record the node registers
(:class:`~openred.node.token_service.TokenReceiver`: a grant must name exactly this record for
this node); the :class:`~openred.node.lifecycle.Registrar` registers it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from openred.crypto.client import PublicKeys
from openred.crypto.records import NodeRecord, SignedNodeRecord, sign_record
from openred.errors import OpenRedError
from openred.files import write_private

__all__ = ["RECORD_FILE", "OwnRecord"]

logger = logging.getLogger("openred.node.lifecycle")

RECORD_FILE = "node-record.json"


class OwnRecord:
    """The node's current signed record, and the file that keeps it across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signed: SignedNodeRecord | None = None
        """The current record once :meth:`current` ran (None before: no grant names it)."""
        self._hash: bytes | None = None

    def hash(self) -> bytes | None:
        """The ``record_hash`` a grant must name for this node (None: no current record yet)."""
        return self._hash

    def stored(self) -> tuple[SignedNodeRecord | None, int]:
        """The record the file keeps and the version last logged as ``NodeRegistered``."""
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
            return SignedNodeRecord.from_wire(obj["signed"]), int(obj.get("logged_version", 0))
        except FileNotFoundError:
            return None, 0
        except (ValueError, KeyError, TypeError, RecursionError, OpenRedError) as exc:
            logger.warning("%s is unreadable (%s): signing a new record", self.path, exc)
            return None, 0

    def save(self, signed: SignedNodeRecord, logged_version: int) -> None:
        write_private(self.path, json.dumps(
            {"signed": signed.to_wire(), "logged_version": logged_version}, indent=2) + "\n")

    async def current(
        self, *, keys: PublicKeys, api_url: str, modules: tuple[str, ...], now: int,
        sign: Callable[[str, bytes], Awaitable[bytes]],
    ) -> SignedNodeRecord:
        """The node's signed record, re-signed with the next version when anything changed."""
        stored, logged = self.stored()
        if stored is not None:
            r = stored.record
            if (r.api_url == api_url and r.sign_key == keys.sign_key
                    and r.box_key == keys.box_key and r.modules == modules):
                self._set(stored)
                return stored
        version = 1 if stored is None else stored.record.version + 1
        record = NodeRecord.build(sign_key=keys.sign_key, box_key=keys.box_key,
                                  api_url=api_url, modules=modules, issued_at=now,
                                  version=version)
        signed = await sign_record(record, sign)
        self.save(signed, logged)
        if stored is not None:
            logger.info("node record changed: version %d signed", version)
        self._set(signed)
        return signed

    def _set(self, signed: SignedNodeRecord) -> None:
        self.signed, self._hash = signed, signed.hash
