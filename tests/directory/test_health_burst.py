"""The directory's public health route against a burst of requests, on a real directory.

Each answer checks that the database is writable (a worker thread) and that the jail answers
(a call on the jail's socket, which the directory's grant and checkpoint signing also wait
for); a burst of requests asked at the same moment must not pay for them once each.
"""

from __future__ import annotations

import asyncio

from tests.directory.conftest import Directory
from tests.servers import gets_at_once

BURST = 40


async def test_health_asked_at_once_calls_the_jail_once(directory: Directory) -> None:
    jail = directory.service.jail
    calls: list[str] = []
    call = jail.call

    async def counted(op: str, args: dict[str, object], **kwargs: object) -> object:
        calls.append(op)
        await asyncio.sleep(0.2)  # a jail busy signing: the burst arrives during the check
        return await call(op, args, **kwargs)

    jail.call = counted  # type: ignore[method-assign]
    try:
        answers = await gets_at_once(f"{directory.url}/api/v3/health", BURST)
    finally:
        jail.call = call  # type: ignore[method-assign]
    assert [status for status, _ in answers] == [200] * BURST
    assert calls.count("public_keys") <= 2, calls.count("public_keys")
