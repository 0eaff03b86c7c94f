"""Structured logs (issue 10, monitoring §2): one JSON object a line, or readable console lines.

:func:`configure_logging` sets up the process's logging once (a handler on the root logger). With
``OPENRED_LOG_FORMAT=json`` every record is one JSON object on one line with ``ts``, ``level``,
``logger``, ``event`` (the event type: a record's ``extra={"event": ...}``, else ``log``),
``message``, ``request_id`` and ``node_id`` (when known) and any other ``extra`` fields; the
default is a readable console line carrying the same fields.

The request id comes from the inbound ``X-Request-Id`` header (when it is a short token) or is
made fresh, is kept in a context variable for the request's logs, and is echoed in the answer
(:func:`install_request_ids`, done by the ASGI middleware of :mod:`openred.web.middleware`).
:class:`Reachability` writes one ERROR line when a dependency
(the directory, a peer) stops answering and one INFO line when it is back — not one per failure.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from quart import Quart

__all__ = [
    "ACCESS_LOGGER",
    "JsonFormatter",
    "Reachability",
    "access_logger",
    "bind_node_id",
    "configure_logging",
    "install_request_ids",
    "request_id",
]

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "openred_request_id", default=None)
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


_NODE_ID: list[str | None] = [None]


def bind_node_id(node_id: str | None) -> None:
    """Name this process's node in every later log record (a service calls it once open)."""
    _NODE_ID[0] = node_id


def request_id() -> str | None:
    """The id of the request being handled, if any."""
    return _REQUEST_ID.get()


