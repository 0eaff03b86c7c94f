"""The jail against a compromised process next to it: hostile frames, planted files (jattack).

A process of an allowed uid may send any frame; a process of the jail's own uid (the
development setup) may also replace the jail's files before it starts. Neither may make the
jail eat the machine's memory, hang before it serves, or fail without a one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_jail.errors import OpRefused
from crypto_jail.keystore import Keystore
from crypto_jail.ops import OPS, JailState, dispatch
from crypto_jail.protocol import (
    MAX_BATCH,
    MAX_SIGN_MANY,
    MAX_VALUES,
    b64e,
    decode_json,
    encode_request,
)
from crypto_jail.witness import MAX_PROOF, SLOT_SIZE, Witness
from tests.crypto_jail.test_ops import HTTP_BASE, checkpoint_for
from tests.crypto_jail.test_server import (
    JailProc,
    RawClient,
    dev_keystore,
    run_jail_cli,
    short_dir,
    spawn_jail,
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def peak_memory(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# --- frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [b"{},", b"[],", b'"ab",', b"1.5,"])
def test_a_frame_of_many_tiny_json_values_is_refused_before_it_is_parsed(
    workdir: Path, unit: bytes,
) -> None:
    """4 MiB of ``{},`` parse into ~100 MB of Python objects: 128 such clients at once were
    ~13 GB. The jail refuses a large body holding more values than any request has."""
    keystore, public = dev_keystore(workdir)
    proc: JailProc = spawn_jail(keystore, workdir / "s" / "j.sock")
    client = RawClient(proc.socket_path)
    try:
        assert client.result("public_keys") == public
        before = peak_memory(proc.pid)
        count = (4 * 1024 * 1024 - 100) // len(unit)
        items = (unit * count)[:-1]
        client.send_body(b'{"id":7,"op":"sign","args":{"kind":"entry_hash","data":[' + items
                         + b"]}}")
        answer = client.recv()
        assert answer is not None and not answer["ok"]
        assert answer["error"]["code"] == "malformed_frame"
        assert "too many JSON values" in answer["error"]["detail"]
        grown = peak_memory(proc.pid) - before
        assert grown < 32 * 1024 * 1024, f"the jail grew by {grown // 2**20} MiB"
        assert client.result("public_keys") == public  # the connection stays
    finally:
        client.close()
        proc.stop()


@pytest.mark.parametrize("where", ["args", "request"])
def test_an_error_that_would_echo_a_huge_name_still_gets_its_answer(
    workdir: Path, where: str,
) -> None:
    """Refusals name the unexpected fields: a 1 MiB field name of ``é`` (2 bytes each in the
    request, 6 as ``\\u00e9`` in the answer) made an answer larger than a frame; the jail's
    thread died with a traceback and the client got no answer."""
    keystore, public = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "j.sock")
    client = RawClient(proc.socket_path)
    try:
        name = "é" * (1024 * 1024)
        request: dict[str, object] = {"id": 3, "op": "public_keys", "args": {}}
        if where == "args":
            request["args"] = {name: 1}
        else:
            request[name] = 1
        client.send_body(json.dumps(request, ensure_ascii=False).encode())
        answer = client.recv()
        assert answer is not None, "no answer"
        assert answer["id"] == 3 and answer["error"]["code"] == "bad_request"
        assert len(answer["error"]["detail"]) <= 1024
        assert client.result("public_keys") == public  # the connection stays
    finally:
        client.close()
        proc.stop()
    assert "Traceback" not in proc.stderr()


def test_the_largest_honest_requests_hold_far_fewer_values() -> None:
    """A full ``sign_many`` of checkpoints with the longest proofs, and a full ``sign_batch``,
    still parse: the bound on values only ever refuses bodies no client sends."""
    proof = [b64e(bytes([i]) * 32) for i in range(MAX_PROOF)]
    item = {"kind": "checkpoint", "data": b64e(b"x" * 8192), "consistency_proof": proof}
    many = encode_request(1, "sign_many", {"items": [item] * MAX_SIGN_MANY})
    batch = encode_request(2, "sign_batch", {"kind": "entry_hash",
                                             "data": b64e(b"\x00" * 32 * MAX_BATCH)})
    for frame in (many, batch):
        assert len(frame) > 64 * 1024
        assert decode_json(frame[4:])["id"] in (1, 2)
    assert many.count(b",") + many.count(b"[") + many.count(b"{") < MAX_VALUES // 3


# --- files planted before the jail starts ----------------------------------------------------


def serve_once(keystore: Path, socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` that must end by itself (refused): a jail that hangs or serves fails the test."""
    try:
        return run_jail_cli("serve", "--keystore", str(keystore), "--socket", str(socket_path),
                            *args, timeout=15)
    except subprocess.TimeoutExpired:  # run() killed it
        pytest.fail("the jail hung (or served) instead of refusing the file")


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


