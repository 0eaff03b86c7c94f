"""The store's write thread: jobs in order, results and errors to the caller, clean shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from openred.store.sqlite import _AndSettle, _settle_all, _WriteThread


async def test_jobs_run_in_order_in_one_thread_and_settle_their_futures() -> None:
    worker = _WriteThread("test-store")
    try:
        seen: list[tuple[int, threading.Thread]] = []
        futures = [worker.run(lambda i=i: seen.append((i, threading.current_thread())) or i)
                   for i in range(50)]
        assert await asyncio.gather(*futures) == list(range(50))
        assert [i for i, _ in seen] == list(range(50))
        assert len({t for _, t in seen}) == 1 and seen[0][1] is not threading.current_thread()

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await worker.run(fail)

        def stop() -> None:
            raise StopIteration

        with pytest.raises(RuntimeError, match="StopIteration"):
            await worker.run(stop)
        assert await worker.run(lambda: "still serving") == "still serving"
    finally:
        worker.shutdown()


async def test_a_job_cancelled_before_it_started_is_skipped() -> None:
    worker = _WriteThread("test-store")
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = worker.run(gate.wait)
        skipped = worker.run(lambda: ran.append("skipped"))
        skipped.cancel()
        gate.set()
        await blocker
        assert await worker.run(lambda: ran.append("after") or len(ran)) == 1
        assert ran == ["after"]
    finally:
        worker.shutdown()


async def test_shutdown_runs_what_is_queued_then_refuses() -> None:
    worker = _WriteThread("test-store")
    ran: list[int] = []
    worker.submit(lambda: ran.append(1))
    worker.submit(lambda: 1 / 0)  # a fire-and-forget job's error is dropped
    worker.submit(lambda: ran.append(2))
    worker.shutdown()
    assert ran == [1, 2]
    with pytest.raises(RuntimeError, match="shutdown"):
        worker.submit(lambda: None)
    with pytest.raises(RuntimeError, match="shutdown"):
        worker.run(lambda: None)
    worker.shutdown()  # twice is harmless


async def test_a_job_settling_others_wakes_the_loop_once_for_all() -> None:
    """``_AndSettle``: the callers' futures and the job's own, in one loop turn, callers first."""
    loop = asyncio.get_running_loop()
    posted: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(callback: object, *args: object) -> object:
        posted.append(callback)
        return real(callback, *args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    worker = _WriteThread("test-store")
    try:
        order: list[str] = []
        callers = [loop.create_future() for _ in range(3)]
        for i, caller in enumerate(callers):
            caller.add_done_callback(lambda _f, i=i: order.append(f"caller {i}"))
        error = ValueError("its own")
        job = worker.run(lambda: _AndSettle("done", [(callers[0], [1]), (callers[1], error),
                                                     (callers[2], [3])]))
        job.add_done_callback(lambda _f: order.append("job"))
        assert await job == "done"
        await asyncio.sleep(0)
        assert posted == [_settle_all]
        assert callers[0].result() == [1] and callers[2].result() == [3]
        assert callers[1].exception() is error
        assert order == ["caller 0", "caller 1", "caller 2", "job"]
    finally:
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]
        worker.shutdown()
