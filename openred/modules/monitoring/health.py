"""Dependency checks behind ``GET /api/v3/health`` (issue 10, monitoring §3); no Quart here.

Each check is an async function that returns None when its dependency works and raises (any
exception) when not; :func:`run_checks` runs them concurrently, each within a time limit, and
returns one :class:`Check` per dependency. The routes turn a failing check into a 503 problem
that names the failing part (``failing: ["jail"]``), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openred.errors import RequestRefused
from openred.store.sqlite import database_uri

__all__ = ["Check", "SharedChecks", "database_writable", "jail_answering", "refusal",
           "run_checks", "url_answers"]

logger = logging.getLogger("openred.health")

Probe = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = "ok"


def database_writable(path: Path) -> Probe:
    """The SQLite file and its directory are writable and the file opens as a database.

    It does not take the write lock: under load the log's writer holds it, and a health check
    must not report that as an outage.
    """

    def probe() -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        for target in (path, path.parent):
            if not os.access(target, os.W_OK):
                raise PermissionError(f"{target} is not writable")
        conn = sqlite3.connect(database_uri(path, "rw"), uri=True, timeout=1.0)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()

    async def check() -> None:
        await asyncio.to_thread(probe)

    return check


def jail_answering(jail: Any) -> Probe:
    """The crypto jail answers a ``public_keys`` request."""

    async def check() -> None:
        await jail.call("public_keys", {}, retry=False)

    return check


def url_answers(http: Any, url: str) -> Probe:
    """``GET url`` answers with a status below 500 (one attempt, no retries)."""

    async def check() -> None:
        reply = await http.request("GET", url, attempts=1)
        if reply.status >= 500:
            raise ConnectionError(f"answered {reply.status}")

    return check


async def _run(name: str, probe: Probe, timeout: float) -> Check:
    try:
        async with asyncio.timeout(timeout):
            await probe()
    except TimeoutError:
        return Check(name, False, f"no answer within {timeout:g} s")
    except Exception as exc:  # any failure of a dependency is reported, not raised
        return Check(name, False, f"{type(exc).__name__}: {exc}"[:300])
    return Check(name, True)


async def run_checks(probes: Mapping[str, Probe], *, timeout: float = 2.0) -> list[Check]:
    """Run every probe concurrently, each within ``timeout`` seconds; one Check each."""
    return list(await asyncio.gather(*(_run(n, p, timeout) for n, p in probes.items())))


class SharedChecks:
    """One run of the checks at a time, shared by every request that asks meanwhile.

    ``GET /api/v3/health`` is public: before, each request ran every check itself, so a
    scraper asking 40 times at once made the node ask its directory 40 times (holding the
    outbound pool's connections to it, which the node's own registration and grant requests
    then waited for), call its jail 40 times and take 40 worker threads. Now a request that
    arrives while a run is under way waits for that run's result (at most ``timeout`` old);
    one that arrives after it starts a new one, so a failure is still seen by the next request.
    The run is shielded: a client that hangs up does not cancel it for the others.
    """

    def __init__(self) -> None:
        self._running: asyncio.Future[list[Check]] | None = None
        self._failing: tuple[str, ...] = ()

    async def run(self, probes: Callable[[], Mapping[str, Probe]], *,
                  timeout: float = 2.0) -> list[Check]:
        running = self._running
        if running is None or running.done():
            running = self._running = asyncio.ensure_future(self._run(probes(), timeout))
        return await asyncio.shield(running)

    async def _run(self, probes: Mapping[str, Probe], timeout: float) -> list[Check]:
        checks = await run_checks(probes, timeout=timeout)
        self._log_change(checks)
        return checks

    def _log_change(self, checks: list[Check]) -> None:
        """Log when the failing parts change, not at every run: an outside probe asking every
        few seconds through a directory outage wrote a WARNING per request."""
        failing = [c for c in checks if not c.ok]
        names = tuple(c.name for c in failing)
        if names == self._failing:
            return
        self._failing = names
        if failing:
            logger.warning("health check failing: %s",
                           "; ".join(f"{c.name}: {c.detail}" for c in failing),
                           extra={"event": "HealthCheckFailing", "failing": list(names)})
        else:
            logger.info("health checks pass again", extra={"event": "HealthCheckPassing"})


def refusal(checks: list[Check]) -> RequestRefused | None:
    """The 503 problem naming the failing parts, or None when all are ok.

    The problem answers a public route, so it names the parts only: their error texts (paths
    of the data directory, the directory's address, exception messages) are logged for the
    operator (WARNING, by :class:`SharedChecks` when the failing parts change), and shown by
    the admin API's status, never sent to whoever asked.
    """
    failing = [c for c in checks if not c.ok]
    if not failing:
        return None
    names = [c.name for c in failing]
    return RequestRefused(503, "unhealthy", f"failing: {', '.join(names)}", retry_after=5,
                          extra={"failing": names,
                                 "checks": {c.name: "ok" if c.ok else "failing"
                                            for c in checks}})