def test_a_keystore_that_is_a_fifo_is_refused_not_waited_on(workdir: Path) -> None:
    fifo = workdir / "keystore.json"
    os.mkfifo(fifo, 0o600)
    result = serve_once(fifo, workdir / "s" / "j.sock")
    assert_one_line_refusal(result, str(fifo), "not a regular file")


@pytest.mark.parametrize("how", ["fifo", "link to a fifo"])
def test_a_witness_file_that_is_a_fifo_is_refused_not_waited_on(workdir: Path, how: str) -> None:
    keystore, _ = dev_keystore(workdir)
    witness = workdir / "w"
    if how == "fifo":
        os.mkfifo(witness, 0o600)
    else:
        os.mkfifo(workdir / "elsewhere", 0o600)
        witness.symlink_to(workdir / "elsewhere")
    result = serve_once(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    assert_one_line_refusal(result, str(witness))
    assert "regular file" in result.stderr or "symbolic link" in result.stderr


def test_a_witness_file_larger_than_a_witness_is_refused_unread(workdir: Path) -> None:
    keystore, _ = dev_keystore(workdir)
    witness = workdir / "w"
    with witness.open("wb") as handle:  # sparse: a big file that costs the disk nothing
        handle.truncate(64 * 1024 * 1024)
    witness.chmod(0o600)
    result = serve_once(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    assert_one_line_refusal(result, str(witness), "not a witness file")


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_witness_file_others_may_write_is_refused(workdir: Path, mode: int) -> None:
    """Whoever may write the file may roll the witness back: the log's protection is gone."""
    keystore, _ = dev_keystore(workdir)
    witness = workdir / "w"
    proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    proc.stop()
    assert stat.S_IMODE(witness.stat().st_mode) == 0o600  # what the jail makes
    witness.chmod(mode)
    result = serve_once(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    assert_one_line_refusal(result, str(witness), "chmod 600")
    witness.chmod(0o600)
    proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    proc.stop()


def test_clients_dribbling_frames_cannot_lock_a_newcomer_out(workdir: Path) -> None:
    """128 clients that each sent two bytes of a frame hold every slot for the whole frame
    timeout (10 s) at no cost, and reconnect: a newcomer (the node's own next connection) must
    take the slot of the one that has stalled inside its frame the longest, as it takes an
    idle one's."""
    keystore, public = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "j.sock")  # the default 10 s frame timeout
    hogs: list[RawClient] = []
    try:
        for _ in range(128):
            hog = RawClient(proc.socket_path)
            hog.send_raw(b"\x00\x00")  # half a length prefix, and nothing more
            hogs.append(hog)
        time.sleep(1.5)  # every hog has stalled inside its frame longer than the threshold
        newcomer = RawClient(proc.socket_path)
        assert newcomer.result("public_keys") == public  # admitted at once, not after 10 s
        readable, _, _ = select.select([h.sock for h in hogs], [], [], 3)
        assert len(readable) == 1  # one stalled hog lost its slot
        newcomer.close()
    finally:
        for hog in hogs:
            hog.close()
        proc.stop()


def test_clients_that_do_not_read_their_answers_cannot_lock_a_newcomer_out(workdir: Path) -> None:
    """An answer larger than the socket's buffer (a ``wrap`` of 256 KiB) that its client never
    reads held the slot for the frame timeout too, at the cost of one cheap request: such a
    client is waiting on its peer, as evictable as an idle one."""
    keystore, public = dev_keystore(workdir)
    proc = spawn_jail(keystore, workdir / "s" / "j.sock")
    hogs: list[RawClient] = []
    try:
        for index in range(128):
            hog = RawClient(proc.socket_path)
            hog.send_body(json.dumps({"id": index, "op": "wrap", "args": {
                "label": "l", "plaintext": b64e(bytes(256 * 1024))}}).encode())
            hogs.append(hog)
        time.sleep(1.5)  # every answer is stuck in its socket longer than the threshold
        newcomer = RawClient(proc.socket_path)
        assert newcomer.result("public_keys") == public  # admitted at once, not after 10 s
        newcomer.close()
    finally:
        for hog in hogs:
            hog.close()
        proc.stop()


def plant_witness(path: Path, bodies: dict[str, bytes]) -> None:
    """A witness file whose slot is intact (its SHA-256 is no MAC: anyone may compute it)."""
    path.write_bytes(Witness._slot(7, bodies).ljust(2 * SLOT_SIZE, b"\x00"))
    path.chmod(0o600)


@pytest.mark.parametrize("planted", ["signature base", "another origin's checkpoint"])
def test_a_planted_witness_is_refused_at_start_not_signed(workdir: Path, planted: str) -> None:
    """``witnessed`` signs the body the witness holds: a body planted in the file (by a process
    of the jail's uid, while the jail is stopped) was signed as it stood — an HTTP request
    created years ahead, past every time check of ``sign``."""
    keystore, public = dev_keystore(workdir)
    origin = f"openred/{public['node_id']}"
    later = HTTP_BASE.replace(b"created=1700000000", b"created=%d" % (int(time.time()) + 10**8))
    body = later if planted == "signature base" else checkpoint_for("c" * 32)
    witness = workdir / "w"
    plant_witness(witness, {origin: body})
    try:
        proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness),
                          timeout=15)
    except RuntimeError as refused:
        assert "Traceback" not in str(refused)
        assert "not a checkpoint" in str(refused) and str(witness) in str(refused)
        return
    client = RawClient(proc.socket_path)
    try:
        assert not client.call("sign", {"kind": "http_signature_base",
                                        "data": b64e(later)})["ok"]
        answer = client.call("witnessed", {"origin": origin})
        signature = answer.get("result", {}).get("signature")
        pytest.fail(f"the jail served a planted witness (and signed it: {signature is not None})")
    finally:
        client.close()
        proc.stop()


