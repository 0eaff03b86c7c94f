"""``openred share | files | fetch | unshare | decline`` against two real served nodes.

Each node serves its P2P app and its admin API (with the file_sharing admin routes) on
loopback; the commands run as real ``openred`` processes reading the admin URL and key from the
node's data directory. A fetch stopped with Ctrl-C (SIGINT) resumes when run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openred.modules import install_admin_hooks
from openred.modules.file_sharing.domain import CHUNK_SIZE
from openred.node.admin import create_admin_app
from openred.node.admin_auth import ensure_admin_key
from tests.modules.file_sharing.world import Pair, files, served_pair
from tests.node.test_app import Served
from tests.node.world import Directory, JailPair
from tests.servers import free_port, serve_in_loop

OPENRED = str(Path(sys.executable).with_name("openred"))


@contextlib.asynccontextmanager
async def admin_for(node: Served) -> AsyncIterator[None]:
    key = ensure_admin_key(node.data)
    admin = create_admin_app(node.app, key)
    install_admin_hooks(admin, node.services.modules)
    port = free_port()
    async with serve_in_loop(admin, port):
        (node.data / "admin-url").write_text(f"http://127.0.0.1:{port}\n")
        yield


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    async with served_pair(jails, directory, tmp_path) as served, admin_for(served.a), \
            admin_for(served.b):
        yield served


async def openred(node: Served, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        OPENRED, *args, "--data-dir", str(node.data), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_share_list_fetch_and_unshare_from_the_cli(pair: Pair, tmp_path: Path) -> None:
    source = tmp_path / "holiday photos.tar"
    data = os.urandom(2 * CHUNK_SIZE + 99)
    source.write_bytes(data)
    code, out, err = await openred(pair.a, "share", pair.b.id[:8], str(source),
                                   "--expires", "2h", "--json")
    assert code == 0, err
    offer = json.loads(out)
    assert offer["name"] == "holiday photos.tar" and offer["size"] == len(data)
    assert offer["expires_at"] - time.time() > 7100
    code, out, _ = await openred(pair.b, "files", "--json")
    [received] = json.loads(out)
    assert (received["offer_id"], received["direction"]) == (offer["offer_id"], "received")
    assert received["transfer"]["state"] == "not-started"
    code, out, err = await openred(pair.b, "files")
    assert code == 0 and "received" in out and offer["offer_id"] in out
    outdir = tmp_path / "downloads"
    outdir.mkdir()
    code, out, err = await openred(pair.b, "fetch", offer["offer_id"], "--out", str(outdir))
    assert code == 0, err
    assert (outdir / "holiday photos.tar").read_bytes() == data
    assert "fetched" in out
    # Unshare: the peer's copy of the offer is revoked and it gets nothing more.
    code, _, err = await openred(pair.a, "unshare", offer["offer_id"])
    assert code == 0, err
    code, out, _ = await openred(pair.b, "files", "--json")
    assert json.loads(out)[0]["state"] == "revoked"


async def test_cli_errors_are_one_clear_line(pair: Pair, tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cases: list[tuple[Served, tuple[str, ...], str]] = [
        (pair.a, ("share", pair.b.id, str(tmp_path / "link")), "is a symbolic link"),
        (pair.a, ("share", pair.b.id, str(tmp_path / "real"), "--name", "../x"),
         "the name may not contain"),
        (pair.a, ("share", pair.b.id, str(tmp_path / "nope")), "does not exist"),
        (pair.a, ("share", "zzzz", str(tmp_path / "real")), "no known peer"),
        (pair.b, ("fetch", "A" * 22), "no offer received"),
        (pair.b, ("unshare", "A" * 22), "no offer of ours"),
        (pair.b, ("decline", "A" * 22), "no offer received"),
    ]
    for node, args, message in cases:
        code, _, err = await openred(node, *args)
        assert code == 1 and message in err and "Traceback" not in err, (args, err)
    code, _, err = await openred(pair.a, "share", pair.b.id, str(tmp_path / "real"),
                                 "--expires", "soon")
    assert code == 2 and "duration" in err


async def test_decline_from_the_cli(pair: Pair, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    code, out, err = await openred(pair.a, "share", pair.b.id, str(tmp_path / "f"), "--json")
    offer_id = json.loads(out)["offer_id"]
    code, _, err = await openred(pair.b, "decline", offer_id)
    assert code == 0, err
    assert (await files(pair.a).offer(offer_id)).state == "declined"  # type: ignore[union-attr]
    code, _, err = await openred(pair.b, "fetch", offer_id)
    assert code == 1 and "declined" in err


async def test_ctrl_c_stops_a_fetch_and_running_it_again_resumes(
    pair: Pair, tmp_path: Path
) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(12 * CHUNK_SIZE)
    source.write_bytes(data)
    sender = files(pair.a)
    slow_read = sender._read_chunk

    def slowly(*args: Any) -> bytes:
        time.sleep(0.15)
        return slow_read(*args)

    sender._read_chunk = slowly  # type: ignore[method-assign]
    offer = await sender.share(pair.b.id, source, expires_in=3600)
    proc = await asyncio.create_subprocess_exec(
        OPENRED, "fetch", offer.offer_id, "--data-dir", str(pair.b.data),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    receiver = files(pair.b)
    for _ in range(200):
        progress = await receiver.fetch_progress(offer.offer_id)
        if progress.verified >= 3 * CHUNK_SIZE or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    if proc.returncode is not None or progress.verified < 3 * CHUNK_SIZE:
        if proc.returncode is None:
            proc.kill()
        out, err = await proc.communicate()  # why the fetch ended (or stalled) before Ctrl-C
        raise AssertionError(f"the fetch should be running now, 3 chunks in: {progress}, exit "
                             f"code {proc.returncode}; its output:\n{out.decode()}{err.decode()}")
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err.decode()
    stopped = await receiver.fetch_progress(offer.offer_id)
    assert stopped.state == "failed" and stopped.reason == "interrupted"
    assert 3 * CHUNK_SIZE <= stopped.verified < len(data)
    sender._read_chunk = slow_read  # type: ignore[method-assign]
    code, _, err = await openred(pair.b, "fetch", offer.offer_id)
    assert code == 0, err
    placed = pair.b.data / "files" / "received" / "big.bin"
    assert placed.read_bytes() == data
    started = [json.loads(e.payload)["resumed_from"] for e in await pair.b.services.store.read()
               if e.type == "FileTransferStarted"]
    assert started[0] == 0 and started[1] >= 3 * CHUNK_SIZE


def test_offer_ids_this_node_makes_never_start_with_a_dash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An id starting with ``-`` read as an option on the command line; such draws are redone."""
    from openred.modules.file_sharing import service

    draws = iter([b"\xf8" + bytes(15), b"\xfb" + bytes(15), bytes(16)])  # "-A…", "-w…", "AAA…"
    monkeypatch.setattr(service.secrets, "token_bytes", lambda n: next(draws))
    assert service.new_offer_id() == "A" * 22
    monkeypatch.undo()
    assert not any(service.new_offer_id().startswith("-") for _ in range(2000))


async def test_an_offer_id_starting_with_a_dash_is_taken_after_double_dash(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer may make an id starting with ``-``: ``decline -- ID`` declines it."""
    from openred.modules.file_sharing import service

    dashed = "-" + "A" * 21
    monkeypatch.setattr(service, "new_offer_id", lambda: dashed)
    (tmp_path / "f").write_bytes(b"abc")
    offer = await files(pair.a).share(pair.b.id, tmp_path / "f", expires_in=3600)
    assert offer.offer_id == dashed
    base = [OPENRED, "decline", "--data-dir", str(pair.b.data)]
    for args, expected in (([dashed], 2), (["--", dashed], 0)):
        proc = await asyncio.create_subprocess_exec(
            *base, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        assert proc.returncode == expected, err.decode()
    assert (await files(pair.a).offer(dashed)).state == "declined"  # type: ignore[union-attr]
