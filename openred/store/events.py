"""Events: what a writer appends, what the log stores, and what readers get back.

Three shapes, one way each (after eventsourcing's mapper):

* :class:`NewEvent` — what a writer asks to append: stream, type, payload, and optionally the
  stream version it expects (optimistic concurrency).
* :class:`StoredEvent` — one row of the ``events`` table exactly as signed and chained.
* :class:`RecordedEvent` — a verified stored event decoded for readers and projections, its
  payload upcast to the current schema version of its type.

An :class:`EventRegistry` knows each event type's current schema version and the upcasters that
bring older payloads forward. Upcasting happens only after the stored bytes were verified. The
store checks every new event against it (:meth:`EventRegistry.check_new`) and freezes it when it
opens, so what a log accepts cannot change under a running store.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from openred.errors import SchemaError
from openred.store.codec import decode_payload

LOG_OPENED = "LogOpened"
KEY_ROTATED = "KeyRotated"
LOG_STREAM = "log"

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a writer wants appended.

    ``expected_version`` is the stream version the writer last saw (0 for a stream it believes
    new); when given and the stream has moved on, the append fails with ConcurrencyConflict.
    ``schema_version`` is the version of the payload's shape; None (the default) means the
    type's current version in the store's registry.
    """

    stream: str
    type: str
    payload: Mapping[str, Any]
    schema_version: int | None = None
    expected_version: int | None = None

    def __post_init__(self) -> None:
        if not self.stream or not self.type:
            raise ValueError("an event needs a stream and a type")
        if self.schema_version is not None and self.schema_version < 1:
            raise ValueError("schema_version starts at 1")


class StoredEvent(NamedTuple):
    """One row of the ``events`` table, exactly as chained and signed.

    A named tuple rather than a frozen dataclass: it is built once per row on every append,
    read and verification, and it is directly the parameter row of the INSERT.
    """

    seq: int
    stream: str
    stream_version: int
    type: str
    schema_version: int
    recorded_at: str
    payload: bytes
    prev_hash: bytes
    entry_hash: bytes
    signature: bytes

    def as_row(self) -> tuple[int, str, int, str, int, str, bytes, bytes, bytes, bytes]:
        return self


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A decoded event for readers and projections (payload upcast to the current version)."""

    seq: int
    stream: str
    stream_version: int
    type: str
    schema_version: int
    recorded_at: str
    payload: Payload


class EntryFields(Protocol):
    """What decoding needs of an entry: a stored event, or a chained one not yet signed."""

    @property
    def seq(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def stream_version(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def recorded_at(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


@dataclass(slots=True)
class _TypeInfo:
    version: int = 1
    upcasters: dict[int, Upcaster] = field(default_factory=dict)


class EventRegistry:
    """Event types, their current schema versions, and upcasters from older versions."""

    def __init__(self) -> None:
        self._types: dict[str, _TypeInfo] = {}
        self._frozen = False
        self.register(LOG_OPENED)
        self.register(KEY_ROTATED)

    def freeze(self) -> None:
        """Refuse every later change (the store freezes its registry when it opens)."""
        self._frozen = True

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _check_open(self) -> None:
        if self._frozen:
            raise SchemaError("the event registry is frozen: a store is open on it")

    def register(self, type: str, *, version: int = 1) -> None:
        """Declare an event type at its current schema ``version``."""
        self._check_open()
        info = self._types.setdefault(type, _TypeInfo())
        info.version = max(info.version, version)

    def upcaster(self, type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register a function turning a ``from_version`` payload into the next."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._check_open()
            info = self._types.setdefault(type, _TypeInfo())
            if from_version in info.upcasters:
                raise ValueError(f"{type} already has an upcaster from version {from_version}")
            info.upcasters[from_version] = fn
            info.version = max(info.version, from_version + 1)
            return fn

        return decorate

    def current_version(self, type: str) -> int:
        info = self._types.get(type)
        return info.version if info else 1

    def known(self, type: str) -> bool:
        return type in self._types

    def upcast(self, type: str, version: int, payload: Payload) -> tuple[int, Payload]:
        """Bring ``payload`` from ``version`` to the current version of ``type``.

        A missing upcaster, or one that fails or returns something other than an object, is a
        SchemaError (the cause attached).
        """
        info = self._types.get(type)
        if info is None:
            return version, payload
        while version < info.version:
            step = info.upcasters.get(version)
            if step is None:
                raise SchemaError(f"{type} has no upcaster from schema version {version}")
            try:
                payload = step(payload)
            except Exception as exc:
                raise SchemaError(
                    f"upcasting {type} from schema version {version} failed: {exc!r}"
                ) from exc
            if not isinstance(payload, dict):
                raise SchemaError(
                    f"upcasting {type} from schema version {version} gave "
                    f"{builtins.type(payload).__name__}, not an object"
                )
            version += 1
        return version, payload

    def check_new(self, event: NewEvent) -> int:
        """The schema version ``event`` is written at; SchemaError if the log must refuse it.

        Unknown types are refused; no version means the type's current one; a newer version
        than the registry knows is refused; an older one must upcast to the current version.
        """
        info = self._types.get(event.type)
        if info is None:
            raise SchemaError(f"unknown event type {event.type!r}: register it first")
        version = event.schema_version
        if version is None:
            return info.version
        if version > info.version:
            raise SchemaError(
                f"{event.type} schema version {version} is newer than this code's "
                f"{info.version}"
            )
        if version < info.version:
            self.upcast(event.type, version, dict(event.payload))
        return version

    def current_versions(self) -> dict[str, int]:
        """Each known type's current schema version."""
        return {name: info.version for name, info in self._types.items()}

    def decode(self, stored: EntryFields) -> RecordedEvent:
        """Decode a (verified) stored event and upcast its payload."""
        version, payload = self.upcast(
            stored.type, stored.schema_version, decode_payload(stored.payload)
        )
        return RecordedEvent(
            seq=stored.seq,
            stream=stored.stream,
            stream_version=stored.stream_version,
            type=stored.type,
            schema_version=version,
            recorded_at=stored.recorded_at,
            payload=payload,
        )
