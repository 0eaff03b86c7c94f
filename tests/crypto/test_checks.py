"""Ed25519 checks in a worker process (openred.crypto.checks): true answers, whatever it does."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import nacl.signing
import pytest

from openred.crypto import check_worker
from openred.crypto.checks import (
    MAX_BATCH,
    MAX_MESSAGE,
    InlineChecker,
    ProcessChecker,
    check_inline,
)
from openred.crypto.identity import SignKey


def _keys(n: int) -> list[nacl.signing.SigningKey]:
    return [nacl.signing.SigningKey.generate() for _ in range(n)]


def _cases() -> list[tuple[SignKey, bytes, bytes, bool]]:
    """(key, signature, message, valid): good ones and every way of being wrong."""
    a, b = _keys(2)
    key_a, key_b = SignKey(bytes(a.verify_key)), SignKey(bytes(b.verify_key))
    msg = b"the request's signature base"
    sig = a.sign(msg).signature
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    cases = [
        (key_a, sig, msg, True),
        (key_b, sig, msg, False),                      # wrong key
        (key_a, flipped, msg, False),                  # tampered signature
        (key_a, sig, msg + b"!", False),               # tampered message
        (key_a, a.sign(b"").signature, b"", True),     # empty message
        (key_a, bytes(64), msg, False),                # all zeros
        (key_a, sig, b"", False),
    ]
    long = os.urandom(MAX_MESSAGE)
    cases.append((key_b, b.sign(long).signature, long, True))  # the longest sent out
    return cases


@pytest.fixture
async def checker() -> ProcessChecker:
    checker = ProcessChecker()
    await checker.start()
    yield checker  # type: ignore[misc]
    await checker.close()


async def test_the_worker_answers_what_inline_answers_in_batches(checker: ProcessChecker) -> None:
    assert checker.pid is not None
    cases = _cases() * 40
    results = await asyncio.gather(*(checker.check(k, s, m) for k, s, m, _ in cases))
    assert results == [valid for *_, valid in cases]
    assert results == [check_inline(k, s, m) for k, s, m, _ in cases]
    # Checks asked together went out together: far fewer batches than checks.
    assert 1 <= checker.batches < len(cases) / 4


async def test_what_never_leaves_the_process(checker: ProcessChecker) -> None:
    a = nacl.signing.SigningKey.generate()
    key = SignKey(bytes(a.verify_key))
    huge = os.urandom(MAX_MESSAGE + 1)
    sig = a.sign(huge).signature
    assert await checker.check(key, sig, huge) is True
    assert await checker.check(key, sig[:63], huge) is False    # not 64 bytes: no framing
    assert await checker.check(key, sig + b"\x00", huge) is False
    assert await checker.check(key, bytes(sig[:-1]) + bytes([sig[-1] ^ 0x80]), huge) is False
    assert checker.batches == 0


async def test_a_killed_worker_leaves_true_answers_then_is_replaced(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    checker = ProcessChecker(restart_after=30.0, clock=lambda: now[0])
    await checker.start()
    try:
        cases = _cases()
        assert await asyncio.gather(*(checker.check(k, s, m) for k, s, m, _ in cases)) == \
            [v for *_, v in cases]
        pid = checker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.WARNING, "openred.crypto.checks"):
            assert await asyncio.gather(*(checker.check(k, s, m) for k, s, m, _ in cases)) == \
                [v for *_, v in cases]
        assert "verified inline" in caplog.text
        assert checker.pid is None
        done = checker.batches
        # Inline until restart_after has passed, then a new worker.
        now[0] = 29.0
        assert await checker.check(*cases[0][:3]) is True
        assert checker.pid is None and checker.batches == done
        now[0] = 31.0
        assert await asyncio.gather(*(checker.check(k, s, m) for k, s, m, _ in cases)) == \
            [v for *_, v in cases]
        assert checker.pid not in (None, pid)
        assert checker.batches > done
    finally:
        await checker.close()


def _fake_worker(tmp_path: Path, code: str) -> str:
    """An executable that ProcessChecker runs as its "python" (it ignores the arguments)."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{code}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("code", [
    # answers a byte that is neither 0 nor 1
    "import struct\nn = struct.unpack('>I', sys.stdin.buffer.read(4))[0]\n"
    "sys.stdout.buffer.write(b'\\x02' * n); sys.stdout.buffer.flush(); time.sleep(60)",
    # answers too few bytes, then exits
    "sys.stdin.buffer.read(4); sys.stdout.buffer.write(b'\\x01'); sys.stdout.buffer.flush()",
    # exits at once
    "sys.exit(0)",
    # never answers
    "time.sleep(60)",
], ids=["odd-byte", "short-answer", "gone", "hung"])
async def test_a_worker_that_answers_wrong_is_dropped_for_inline_checks(
        tmp_path: Path, code: str) -> None:
    checker = ProcessChecker(python=_fake_worker(tmp_path, code), answer_timeout=1.0)
    await checker.start()
    try:
        cases = _cases()
        assert await asyncio.gather(*(checker.check(k, s, m) for k, s, m, _ in cases)) == \
            [v for *_, v in cases]
        assert checker.pid is None and checker.batches == 0
    finally:
        await checker.close()