class _ContextFilter(logging.Filter):
    """Adds ``request_id``, ``node_id`` and ``event`` to every record."""

    def __init__(self, node_id: str | None) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _REQUEST_ID.get()
        if not hasattr(record, "node_id"):
            record.node_id = self.node_id or _NODE_ID[0]
        if not hasattr(record, "event"):
            record.event = "log"
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items()
            if k not in _STANDARD and k not in ("request_id", "node_id", "event")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "node_id": getattr(record, "node_id", None),
        }
        obj.update(_extras(record))
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"), ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger [event] message key=value …`` for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [stamp, f"{record.levelname:<7}", record.name]
        event = getattr(record, "event", "log")
        if event != "log":
            parts.append(f"[{event}]")
        parts.append(record.getMessage())
        fields = dict(_extras(record))
        rid = getattr(record, "request_id", None)
        if rid:
            fields["request_id"] = rid
        parts.extend(f"{k}={v}" for k, v in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


ACCESS_LOGGER = "openred.access"


class _AccessFields(logging.Filter):
    """Turns Hypercorn's access record (``args`` = its atoms) into structured fields.

    ``event`` is ``access``; ``request_id`` is the id the answer's ``X-Request-Id`` carried
    (the one the request's own log records name); ``client``, ``method``, ``path`` (with the
    query), ``status``, ``bytes`` and ``duration_ms`` are the line's parts as fields. Only
    these are copied: the atoms also hold every request header and environment variable.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if not isinstance(atoms, Mapping):
            return True
        record.event = "access"
        rid = str(atoms["{x-request-id}o"])
        record.request_id = None if rid == "-" else rid
        status, size, micros = str(atoms["s"]), str(atoms["b"]), atoms["D"]
        record.client = atoms["h"]
        record.method = atoms["m"]
        record.path = atoms["Uq"]
        record.status = int(status) if status.isdigit() else None
        record.bytes = int(size) if size.isdigit() else None
        record.duration_ms = round(micros / 1000, 3) if isinstance(micros, int) else None
        return True


def access_logger(
    *, environ: Mapping[str, str] | None = None, stream: TextIO | None = None,
) -> logging.Logger | None:
    """The logger Hypercorn's access lines go to when ``OPENRED_LOG_FORMAT=json``, else None.

    With JSON logs, each access line is one JSON object on stdout like every other record
    (:class:`JsonFormatter`: ``event`` ``access``, the request's ``request_id``, and the
    line's parts as fields, with the classic line as ``message``); with console logs, None
    leaves Hypercorn's own plain line on stdout.
    """
    env = os.environ if environ is None else environ
    if (env.get("OPENRED_LOG_FORMAT") or "console").strip().lower() != "json":
        return None
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_AccessFields())
    handler.addFilter(_ContextFilter(None))
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""What ``OPENRED_LOG_LEVEL`` may say (any case)."""


def error_logger() -> logging.Logger | str:
    """Where Hypercorn's own lines ("Running on …", its errors) go: ``"-"`` (its plain line on
    stderr) unless :func:`configure_logging` set this process's handler, then the
    ``hypercorn.error`` logger with no handler of its own, so each line is printed once, in the
    process's format (with ``"-"`` Hypercorn added its plain handler and the root printed the
    line again: two lines, one of them not JSON under ``OPENRED_LOG_FORMAT=json``)."""
    if not any(h.get_name() == "openred" for h in logging.getLogger().handlers):
        return "-"
    logger = logging.getLogger("hypercorn.error")
    logger.handlers = []
    logger.propagate = True
    return logger


def configure_logging(
    *, fmt: str | None = None, level: str | int | None = None, node_id: str | None = None,
    stream: TextIO | None = None, environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send the process's log records to ``stream`` (stderr) as JSON or console lines.

    ``fmt`` defaults to ``OPENRED_LOG_FORMAT`` (``json`` or ``console``, the default) and
    ``level`` to ``OPENRED_LOG_LEVEL`` (``INFO``). Calling it again replaces the handler.
    """
    env = os.environ if environ is None else environ
    chosen = (fmt or env.get("OPENRED_LOG_FORMAT") or "console").strip().lower()
    if chosen not in ("json", "console"):
        from openred.errors import ConfigurationError

        raise ConfigurationError("OPENRED_LOG_FORMAT is json or console")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else ConsoleFormatter())
    handler.addFilter(_ContextFilter(node_id))
    handler.set_name("openred")
    # On the root logger: the libraries' lines (Hypercorn, Alembic) get the same format.
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "openred"]:
        root.removeHandler(old)
    root.addHandler(handler)
    chosen_level = level or (env.get("OPENRED_LOG_LEVEL") or "INFO").strip().upper()
    if isinstance(chosen_level, str) and chosen_level not in LEVELS:
        from openred.errors import ConfigurationError

        raise ConfigurationError(f"OPENRED_LOG_LEVEL={chosen_level!r} is not a level (one of "
                                 f"{', '.join(LEVELS)})")
    root.setLevel(chosen_level)
    return handler


def install_request_ids(app: Quart) -> None:
    """Give each request of a Quart ``app`` an id: its logs carry it, its answer echoes it.

    Done by the app's request middleware (:mod:`openred.web.middleware`), not by request hooks.
    """
    from openred.web.middleware import request_middleware

    request_middleware(app).request_ids = True


class Reachability:
    """Log a dependency going down (ERROR, once) and coming back (INFO, once).

    At most ``max_targets`` targets are remembered (the directory's targets are nodes, named
    by URLs they chose: without a bound every new one was kept forever, with its gauge
    series); beyond that the one heard of least recently is forgotten, and ``on_forget``
    tells the metrics to drop its series.
    """

    MAX_TARGETS = 1024

    def __init__(self, logger: logging.Logger | None = None,
                 on_change: Any | None = None, *, on_forget: Any | None = None,
                 max_targets: int = MAX_TARGETS) -> None:
        self.logger = logger or logging.getLogger("openred.reachability")
        self._down: dict[str, str] = {}
        self._seen: dict[str, None] = {}  # in order of last report, oldest first
        self._on_change = on_change
        self._on_forget = on_forget
        self.max_targets = max_targets

    def __len__(self) -> int:
        return len(self._seen)

    def is_down(self, target: str) -> bool:
        return target in self._down

    def _touch(self, target: str) -> bool:
        """Mark ``target`` most recently reported; whether it was new."""
        seen = self._seen
        if target in seen:
            if next(reversed(seen)) != target:
                del seen[target]
                seen[target] = None
            return False
        while len(seen) >= self.max_targets:
            oldest = next(iter(seen))
            del seen[oldest]
            self._down.pop(oldest, None)
            if self._on_forget is not None:
                self._on_forget(oldest)
        seen[target] = None
        return True

    def failed(self, target: str, detail: str) -> None:
        """``target`` did not answer; an ERROR line if it was answering until now."""
        self._touch(target)
        if target not in self._down:
            self._down[target] = detail
            self.logger.error("%s is unreachable: %s", target, detail,
                              extra={"event": "DependencyUnreachable", "target": target})
            if self._on_change is not None:
                self._on_change(target, False)

    def answered(self, target: str) -> None:
        """``target`` answered; an INFO line if it was down."""
        new = self._touch(target)
        if new and self._on_change is not None and target not in self._down:
            self._on_change(target, True)  # first answer: up, nothing to log
        detail = self._down.pop(target, None)
        if detail is not None:
            self.logger.info("%s is reachable again", target,
                             extra={"event": "DependencyReachable", "target": target})
            if self._on_change is not None:
                self._on_change(target, True)
