"""Child process of the crash-safety test: append random batches to a log until killed.

Usage: ``python -m tests.store.crash_writer DB SEED FIRST_ID`` (one writer, to replay a cycle
by hand), or ``python -m tests.store.crash_writer --fork-server FD`` (what the test runs): a
process that imports everything once, then forks one writer per request received on the Unix
socket ``FD`` (see :func:`serve`). Starting a Python process and importing the store is most
of a cycle's time; a forked writer opens the log itself, after the fork, so it is the same
writer with its own connections and threads, killed the same way.

A writer prints ``ready <head size>`` once the store is open, then after every acknowledged
append (the ``await store.append`` returned, so the transaction committed) one line::

    ack <first seq> <last seq> <last stream> <last stream version> <sha256 of the entry hashes>

The parent has it killed with SIGKILL at a random moment and checks that every
acknowledged batch is in the database, byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import sys
import traceback
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


def serve(sock: socket.socket) -> None:
    """Fork one writer per request on ``sock``; kill it when told; say how it ended.

    A request is one message ``DB SEED FIRST_ID`` carrying two descriptors, the write ends of
    the writer's stdout and stderr; the answer is ``started PID``. The next message, ``kill``,
    has the server SIGKILL that writer (its own child, not reaped until then: the pid cannot
    name another process) and answer ``exited PID STATUS`` (the raw wait status). One writer
    at a time; the server leaves when the socket closes.
    """
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 4096, 2)
        if not message:
            return
        path, seed, first_id = message.decode().split()
        pid = os.fork()
        if pid == 0:
            sock.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in fds:
                os.close(fd)
            try:
                asyncio.run(run(Path(path), int(seed), int(first_id)))
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        for fd in fds:
            os.close(fd)
        sock.sendall(f"started {pid}".encode())
        order = sock.recv(16)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if order != b"kill":
            return
        sock.sendall(f"exited {pid} {status}".encode())


def main() -> None:
    if sys.argv[1] == "--fork-server":
        # What every writer would redo is done once, before the first fork: the imports
        # (Alembic too) and the expected schema opening checks against.
        from openred.store.migrate import head_revision
        from openred.store.schema import expected_schema

        head_revision("node")
        expected_schema("node")
        serve(socket.socket(fileno=int(sys.argv[2])))
        return
    path, seed, first_id = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    asyncio.run(run(path, seed, first_id))


if __name__ == "__main__":
    main()