def test_witnessed_signs_only_checkpoints_of_the_jails_own_logs(workdir: Path) -> None:
    """``sign_checkpoint`` signs only this jail's origins; a checkpoint of another log held in
    the witness file (planted under its own origin) is handed out, never signed."""
    keystore, public = dev_keystore(workdir)
    foreign = "openred/" + "c" * 32
    witness = workdir / "w"
    plant_witness(witness, {foreign: checkpoint_for("c" * 32)})
    proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    client = RawClient(proc.socket_path)
    try:
        assert not client.call("sign_checkpoint", {"body": b64e(checkpoint_for("c" * 32))})["ok"]
        answer = client.call("witnessed", {"origin": foreign})
        assert "signature" not in answer.get("result", {}), answer
        own = f"openred/{public['node_id']}"
        assert client.result("witnessed", {"origin": own})["body"] is None
    finally:
        client.close()
        proc.stop()


# --- every argument of every operation, in every JSON type -----------------------------------

_NESTED: list[object] = []
for _ in range(50):
    _NESTED = [_NESTED]
ODD_VALUES: list[object] = [
    None, True, 0, -1, 2**64, 1.5, "", "x", "\x00", "é" * 10, "A" * 100_000, [], {}, ["a"],
    {"a": 1}, _NESTED, [None], ["A" * 43], [{"kind": None, "data": None}],
    [{"kind": "checkpoint", "data": "", "consistency_proof": None}],
]


