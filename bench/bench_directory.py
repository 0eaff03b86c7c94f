"""The directory under HTTP load: registrations, grants and one-record lookups per second.

Baseline (issue 7): a trivial JSON endpoint on the same Hypercorn configuration
(``openred.web.serve.hypercorn_config``), loaded by the same client, from another process, at
the same concurrency. Every server here is its own process (``openred directory serve`` for
the directory, with its jail; a bare Quart app for the baseline; one process answering the
token pushes of two local receivers), and the load comes from a separate client process.

The two receivers are a harness, not what is measured. In a network they are nodes on other
machines; here they share the machine's two cores with the directory, its jail and the load
client, so every cycle they spend is taken from what is measured. They are one process that
reads each push's whole body and answers the acknowledgement the bare Quart receiver answered
(same status, headers and bytes) from a bare asyncio protocol (``--serve receivers-lean``,
:func:`serve_lean`): ~0.23 ms of CPU per grant, against ~1.4 ms as a plain ASGI callable under
Hypercorn (``--serve receivers``, what the runs before 2026-12-02's fifth session used;
``--serve receivers-quart`` runs the Quart app). The directory's own work per grant is the
same with either. ``directory_request_connection_c64_asgi_receivers`` is the c64 grant
figure with the ASGI receivers, so runs before and after compare.

Each scenario is compared with a baseline measured in the same minutes: both are split in
three chunks run alternately (baseline, scenario, baseline, ...), because the machine is shared
and its load drifts within seconds. The client sends requests prepared beforehand — already signed
(RFC 9421) with fresh nonces — so signing does not slow the client down; the directory runs
with a 300 s signature window so the prepared requests are still inside it. Latency is per
request, from send to full answer.

* ``directory_register``: each request registers a new node (signature check, record check,
  URL check, one log append through the group commit);
* ``directory_request_connection``: grants between registered nodes whose URLs are the two
  receivers: sign the grant in the jail, seal two tokens, append, sign a checkpoint, prove
  inclusion, push both halves and wait for both acknowledgements;
* ``directory_discover``: ``GET /nodes/discover?node_id=`` for one record.

Each scenario runs at two concurrencies, each against the baseline at the same one: 16
requests in flight (the names without a suffix, as since the first bench) and 64 (the names
ending in ``_c64``, against ``http_json_baseline_c64``). The baseline is saturated at 16 already
(its rate is the same at 64), while a registration or a grant waits for its group's fsync
before it is answered, so 16 requests in flight leave the directory idle part of the time:
by Little's law, requests in flight = rate × time each spends in the server, and a fsync
plus the group it waits behind is 10–13 ms of every registration's stay at 16. The ``_c64``
figures are the directory's capacity, what the issue's targets compare
(docs/decisions.md, "The directory's capacity: requests in flight, not the GIL alone").
Since then (2026-12-03) the directory's process is ~0.9 of a core busy at 16 in flight too,
but pays more per request there: each group commit and each batch of signature checks is
shared by fewer requests (measured: 0.72 + 3.4 / c ms of its CPU per registration at c in
flight, c = 8 to 128), which is what the figures without a suffix show.

Each figure also has a ``_cpu`` line: the CPU time (user + system, from ``/proc``) the server
process spent per request during the same chunks — the directory's own process (not its jail,
not the receivers), against the baseline server's. Its ratio is a cost, lower is better: a
server bound by its one Python thread (the GIL) answers at 1 / its CPU per request, so when
both are CPU-bound a throughput ratio of 0.5 needs a ``_cpu`` ratio of at most 2 (0.25: 4;
0.6: 1.67). Those lines separate what the directory's work costs from how much of the time it
is kept busy (the throughput ratio at 16 in flight); on a host without ``/proc`` they are left
out.

The directory verifies Ed25519 signatures in a worker process of its own
(``openred.crypto.checks``, on the machine's other core), so its own process — what bounds its
rate — no longer pays for them. That work is not hidden: ``_worker_cpu`` is the worker's CPU
time per request in the same chunks, against the same baseline line (the directory's whole cost
is ``_cpu`` + ``_worker_cpu``).

``python -m bench.bench_directory`` (or ``make bench``); ``--quick`` runs fewer requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.public
import nacl.signing

from bench.common import percentiles, report

CONCURRENCY = 16
"""Requests in flight: the figures under the names without a suffix (since the first bench)."""
SATURATED = 64
"""Requests in flight for the ``_c64`` figures: enough to keep the directory busy (below)."""
ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]


# -- the servers ---------------------------------------------------------------------------------

def baseline_app() -> Any:
    from quart import Quart

    app = Quart("baseline")

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


RECEIVE_PATH = "/api/v3/tokens/receive"
ACK = b'{"status":"ok"}\n'
"""The receivers' acknowledgement: the bytes the bare Quart app used to answer."""


