"""Event schema versions: old payloads are upcast on read, after the stored bytes verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_tools.verify import verify
from openred.errors import SchemaError
from openred.store.events import EventRegistry, NewEvent, Payload
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore


def registry_v2() -> EventRegistry:
    registry = EventRegistry()

    @registry.upcaster("Greeted", from_version=1)
    def split_name(payload: Payload) -> Payload:
        first, _, last = payload["name"].partition(" ")
        return {"first": first, "last": last}

    return registry


async def test_old_events_are_read_at_the_current_version(tmp_path: Path) -> None:
    signer = InProcessSigner.from_seed(b"\x05" * 32)
    v1 = EventRegistry()
    v1.register("Greeted", version=1)
    store = await SQLiteEventStore.open(tmp_path, signer, registry=v1, checkpoint_interval=0)
    await store.append([NewEvent("person:1", "Greeted", {"name": "Ada Lovelace"})])
    await store.close()

    store = await SQLiteEventStore.open(tmp_path, signer, registry=registry_v2(),
                                        checkpoint_interval=0)
    try:
        (event,) = await store.read_stream("person:1")
        assert event.schema_version == 2
        assert event.payload == {"first": "Ada", "last": "Lovelace"}
        await store.append([NewEvent("person:2", "Greeted", {"first": "Alan", "last": "Turing"},
                                     schema_version=2)])
        stored = await store.read()
        assert [e.schema_version for e in stored[1:]] == [1, 2]  # the log keeps what was signed
    finally:
        await store.close()
    assert verify(tmp_path).ok


def test_the_registry_knows_each_types_current_version() -> None:
    registry = registry_v2()
    assert registry.current_version("Greeted") == 2
    assert registry.current_version("LogOpened") == 1
    assert registry.known("Greeted") and not registry.known("Nope")


def test_a_missing_upcaster_is_an_error() -> None:
    registry = EventRegistry()
    registry.register("Greeted", version=3)
    with pytest.raises(SchemaError, match="no upcaster from schema version 1"):
        registry.upcast("Greeted", 1, {})


def test_an_upcaster_cannot_be_registered_twice() -> None:
    registry = registry_v2()
    with pytest.raises(ValueError):
        registry.upcaster("Greeted", from_version=1)(lambda p: p)