def test_any_value_in_any_argument_of_any_operation_is_a_refusal(tmp_path: Path) -> None:
    """Each operation, each of its arguments (and one it does not take) replaced by values of
    every JSON type: the answer is a result or a refusal with a code, never ``internal``."""
    keystore = Keystore.generate(insecure=True)
    state = JailState(keystore, witness=Witness(tmp_path / "w"))
    zero = b64e(bytes(32))
    good: dict[str, dict[str, object]] = {
        "public_keys": {},
        "sign": {"kind": "entry_hash", "data": zero},
        "sign_batch": {"kind": "entry_hash", "data": zero},
        "sign_many": {"items": [{"kind": "entry_hash", "data": zero}]},
        "sign_checkpoint": {"body": b64e(checkpoint_for(keystore.node_id)),
                            "consistency_proof": []},
        "witnessed": {"origin": f"openred/{keystore.node_id}"},
        "open_sealed": {"sealed": b64e(bytes(80))},
        "noise_initiate": {"suite": "x", "grant": b64e(b"{}"), "grant_signature": b64e(bytes(64)),
                           "sealed_token": b64e(bytes(80)), "remote_static": zero},
        "noise_respond": {"suite": "x", "grant": b64e(b"{}"), "grant_signature": b64e(bytes(64)),
                          "sealed_token": b64e(bytes(80)), "remote_static": zero,
                          "message": ""},
        "noise_finish": {"handle": "abc", "message": ""},
        "wrap": {"label": "l", "plaintext": "eA"},
        "unwrap": {"label": "l", "wrapped": b64e(bytes(60))},
    }
    assert set(good) == set(OPS)
    for op, args in good.items():
        for name in [*args, "unexpected"]:
            for value in ODD_VALUES:
                try:
                    dispatch(state, op, {**args, name: value})
                except OpRefused as refused:
                    assert refused.code != "internal"


def test_a_long_checkpoint_of_one_origin_does_not_crowd_the_others_out_of_the_witness(
    workdir: Path,
) -> None:
    """A jail naming a second origin (``--checkpoint-origin``, a log whose key was rotated)
    witnessed whole bodies in one 4 KiB slot: a checkpoint with ~2.8 KB of extension lines for
    one origin — a compromised node may have any signed — left no room for the other, whose
    checkpoints were refused ("too many origins") until the operator moved the file aside.
    The witness keeps tree heads (origin, size, root): all it checks."""
    keystore, public = dev_keystore(workdir)
    rotated = "openred/" + "d" * 32
    witness = workdir / "w"
    proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness),
                      "--checkpoint-origin", rotated)
    client = RawClient(proc.socket_path)
    try:
        long_body = checkpoint_for(public["node_id"]) + b"".join(
            b"x%03d %s\n" % (i, b"e" * 60) for i in range(42))
        assert 2700 < len(long_body) < 2900
        client.result("sign_checkpoint", {"body": b64e(long_body)})
        client.result("sign_checkpoint", {"body": b64e(checkpoint_for("d" * 32))})
        assert client.result("witnessed", {"origin": rotated})["body"] == b64e(
            checkpoint_for("d" * 32))
    finally:
        client.close()
        proc.stop()
    proc = spawn_jail(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness),
                      "--checkpoint-origin", rotated)
    client = RawClient(proc.socket_path)
    try:  # what it remembers of the long one is its tree head, and it still holds it
        own = f"openred/{public['node_id']}"
        assert client.result("witnessed", {"origin": own})["body"] == b64e(
            checkpoint_for(public["node_id"]))
        assert not client.call("sign_checkpoint", {"body": b64e(
            checkpoint_for(public["node_id"], size=41))})["ok"]
    finally:
        client.close()
        proc.stop()


def test_a_witness_slot_nested_too_deep_is_a_damaged_witness_not_a_traceback(
    workdir: Path,
) -> None:
    keystore, _ = dev_keystore(workdir)
    witness = workdir / "w"
    content = b"[" * 2000 + b"]" * 2000  # an intact slot: the hash is anyone's to compute
    slot = b"openred-jail-witness/1\n" + hashlib.sha256(content).digest() + len(content).to_bytes(
        4, "big") + content
    witness.write_bytes(slot.ljust(2 * SLOT_SIZE, b"\x00"))
    witness.chmod(0o600)
    result = serve_once(keystore, workdir / "s" / "j.sock", "--witness-file", str(witness))
    assert_one_line_refusal(result, str(witness), "damaged")


def test_a_squatted_socket_that_never_accepts_is_reported_not_waited_on(workdir: Path) -> None:
    """Before binding, the jail probes a socket file it finds (a stale one is replaced, a live
    one refused). A process listening there that never accepts, its backlog full, held that
    probe's ``connect`` — and the jail's start — forever."""
    keystore, _ = dev_keystore(workdir)
    (workdir / "s").mkdir(mode=0o700)
    path = workdir / "s" / "j.sock"
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        squatter.bind(str(path))
        squatter.listen(0)
        for _ in range(8):  # fill the backlog: the next connect blocks
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                break
        result = serve_once(keystore, path)
        assert_one_line_refusal(result, str(path), "in use")
    finally:
        for filler in fillers:
            filler.close()
        squatter.close()
