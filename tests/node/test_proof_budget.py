"""A push the node can only check with a consistency proof from a slow directory.

A node served on loopback (real jail, log and Hypercorn) gets grant halves pushed as the
directory pushes them: signed, one attempt of the directory's push timeout (its default).
Each delivery after the first needs a consistency proof between the checkpoint the node holds
and the one pushed, which the node fetches from the directory (here a directory whose
``GET /api/v3/directory/checkpoint`` answers only after the push timeout).

Before: the node's fetch had the client's budget (10 s a try, three tries), longer than the
push's 5 s. The push gave up (the directory logs ``ConnectionGrantFailed``) with no answer
while the node still waited for its proof; Quart cancels the handler of a client that left, so
the node mostly dropped the half too (unless its append was already under way), but each of
the directory's attempts met the same wait and piled one more fetch on the slow directory.
Now the node answers 503 ``directory-unreachable`` (Retry-After) within half the push timeout,
with nothing accepted, and the next push of the same half is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import pytest

from openred.errors import PeerUnreachable
from openred.node.tokens import TokenStatus
from openred.settings import DirectorySettings
from openred.web.client import HttpClient
from tests.node.test_app import World, now, problem, push
from tests.node.test_fastpath import world

__all__ = ["world"]

PUSH_TIMEOUT = next(f.default for f in dataclasses.fields(DirectorySettings)
                    if f.name == "push_timeout")
"""What a directory waits for a node's answer to one push unless its operator says otherwise."""


async def test_a_push_waiting_on_a_slow_directorys_proof_is_refused_before_the_push_gives_up(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, first = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, first)).status == 200  # b holds a checkpoint now
    grant, _, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                 issued_at=now())
    fetch, released = world.directory.fetch, asyncio.Event()
    slow_for = PUSH_TIMEOUT + 1.5

    async def slow(*args: Any) -> Any:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released.wait(), slow_for)
        return await fetch(*args)

    monkeypatch.setattr(world.directory, "fetch", slow)
    pusher = HttpClient(signer=world.pusher.signer, allow_private=True, attempts=1,
                        total_timeout=PUSH_TIMEOUT, connect_timeout=min(3.0, PUSH_TIMEOUT))
    url = f"{world.b.url}/api/v3/tokens/receive"
    try:
        started = time.monotonic()
        try:
            reply = await pusher.request("POST", url, json_body=for_b, signed=True)
        except PeerUnreachable:
            reply = None  # the directory gave up: it logs ConnectionGrantFailed
        took = time.monotonic() - started
        if reply is None:
            await asyncio.sleep(slow_for - took + 1)  # the node's check ends meanwhile
        state = await world.b.services.book.token_state(grant.grant_id)
        assert reply is not None, (
            f"the push gave up after {took:.1f} s; the node then "
            f"{'accepted' if state.status is not TokenStatus.UNKNOWN else 'did not accept'} "
            "the half")
        # A clear refusal, well inside the push's time, and nothing accepted.
        problem(reply, 503, "directory-unreachable")
        assert int(reply.headers["Retry-After"]) >= 1
        assert took < PUSH_TIMEOUT * 0.75, took
        assert state.status is TokenStatus.UNKNOWN, state
        # The directory answering again, the same half pushed again is taken.
        released.set()
        monkeypatch.setattr(world.directory, "fetch", fetch)
        reply = await pusher.request("POST", url, json_body=for_b, signed=True)
        assert reply.status == 200, reply.body
        assert reply.json() == {"grant_id": grant.grant_id, "status": "received"}
    finally:
        released.set()
        await pusher.close()