def receivers_app_quart() -> Any:
    """The receivers as a bare Quart app (what they were until the grant speed work)."""
    from quart import Quart

    app = Quart("receivers")

    @app.post(RECEIVE_PATH)
    async def receive() -> dict[str, str]:
        from quart import request

        await request.get_data()
        return {"status": "ok"}

    return app


def receivers_app() -> Any:
    """The two receivers: a plain ASGI callable that acknowledges every push.

    Same Hypercorn configuration, same answer as :func:`receivers_app_quart` (200,
    ``application/json``, ``{"status":"ok"}`` plus a newline, after reading the whole body; 404
    for any other path, 405 for another method) without Quart's request machinery: the
    receivers stand in for nodes and share the machine's cores with the directory being
    measured, so what they spend per push is taken from the directory (docs/decisions.md,
    "Directory speed").
    """
    ack_headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(ACK)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # the whole body, as the Quart receiver's get_data() read it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        if scope["path"] != RECEIVE_PATH:
            status, body = 404, b""
        elif scope["method"] != "POST":
            status, body = 405, b""
        else:
            status, body = 200, ACK
        headers = ack_headers if body else [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class _AckProtocol(asyncio.Protocol):
    """One connection of :func:`serve_lean`: HTTP/1.1 requests in, acknowledgements out.

    Keep-alive (until ``Connection: close``), bodies framed by Content-Length (what the
    directory's aiohttp client sends), each read whole before it is answered; anything it
    cannot frame (a chunked body included) gets 400 and the connection closed.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(self.buffer[:head_end]).split(b"\r\n")
            closing = False
            try:
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value.strip())
                    elif name == b"transfer-encoding":  # aiohttp sends bytes with a length
                        raise ValueError("no chunked bodies")
                    elif name == b"connection" and value.strip().lower() == b"close":
                        closing = True
                if length < 0:
                    raise ValueError("negative length")
            except ValueError:
                self._answer(400, b"", True)
                return
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            del self.buffer[:end]
            if path.decode("latin-1") != RECEIVE_PATH:
                self._answer(404, b"", closing)
            elif method != b"POST":
                self._answer(405, b"", closing)
            else:
                self._answer(200, ACK, closing)
            if closing:
                return

    def _answer(self, status: int, body: bytes, close: bool) -> None:
        assert self.transport is not None
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found",
                  405: b"Method Not Allowed"}[status]
        kind = b"content-type: application/json\r\n" if body else b""
        ending = b"connection: close\r\n" if close else b""
        self.transport.write(b"HTTP/1.1 %d %s\r\n%s%scontent-length: %d\r\n\r\n%s"
                             % (status, reason, kind, ending, len(body), body))
        if close:
            self.buffer.clear()
            self.transport.close()


def serve_lean(ports: list[int]) -> None:
    """The two receivers as a bare asyncio protocol, no ASGI server: the acknowledgement
    :func:`receivers_app` answers (200, ``application/json``, ``{"status":"ok"}`` and a
    newline; 404 for another path, 405 for another method), at a sixth of its CPU per push."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(_AckProtocol, "127.0.0.1", p) for p in ports]
        await asyncio.gather(*(s.serve_forever() for s in servers))

    from openred.web.serve import tune_gc

    tune_gc()
    asyncio.run(main())


def serve_many(kind: str, ports: list[int]) -> None:
    """Run ``baseline``, ``receivers`` (or ``receivers-quart``) on the given ports.

    The server processes' entry point.
    """
    from hypercorn.asyncio import serve

    from openred.web.serve import hypercorn_config, tune_gc

    if kind == "receivers-lean":
        serve_lean(ports)
        return
    apps = {"baseline": baseline_app, "receivers": receivers_app,
            "receivers-quart": receivers_app_quart}
    app = apps[kind]()
    config = hypercorn_config("127.0.0.1", ports[0])
    config.bind = [f"127.0.0.1:{p}" for p in ports]
    config.errorlog = None
    tune_gc()  # as the served directory and nodes do once started
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the load client (its own process) -----------------------------------------------------------

async def _load(requests: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                r = queue.pop()
                body = base64.b64decode(r["body"])
                start = time.perf_counter()
                async with session.request(r["method"], r["url"], headers=r["headers"],
                                           data=body or None) as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - start)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        # Warm the connections first (not timed).
        warm = [queue.pop() for _ in range(min(concurrency, len(queue) // 10))]
        queue_after = queue
        queue = list(reversed(warm))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        queue = queue_after
        latencies.clear()
        count = len(queue)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"count": count, "elapsed": elapsed, "latencies": latencies, "statuses": statuses}


def client_main(path: str, concurrency: int) -> None:
    requests = json.loads(Path(path).read_text())
    result = asyncio.run(_load(requests, concurrency))
    print(json.dumps(result))


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    cpu_ms: float | None
    """The server process's CPU time per request (user + system), None without ``/proc``."""
    worker_cpu_ms: float | None = None
    """Its signature check worker's, None without one."""


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process ``pid`` has used so far, or None (no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def signature_worker(pid: int) -> int | None:
    """The directory ``pid``'s signature check worker (its child running
    ``openred.crypto.check_worker``), or None."""
    from openred.demo import children

    for child in children(pid):
        try:
            if b"openred.crypto.check_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _load_raw(requests: list[dict[str, Any]], tmp: Path,
              concurrency: int = CONCURRENCY, server: int | None = None) -> dict[str, Any]:
    """The load client's result; with ``server`` (a pid), also that process's CPU seconds
    during the run under ``cpu`` (None when it cannot be read), and its signature check
    worker's under ``worker_cpu`` (None without one)."""
    path = tmp / f"requests-{random.random()}.json"
    path.write_text(json.dumps(requests))
    worker = None if server is None else signature_worker(server)
    before = None if server is None else cpu_seconds(server)
    worker_before = None if worker is None else cpu_seconds(worker)
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_directory", "--client", str(path),
         str(concurrency)], cwd=ROOT, capture_output=True, text=True, check=True,
    )
    after = None if server is None else cpu_seconds(server)
    worker_after = None if worker is None else cpu_seconds(worker)
    result: dict[str, Any] = json.loads(out.stdout)
    # What the warm-up requests cost is counted too, over every request sent.
    result["cpu"] = _spent(before, after)
    result["worker_cpu"] = _spent(worker_before, worker_after)
    result["sent"] = len(requests)
    return result


def _run(results: list[dict[str, Any]]) -> Run:
    latencies = [x for r in results for x in r["latencies"]]
    statuses: dict[str, int] = {}
    for r in results:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    p50, p99 = percentiles(latencies)
    rate = sum(r["count"] for r in results) / sum(r["elapsed"] for r in results)
    sent = sum(r["sent"] for r in results)

    def per_request(key: str) -> float | None:
        spent = [r[key] for r in results if isinstance(r.get(key), float)]
        return sum(spent) / sent * 1000 if len(spent) == len(results) else None

    return Run(rate, p50 * 1000, p99 * 1000, statuses, per_request("cpu"),
               per_request("worker_cpu"))


def interleaved(requests: list[dict[str, Any]], baseline: list[dict[str, Any]], tmp: Path,
                rounds: int = ROUNDS, concurrency: int = CONCURRENCY,
                servers: tuple[int, int] | None = None) -> tuple[Run, Run]:
    """(scenario, baseline), each measured in ``rounds`` chunks that alternate with the other.

    The machine is shared and its load drifts within seconds: alternating short chunks puts
    both under the same load, where one baseline run followed by one scenario run did not.
    ``servers``: the pids of the scenario's server and the baseline's, whose CPU time per
    request each :class:`Run` reports.
    """
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    mine, base = servers if servers is not None else (None, None)
    for i in range(rounds):
        theirs.append(_load_raw(baseline[i::rounds], tmp, concurrency, base))
        ours.append(_load_raw(requests[i::rounds], tmp, concurrency, mine))
    return _run(ours), _run(theirs)


# -- preparing signed requests -------------------------------------------------------------------

class BenchNode:
    def __init__(self, api_url: str) -> None:
        from openred.crypto.identity import SignKey

        self.sk = nacl.signing.SigningKey.generate()
        self.box = nacl.public.PrivateKey.generate()
        self.api_url = api_url
        self.node_id = str(SignKey(bytes(self.sk.verify_key)).node_id)

    def record_wire(self) -> dict[str, Any]:
        from openred.crypto.identity import BoxKey, SignKey
        from openred.crypto.records import NodeRecord, SignedNodeRecord

        record = NodeRecord.build(sign_key=SignKey(bytes(self.sk.verify_key)),
                                  box_key=BoxKey(bytes(self.box.public_key)),
                                  api_url=self.api_url, modules=["messaging"],
                                  issued_at=int(time.time()), version=1)
        return SignedNodeRecord(record, self.sk.sign(record.canonical_bytes()).signature).to_wire()

    async def signed(self, method: str, url: str, body: Any = None) -> dict[str, Any]:
        from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request

        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}

        async def sign(base: bytes) -> bytes:
            return bytes(self.sk.sign(base).signature)

        req = await sign_request(HttpRequest(method, url, headers, raw), keyid=self.node_id,
                                 sign_base=sign, now=int(time.time()), nonce=new_nonce())
        return {"method": method, "url": url, "headers": dict(req.headers),
                "body": base64.b64encode(raw).decode()}