async def test_a_worker_that_cannot_start_means_inline_checks(tmp_path: Path) -> None:
    checker = ProcessChecker(python=str(tmp_path / "no-such-python"))
    await checker.start()
    try:
        cases = _cases()
        assert [await checker.check(k, s, m) for k, s, m, _ in cases] == [v for *_, v in cases]
    finally:
        await checker.close()


async def test_close_stops_the_worker_and_later_checks_are_inline() -> None:
    checker = ProcessChecker()
    await checker.start()
    pid = checker.pid
    assert pid is not None
    await checker.close()
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by close(): the pid is gone
            os.kill(pid, 0)
            await asyncio.sleep(0.05)
    key, sig, msg, valid = _cases()[0]
    assert await checker.check(key, sig, msg) is valid
    assert checker.batches == 0


def _workers() -> set[int]:
    """Pids of this process's children running the check worker."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == os.getpid() and b"openred.crypto.check_worker" in cmdline:
            found.add(int(entry))
    return found


async def test_close_while_the_worker_starts_leaves_no_worker() -> None:
    """A close() that comes while start() is still spawning the worker: the worker, once
    spawned, is stopped, not kept (with no one left to close it) until this process exits."""
    before = _workers()
    checker = ProcessChecker()
    starting = asyncio.create_task(checker.start())
    await asyncio.sleep(0)
    await checker.close()
    await starting
    assert checker.pid is None
    for _ in range(50):
        if not _workers() - before:
            break
        await asyncio.sleep(0.05)
    assert not _workers() - before, "a worker outlived close()"
    key, sig, msg, valid = _cases()[0]
    assert await checker.check(key, sig, msg) is valid and checker.batches == 0


async def test_checks_in_flight_when_closing_get_true_answers() -> None:
    checker = ProcessChecker()
    await checker.start()
    cases = _cases() * 50
    pending = [asyncio.ensure_future(checker.check(k, s, m)) for k, s, m, _ in cases]
    await asyncio.sleep(0)
    await checker.close()
    assert await asyncio.gather(*pending) == [v for *_, v in cases]


async def test_inline_checker() -> None:
    cases = _cases()
    assert [await InlineChecker().check(k, s, m) for k, s, m, _ in cases] == \
        [v for *_, v in cases]


def _frame(items: list[tuple[bytes, bytes, bytes]], count: int | None = None) -> bytes:
    out = [struct.pack(">I", len(items) if count is None else count)]
    for key, sig, msg in items:
        out += [key, sig, struct.pack(">I", len(msg)), msg]
    return b"".join(out)


def test_the_worker_itself_answers_batches_and_refuses_malformed_ones() -> None:
    cases = _cases()
    items = [(k.raw, s, m) for k, s, m, _ in cases]
    out = io.BytesIO()
    assert check_worker.serve(io.BytesIO(_frame(items) * 2), out) == 0
    assert out.getvalue() == bytes(v for *_, v in cases) * 2
    key, sig, msg = items[0]
    for bad in (
        _frame([], count=0),                                        # no check
        _frame([], count=MAX_BATCH + 1),                            # too many
        struct.pack(">I", 1) + key + sig + struct.pack(">I", MAX_MESSAGE + 1),  # too long
        _frame([(key, sig, msg)])[:-1],                             # cut short
        b"\x00\x00",                                                # half a count
    ):
        out = io.BytesIO()
        assert check_worker.serve(io.BytesIO(bad), out) == 2
        assert out.getvalue() == b""


_SCRIPT_HEAD = (
    "import nacl.signing\n"
    "from openred.crypto.checks import ProcessChecker\n"
    "from openred.crypto.identity import SignKey\n"
    "async def main():\n"
    "    sk = nacl.signing.SigningKey.generate()\n"
    "    key, sig = SignKey(bytes(sk.verify_key)), sk.sign(b'm').signature\n"
)
"""The start of the scripts below (each runs in a process of its own): a key, a signature."""


def test_checks_are_answered_when_no_descriptor_is_left_for_a_new_worker(tmp_path: Path) -> None:
    """A worker replaced while the process has no file descriptor left (a flood of
    connections): the checks waiting for it are answered inline, none waits forever. Run in a
    process of its own, whose descriptor limit is lowered."""
    script = tmp_path / "nofile.py"
    script.write_text(
        "import asyncio, os, resource, signal, sys\n" + _SCRIPT_HEAD +
        "    checker = ProcessChecker(restart_after=0)\n"
        "    await checker.start()\n"
        "    os.kill(checker.pid, signal.SIGKILL)\n"
        "    await asyncio.sleep(0.2)\n"
        "    assert await checker.check(key, sig, b'm') is True  # the failure: inline\n"
        "    used = len(os.listdir('/proc/self/fd'))\n"
        "    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))\n"
        "    spare = []\n"
        "    try:\n"
        "        while True:\n"
        "            spare.append(os.open('/dev/null', os.O_RDONLY))\n"
        "    except OSError:\n"
        "        pass\n"
        "    answers = await asyncio.wait_for(asyncio.gather(\n"
        "        checker.check(key, sig, b'm'), checker.check(key, sig, b'x')), 5)\n"
        "    for fd in spare:\n"
        "        os.close(fd)\n"
        "    await checker.close()\n"
        "    print(answers)\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[True, False]"


def test_a_ctrl_c_stops_the_service_not_its_worker(tmp_path: Path) -> None:
    """Ctrl-C at a terminal signals the whole foreground process group. The service stops
    gracefully on SIGINT (the requests in flight are still answered); its worker must not die
    of the same signal under them (each in-flight check would meet a dead worker, a warning,
    and be done inline): it stops when the service closes it."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(
        "import asyncio, signal, sys\n" + _SCRIPT_HEAD +
        "    stopping = asyncio.Event()\n"
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stopping.set)\n"
        "    checker = ProcessChecker()\n"
        "    await checker.start()\n"
        "    assert await checker.check(key, sig, b'm') is True\n"
        "    print('ready', flush=True)\n"
        "    await stopping.wait()\n"
        "    await asyncio.sleep(0.3)  # the signal has reached every process of the group\n"
        "    ok = await checker.check(key, sig, b'm')  # a request still in flight\n"
        "    print(ok, checker.batches, flush=True)\n"
        "    await checker.close()\n"
        "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == "True 2", (out, err[-2000:])  # answered by the worker, not inline
    assert "worker failed" not in err


