"""Child process of the multi-writer tests: one of several processes appending to one log.

Usage::

    python -m tests.store.multi_writer DB DIR NAME append FIRST_ID PAUSE [follow]
    python -m tests.store.multi_writer DB DIR NAME rotate FIRST_ID BEFORE AFTER

Every writer opens the log, prints ``ready``, waits for ``DIR/go``, then:

* ``append``: appends one event at a time (PAUSE seconds apart) until ``DIR/stop`` exists,
  printing ``ack <seq>`` per acknowledged append. Its signer holds the owner's key; with
  ``follow`` it is a signer that, like a jail whose key was rotated, signs with whichever key
  ``DIR/key`` names. A refused
  append prints ``refused <error class>``; without ``follow`` the writer then stops.
* ``rotate``: appends BEFORE events, hands the log to the rotated key (printing
  ``rotated <seq>``), writes ``DIR/key``, appends AFTER more events with the new signer.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from openred.crypto.identity import EntryHash, Signature, SignKey
from openred.errors import ConfigurationError, OpenRedError
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.store.history import peer_event

OWNER_SEED = b"\x51" * 32
ROTATED_SEED = b"\x52" * 32
SEEDS = {"owner": OWNER_SEED, "rotated": ROTATED_SEED}


class KeyFileSigner:
    """Signs with the key ``key_file`` names (``owner`` until the file says otherwise)."""

    def __init__(self, key_file: Path) -> None:
        self._file = key_file
        self._signers = {name: InProcessSigner.from_seed(seed) for name, seed in SEEDS.items()}

    def _current(self) -> InProcessSigner:
        try:
            name = self._file.read_text().strip()
        except FileNotFoundError:
            name = "owner"
        return self._signers[name]

    @property
    def sign_key(self) -> SignKey:
        return self._current().sign_key

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        return await self._current().sign_entry_hashes(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return await self._current().sign_checkpoint(note_body)


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


async def wait_for(path: Path) -> None:
    while not path.exists():
        await asyncio.sleep(0.002)


async def run(db: Path, work: Path, args: list[str]) -> None:
    mode, first_id = args[0], int(args[1])
    follow = mode == "append" and args[3:] == ["follow"]
    signer = KeyFileSigner(work / "key") if follow else InProcessSigner.from_seed(OWNER_SEED)
    store = await SQLiteEventStore.open(
        db, signer, registry=node_registry(), projections=node_projections(),  # type: ignore[arg-type]
        checkpoint_every=20, checkpoint_interval=0,
    )
    try:
        say("ready")
        await wait_for(work / "go")
        if mode == "rotate":
            before, after = int(args[2]), int(args[3])
            for i in range(before):
                say(f"ack {(await store.append_one(peer_event(first_id + i))).seq}")
            rotated = await store.rotate_key(InProcessSigner.from_seed(ROTATED_SEED))
            # Atomically (a reader must never see the file empty between truncate and write).
            (work / "key.tmp").write_text("rotated")
            os.replace(work / "key.tmp", work / "key")
            say(f"rotated {rotated.seq}")
            for i in range(after):
                say(f"ack {(await store.append_one(peer_event(first_id + before + i))).seq}")
            return
        i, pause = 0, float(args[2])
        while not (work / "stop").exists():
            try:
                stored = await store.append_one(peer_event(first_id + i))
            except ConfigurationError as exc:
                say(f"refused {type(exc).__name__}")
                if not follow:
                    return
                await asyncio.sleep(0.005)
                continue
            except OpenRedError as exc:
                say(f"error {type(exc).__name__}: {exc}")
                raise
            say(f"ack {stored.seq}")
            i += 1
            await asyncio.sleep(pause)
    finally:
        await store.close()


def main() -> None:
    db, work = Path(sys.argv[1]), Path(sys.argv[2])
    asyncio.run(run(db, work, sys.argv[4:]))


if __name__ == "__main__":
    main()