def plain(method: str, url: str) -> dict[str, Any]:
    return {"method": method, "url": url, "headers": {}, "body": ""}


# -- the benchmark -------------------------------------------------------------------------------

async def prepare_register(url: str, n: int, receiver: str) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        node = BenchNode(receiver)
        out.append(await node.signed("POST", url + "/api/v3/nodes/register", node.record_wire()))
    return out


def run_all(quick: bool) -> None:
    n_base, n_reg, n_grant, n_disc = (600, 300, 150, 600) if quick else (6000, 3000, 1500, 6000)
    tmp = Path(tempfile.mkdtemp(prefix="openred-bench-dir-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: list[tuple[str, tuple[Run, Run], tuple[Run, Run], tuple[Run, Run]]] = []
    env = {**os.environ, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1",
           "OPENRED_SIGNATURE_WINDOW": "300",
           "OPENRED_RATE_PER_CLIENT": "100000000", "OPENRED_RATE_PER_INITIATOR": "100000000",
           "OPENRED_RATE_PER_TARGET": "100000000", "OPENRED_PUSH_ATTEMPTS": "1",
           "OPENRED_PUSHES_PER_NETWORK": "100000"}
    try:
        base_port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.bench_directory", "--serve", "baseline",
             str(base_port)], cwd=ROOT, env=env))
        receiver_ports = [free_port(), free_port()]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.bench_directory", "--serve", "receivers-lean",
             *map(str, receiver_ports)], cwd=ROOT, env=env))
        asgi_ports = [free_port(), free_port()]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.bench_directory", "--serve", "receivers",
             *map(str, asgi_ports)], cwd=ROOT, env=env))
        data, dir_port = tmp / "directory", free_port()
        env["OPENRED_JAIL_SOCKET"] = str(tmp / "jail" / "j.sock")
        subprocess.run([sys.executable, "-m", "openred.cli", "directory", "init", "--data-dir",
                        str(data), "--port", str(dir_port), "--allow-private-urls"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "openred.cli", "directory", "serve", "--data-dir",
             str(data)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{base_port}"
        directory = f"http://127.0.0.1:{dir_port}"
        wait_for(base + "/ping", procs[0])
        wait_for(directory + "/api/v3/health", procs[3])
        receivers = [f"http://127.0.0.1:{p}" for p in receiver_ports]
        asgi_receivers = [f"http://127.0.0.1:{p}" for p in asgi_ports]

        def baseline() -> list[dict[str, Any]]:
            return [plain("GET", base + "/ping") for _ in range(n_base)]

        grant_nodes = asyncio.run(_register_grant_nodes(directory, receivers))
        servers = (procs[3].pid, procs[0].pid)
        for concurrency, suffix in ((CONCURRENCY, ""), (SATURATED, f"_c{SATURATED}")):
            # Each scenario is interleaved with its baseline (see interleaved()).
            reg_requests = asyncio.run(prepare_register(directory, n_reg, receivers[0]))
            reg = interleaved(reg_requests, baseline(), tmp, concurrency=concurrency,
                              servers=servers)
            grant_requests = asyncio.run(_prepare_grants(directory, grant_nodes, n_grant))
            grants = interleaved(grant_requests, baseline(), tmp, concurrency=concurrency,
                                 servers=servers)
            disc_requests = asyncio.run(
                _prepare_discover(directory, receivers, n_disc, concurrency))
            disc = interleaved(disc_requests, baseline(), tmp, concurrency=concurrency,
                               servers=servers)
            results.append((suffix, reg, grants, disc))
        # The same grants with the receivers of the earlier runs (an ASGI app under Hypercorn,
        # ~6x the lean receivers' CPU per push, taken from the directory's two cores): a figure
        # of its own, so runs before and after the receivers changed stay comparable.
        asgi_nodes = asyncio.run(_register_grant_nodes(directory, asgi_receivers))
        asgi = interleaved(asyncio.run(_prepare_grants(directory, asgi_nodes, n_grant)),
                           baseline(), tmp, concurrency=SATURATED)
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)

    for suffix, *runs in results:
        for name, (run, base_run), expected in zip(
                ("directory_register", "directory_request_connection", "directory_discover"),
                runs, ("201", "201", "200"), strict=True):
            name += suffix
            if set(run.statuses) != {expected}:
                print(f"bench {name}: unexpected statuses {run.statuses}", flush=True)
            baseline_name = "http_json_baseline" + suffix
            report(name, run.rate, "req/s", baseline_name, base_run.rate)
            report(f"{name}_p50", run.p50_ms, "ms", f"{baseline_name}_p50", base_run.p50_ms)
            report(f"{name}_p99", run.p99_ms, "ms", f"{baseline_name}_p99", base_run.p99_ms)
            if run.cpu_ms is not None and base_run.cpu_ms is not None:
                report(f"{name}_cpu", run.cpu_ms, "ms/req", f"{baseline_name}_cpu",
                       base_run.cpu_ms)
            if run.worker_cpu_ms is not None and base_run.cpu_ms is not None:
                report(f"{name}_worker_cpu", run.worker_cpu_ms, "ms/req",
                       f"{baseline_name}_cpu", base_run.cpu_ms)
    run, base_run = asgi
    name = f"directory_request_connection_c{SATURATED}_asgi_receivers"
    if set(run.statuses) != {"201"}:
        print(f"bench {name}: unexpected statuses {run.statuses}", flush=True)
    report(name, run.rate, "req/s", f"http_json_baseline_c{SATURATED}", base_run.rate)


async def _register_grant_nodes(directory: str, receivers: list[str]) -> list[BenchNode]:
    """Twenty registered nodes whose URLs are the two receivers (ten initiators, ten targets)."""
    nodes = [BenchNode(receivers[i % 2]) for i in range(20)]
    for node in nodes:
        load_one(await node.signed("POST", directory + "/api/v3/nodes/register",
                                   node.record_wire()))
    return nodes


async def _prepare_grants(directory: str, nodes: list[BenchNode],
                          n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        a, b = nodes[i % 10], nodes[10 + (i * 7) % 10]
        out.append(await a.signed("POST", directory + "/api/v3/tokens/request-connection",
                                  {"target": b.node_id}))
    return out


async def _prepare_discover(directory: str, receivers: list[str], n: int,
                            concurrency: int) -> list[dict[str, Any]]:
    # One asker per connection: a signer's nonce quota (1000 per window) is not the thing
    # measured here.
    askers = [BenchNode(receivers[0]) for _ in range(concurrency)]
    target = BenchNode(receivers[1])
    for node in (*askers, target):
        load_one(await node.signed("POST", directory + "/api/v3/nodes/register",
                                   node.record_wire()))
    url = f"{directory}/api/v3/nodes/discover?node_id={target.node_id}"
    return [await askers[i % concurrency].signed("GET", url) for i in range(n)]


def load_one(request: dict[str, Any]) -> None:
    import urllib.request

    req = urllib.request.Request(
        request["url"], data=base64.b64decode(request["body"]) or None,
        headers=request["headers"], method=request["method"])
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        serve_many(args[1], [int(p) for p in args[2:]])
    elif args[:1] == ["--client"]:
        client_main(args[1], int(args[2]))
    else:
        run_all(quick="--quick" in args)


if __name__ == "__main__":
    main()