async def test_a_worker_gone_is_reaped_once(caplog: pytest.LogCaptureFixture) -> None:
    """A worker that died is left to asyncio's child watcher: killing it as it is found gone
    polled it first (``Popen.send_signal``), and the watcher, finding no child, logged
    "Unknown child process pid …"."""
    checker = ProcessChecker(restart_after=0)
    await checker.start()
    key, sig, msg, valid = _cases()[0]
    try:
        with caplog.at_level(logging.WARNING, "asyncio"):
            for _ in range(8):
                pid = checker.pid
                assert await checker.check(key, sig, msg) is valid  # a worker runs: spawned
                pid = checker.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                assert await checker.check(key, sig, msg) is valid  # found gone: inline
                await asyncio.sleep(0.05)
    finally:
        await checker.close()
    assert "Unknown child process" not in caplog.text


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_hung_worker_dropped_just_before_the_loop_ends_does_not_outlive_it(
        tmp_path: Path) -> None:
    """A worker that stopped answering (hung, or compromised: it reads nothing, so it never
    sees the EOF of its channel) is dropped and killed. The kill came after a grace of
    EXIT_GRACE in a task of its own, and a loop ending inside the grace (the service stops,
    asyncio.run cancels what is left) cancelled it before any signal: the worker, in a session
    of its own, ran on after its service had exited. It must be killed all the same."""
    worker = _fake_worker(tmp_path, "time.sleep(60)")
    script = tmp_path / "ends.py"
    script.write_text(
        "import asyncio, sys\n" + _SCRIPT_HEAD +
        f"    checker = ProcessChecker(python={worker!r}, answer_timeout=0.3)\n"
        "    await checker.start()\n"
        "    print(checker.pid, flush=True)\n"
        "    assert await checker.check(key, sig, b'm') is True  # timed out: inline\n"
        "    assert checker.pid is None  # dropped; the loop ends now, without close()\n"
        "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-2000:]
        for _ in range(40):
            if not _running(pid):
                break
            time.sleep(0.05)
        assert not _running(pid), "the hung worker outlived its service"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid and _running(pid):
            os.kill(pid, signal.SIGKILL)


async def test_a_failed_worker_is_killed_even_if_its_reaping_never_ran() -> None:
    """The task that gives a failed worker its grace and then kills it, cancelled before its
    first step (a loop ending in the very step the worker failed), ran none of its code."""
    from openred.crypto.checks import _stop_later

    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; "
                                                "time.sleep(60)")
    try:
        reaping = _stop_later(proc)
        reaping.cancel()  # before it ran
        with pytest.raises(asyncio.CancelledError):
            await reaping
        assert await asyncio.wait_for(proc.wait(), 5) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
