"""Child process of the crash-safety test: append random batches to a log until killed.

Usage: ``python -m tests.store.crash_writer DB SEED FIRST_ID``

Prints ``ready <head size>`` once the store is open, then after every acknowledged append (the
``await store.append`` returned, so the transaction committed) one line::

    ack <first seq> <last seq> <last stream> <last stream version> <sha256 of the entry hashes>

The parent kills this process with SIGKILL at a random moment and checks that every
acknowledged batch is in the database, byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
from pathlib import Path

from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.store.history import peer_event, session_events

SIGNER_SEED = b"\x21" * 32
PEERS = 40


def batch(rng: random.Random, next_id: int) -> tuple[list[NewEvent], int]:
    """A batch of 1-50 node events: peers (from a small pool, so upserts) and session stories."""
    size = rng.randint(1, 50)
    events: list[NewEvent] = []
    while len(events) < size:
        next_id += 1
        if rng.random() < 0.3:
            events.append(peer_event(rng.randrange(PEERS)))
        else:
            events.extend(session_events(next_id, expire=rng.random() < 0.3))
    return events[:size], next_id


def _say(line: str) -> None:
    # One write(2) per line: a kill can cut the output only between lines or leave the last
    # one without its newline, which the parent ignores.
    os.write(1, line.encode() + b"\n")


async def run(path: Path, seed: int, first_id: int) -> None:
    store = await SQLiteEventStore.open(
        path, InProcessSigner.from_seed(SIGNER_SEED), registry=node_registry(),
        projections=node_projections(), checkpoint_every=50, checkpoint_interval=0,
    )
    _say(f"ready {store.head.size}")
    rng = random.Random(seed)
    next_id = first_id
    while True:
        events, next_id = batch(rng, next_id)
        stored = await store.append(events)
        digest = hashlib.sha256(b"".join(e.entry_hash for e in stored)).hexdigest()
        last = stored[-1]
        _say(f"ack {stored[0].seq} {last.seq} {last.stream} {last.stream_version} {digest}")
        # A short random pause keeps the log small enough to verify after every kill, and
        # spreads the kills over appends, checkpoints and idle moments.
        await asyncio.sleep(rng.uniform(0, 0.004))


def main() -> None:
    path, seed, first_id = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    asyncio.run(run(path, seed, first_id))


if __name__ == "__main__":
    main()
