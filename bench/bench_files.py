"""File transfer between two nodes over loopback: throughput, memory, resume.

Node B (the sender) is its own process, served like ``openred node serve`` with its jail and
admin API; node A (the receiver) runs in this process with its own jail, and fetches with
:meth:`~openred.modules.file_sharing.service.FileSharing.fetch` — every chunk a request in
the encrypted session envelope, checked against the hash tree, written to the partial file,
the whole digest checked at the end and the file linked into place.

* ``file_transfer_256mib``: MiB/s fetching a 256 MiB file (three fetches, their total size
  over their total time). Baseline: the same file streamed over loopback from a plain
  Hypercorn endpoint (Quart, no crypto, its own process) and read by the same client library
  (aiohttp) into a file in this process, run before, between and after our fetches (the mean
  of those rates). Ratio ours / baseline.
* ``file_transfer_rss``: the largest peak resident memory growth during one of those fetches,
  of the sender process and of the receiver (this process; the kernel's peak is reset just
  before each with ``/proc/PID/clear_refs``), MiB; the "baseline" column is the sender's.
* ``file_resume_overhead``: seconds to finish a fetch of a 128 MiB file stopped at half,
  versus a fresh fetch of a file holding just that remaining half (lower is better); the
  fresh fetch runs right before the interrupted one and right after the resumed one, and
  their mean is the baseline (the machine's load drifts, as for the throughput); three such
  rounds are summed, since one round lasts well under a second.

``python -m bench.bench_files`` (or ``make bench``); ``--quick`` uses 64 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import report

MIB = 1024 * 1024
BLOCK = 224 * 1024
ROUNDS = 3


def plain_server(path: str, port: int) -> None:
    """The baseline: stream ``path`` from ``GET /file`` (the server process's entry)."""
    from hypercorn.asyncio import serve
    from quart import Quart, Response

    from openred.web.serve import hypercorn_config, tune_gc

    app = Quart("plain")

    @app.get("/file")
    async def file() -> Response:
        async def body() -> Any:
            with open(path, "rb") as f:
                while block := f.read(BLOCK):
                    yield block

        return Response(body(), content_type="application/octet-stream")

    config = hypercorn_config("127.0.0.1", port)
    config.errorlog = None
    tune_gc()  # as the served node does once started
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


def _status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_peak(pid: int) -> int:
    """Reset the kernel's peak RSS of ``pid``; its RSS now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status(pid)["VmRSS"]


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n


async def _baseline(source: Path, out: Path) -> float:
    import aiohttp

    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_files", "--serve-plain", str(source), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/file") as resp:
                        await resp.content.read(1)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            start = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{port}/file") as resp:
                with out.open("wb") as f:
                    async for block in resp.content.iter_chunked(BLOCK):
                        f.write(block)
            elapsed = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(10)
    assert out.stat().st_size == source.stat().st_size
    out.unlink()
    return source.stat().st_size / MIB / elapsed


async def run_all(quick: bool) -> None:
    from openred.crypto.client import JailClient
    from tests.crypto_jail.test_server import short_dir
    from tests.modules.file_sharing.remote import remote_pair
    from tests.modules.file_sharing.world import MODULES, files
    from tests.node.test_app import directory_app, serve_node
    from tests.node.world import Directory, JailPair
    from tests.servers import serve_in_loop

    size = (64 if quick else 256) * MIB
    jails = JailPair()
    tmp, b_dir = short_dir(), short_dir()
    try:
        source = b_dir / "big.bin"
        _write_random(source, size)
        directory = await Directory.open(tmp / "directory")
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(directory.close)
            dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
            jail_a = await stack.enter_async_context(JailClient(jails.procs[0].socket_path))
            a = await stack.enter_async_context(serve_node(
                "a", jail_a, tmp / "a", directory.key, dir_url, modules=MODULES))
            b, _ = await stack.enter_async_context(remote_pair(a, directory, dir_url, b_dir))
            assert b.server is not None
            receiver = files(a)

            async def offer(path: Path) -> str:
                made = await b.call("POST", "file_sharing/share",
                                    {"peer": str(a.id), "path": str(path), "expires": 3600})
                offer_id: str = made["offer_id"]
                return offer_id

            # The machine is shared and its load drifts: each of ROUNDS fetches runs between
            # two baseline runs, and the rates are compared over all of them (one 256 MiB
            # fetch lasts about a second: one round alone swung 0.47-0.66).
            baselines = [await _baseline(source, tmp / "baseline.bin")]
            elapsed = sender_growth = receiver_growth = 0.0
            for _ in range(ROUNDS):
                offer_id = await offer(source)
                sender_before = _reset_peak(b.server.pid)
                receiver_before = _reset_peak(os.getpid())
                start = time.perf_counter()
                placed = await receiver.fetch(offer_id)
                elapsed += time.perf_counter() - start
                sender_growth = max(
                    sender_growth, (_status(b.server.pid)["VmHWM"] - sender_before) / MIB)
                receiver_growth = max(
                    receiver_growth, (_status(os.getpid())["VmHWM"] - receiver_before) / MIB)
                assert placed.stat().st_size == size
                placed.unlink()
                baselines.append(await _baseline(source, tmp / "baseline.bin"))
            # The arithmetic mean of the baseline's rates: never below their harmonic mean,
            # which is how our rate is taken (total size over total time).
            baseline = sum(baselines) / len(baselines)
            name = f"file_transfer_{size // MIB}mib"
            report(name, ROUNDS * size / MIB / elapsed, "MiB/s", "plain_hypercorn_stream", baseline)
            report("file_transfer_rss", receiver_growth, "MiB (receiver)",
                   "sender", sender_growth, "MiB (sender)")

            # Resume: stop a fetch at half, finish it; against a fresh fetch of that half.
            whole = size // 2
            resumable = b_dir / "resume.bin"
            half = b_dir / "half.bin"
            with source.open("rb") as f, resumable.open("wb") as r, half.open("wb") as h:
                r.write(f.read(whole // 2))
                rest = f.read(whole - whole // 2)
                r.write(rest)
                h.write(rest)

            async def fresh_half() -> float:
                offer_id = await offer(half)
                start = time.perf_counter()
                placed = await receiver.fetch(offer_id)
                elapsed = time.perf_counter() - start
                placed.unlink()
                return elapsed

            async def resume_half() -> float:
                offer_id = await offer(resumable)
                stop = asyncio.Event()
                task = asyncio.create_task(receiver.fetch(
                    offer_id,
                    progress=lambda p: stop.set() if p.verified >= whole // 2 else None))
                await stop.wait()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                start = time.perf_counter()
                placed = await receiver.fetch(offer_id)
                elapsed = time.perf_counter() - start
                placed.unlink()  # outside the time, as for the throughput (it frees 128 MiB)
                return elapsed

            # As for the throughput, the load drifts: the fresh half is fetched right before
            # each interrupted fetch and right after its resumed one. One such round takes
            # well under a second and swung 1.02-1.86 between equal runs, so ROUNDS
            # rounds are summed (the same measurement, less noise).
            resumed = fresh = 0.0
            for _ in range(ROUNDS):
                before = await fresh_half()
                resumed += await resume_half()
                fresh += (before + await fresh_half()) / 2
            report("file_resume_overhead", resumed, "s", "fresh_remaining_half", fresh)
    finally:
        jails.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(b_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve-plain"]:
        plain_server(args[1], int(args[2]))
    else:
        asyncio.run(run_all(quick="--quick" in args))


if __name__ == "__main__":
    main()
