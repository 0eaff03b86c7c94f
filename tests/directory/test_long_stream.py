"""A node's long stream (mreview): the directory decides on each node's stream in the signed
log, and a node lengthens its own stream at will — every registration of a newer record is a
``NodeUpdated`` (600 signed requests a minute by default). Reading and folding the whole
stream on every miss of the node cache, on the event loop, made each of that node's requests
cost more than the one before: one node could slow the directory for every other."""

from __future__ import annotations

from typing import Any

import pytest

from openred.directory import service as service_module
from tests.directory.conftest import Directory

GRANT = "/api/v3/tokens/request-connection"


async def test_a_miss_of_the_node_cache_reads_only_the_entries_it_has_not_folded(
    directory: Directory, make_node: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob = await make_node(), await make_node()
    assert (await alice.register()).status == 201
    assert (await bob.register()).status == 201
    for _ in range(40):
        assert (await bob.register()).status == 200  # a newer version each time
    read = 0
    real = service_module.row_to_event

    def counting(row: Any) -> Any:
        nonlocal read
        read += 1
        return real(row)

    monkeypatch.setattr(service_module, "row_to_event", counting)
    assert (await bob.register()).status == 200  # drops bob's view: the next read misses
    read = 0
    reply = await alice.call("POST", GRANT, {"target": bob.node_id})
    assert reply.status == 201, reply.body
    assert len(bob.received) == 1
    assert read <= 4, f"{read} entries of bob's 42 read for one grant"
