"""What a new operator meets walking the README by hand, against real processes on loopback.

A directory and a node are started with the real commands (logs as JSON, as the README's
``OPENRED_LOG_FORMAT=json`` promises: one JSON object a line); then what an operator gets wrong
on the way must be one clear line: serving a data directory a second time (which ran beside the
first, shared its log and jail, and removed its ``admin-url`` on exit, so the first node's
commands said it was not running), a long error (wrapped over several lines at 80 columns), a
service that fails to start (Hypercorn's "Lifespan failure in startup. '…'"), and a module's
command on a node that does not enable the module (Werkzeug's "The requested URL was not found
on the server. If you entered the URL manually …").
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cli.network import ROOT, Network, cli_env, network, openred
from tests.crypto_jail.test_server import short_dir
from tests.servers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    with network(short_dir(), OPENRED_LOG_FORMAT="json") as net:
        net.init_directory()
        net.start_directory()
        net.init_node("a")
        net.start_node("a")
        net.wait_registered("a")
        yield net


def _serve_again(net: Network, *args: str) -> subprocess.CompletedProcess[str]:
    """``openred ARGS`` that must give up at once (a serve that ran would be killed at 30 s)."""
    return subprocess.run([sys.executable, "-m", "openred.cli", *args], capture_output=True,
                          text=True, env=net.env, cwd=ROOT, timeout=30, check=False)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_second_serve_of_a_served_data_dir_is_refused_and_the_first_keeps_serving(
    net: Network,
) -> None:
    node = net.servers["a"]
    line = _one_line(_serve_again(net, "node", "serve", "--data-dir", str(net.root / "a"),
                                  "--port", str(free_port())))
    assert "already served" in line and str(node.pid) in line, line
    # the first node's admin URL is still there: its commands still reach it
    assert (net.root / "a" / "admin-url").exists()
    assert net.cli_json("a", "status")["node_id"] == net.ids["a"]

    directory = net.servers["directory"]
    line = _serve_again(net, "directory", "serve", "--data-dir", str(net.root / "directory"),
                        "--port", str(free_port()))
    text = _one_line(line)
    assert "already served" in text and str(directory.pid) in text, text
    assert directory.proc.poll() is None and node.proc.poll() is None


def test_json_logs_are_one_json_object_a_line(net: Network) -> None:
    for name in ("directory", "a"):
        output = net.servers[name].output()
        serving = f"{name if name == 'directory' else 'node'} serving on"
        for line in output.splitlines():
            if line.startswith(serving):  # the command's own line on stdout
                continue
            assert isinstance(json.loads(line), dict), (name, line)
        # Hypercorn's "Running on" once per listener, not once more in its own format
        assert output.count("Running on") == (1 if name == "directory" else 2), output


def test_a_module_command_on_a_node_without_the_module_says_to_enable_it(net: Network) -> None:
    result = net.cli("a", "auth", "status", check=False)
    line = _one_line(result)
    assert "authentication module is not enabled" in line and "OPENRED_MODULES" in line, line


def test_a_long_error_is_one_line() -> None:
    root = short_dir()
    deep = root / ("a-long-folder-name-" * 6) / "directory"
    result = openred("directory", "serve", "--data-dir", str(deep), check=False)
    assert "is not initialized" in _one_line(result)


def test_a_service_that_cannot_start_says_why_in_one_line() -> None:
    root = short_dir()
    with network(root) as net:
        net.init_directory()
        (root / "directory" / "jail-passphrase").write_text("not the passphrase at all\n")
        result = _serve_again(net, "directory", "serve", "--data-dir", str(root / "directory"))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        # the service's log lines come first; then the command's one error line
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
        assert "Lifespan" not in errors[0] and "wrong passphrase" in errors[0], errors[0]


def test_a_failed_node_init_can_be_run_again_and_a_given_passphrase_file_is_used() -> None:
    """`node init` with OPENRED_JAIL_KDF=min but without OPENRED_JAIL_INSECURE_TEST_KDF failed
    (rightly) but left DATA_DIR/jail-passphrase behind: the next `node init` died with a
    FileExistsError traceback, and `node serve` said "OPENRED_DIRECTORY_KEY is not set". A
    passphrase file the operator put there first (the documented default
    OPENRED_JAIL_PASSPHRASE_FILE) got the same traceback."""
    root = short_dir()
    with network(root) as net:
        net.directory_key = "PKQ1yLMr6W6wCGTapSUzkElojDYEehRbKcEiinBJLTM"
        net.directory_port = free_port()
        data = root / "a"
        init = ("node", "init", "--data-dir", str(data), "--directory", net.directory_url,
                "--directory-key", net.directory_key, "--api-url",
                f"http://127.0.0.1:{free_port()}")
        weak = {**net.env}
        del weak["OPENRED_JAIL_INSECURE_TEST_KDF"]
        first = openred(*init, env=weak, check=False)
        assert "insecure-test-kdf" in _one_line(first)
        assert not (data / "jail-passphrase").exists()
        served = openred("node", "serve", "--data-dir", str(data), env=net.env, check=False)
        assert "is not initialized" in _one_line(served)

        (data / "jail-passphrase").write_text("the operator's own passphrase\n")
        again = openred(*init, env=net.env, check=False)
        assert again.returncode == 0, again.stderr
        assert (data / "jail-passphrase").read_text() == "the operator's own passphrase\n"
        assert (data / "keystore.json").is_file()


def test_ports_out_of_range_and_a_directory_url_that_is_not_one_are_refused_up_front() -> None:
    """`serve --port 99999` (or OPENRED_PORT=70000) got as far as Hypercorn's bind: an
    OverflowError traceback. `node init --directory foo` made a node that could never reach
    its directory."""
    root = short_dir()
    (root / "x").mkdir()
    for args in (("node", "serve", "--port", "99999"), ("directory", "serve", "--port", "99999"),
                 ("directory", "init", "--port", "70000")):
        result = openred(*args, "--data-dir", str(root / "x"), check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "99999" in result.stderr or "70000" in result.stderr
    env = {**cli_env(), "OPENRED_PORT": "70000"}
    for service in ("node", "directory"):
        result = openred(service, "serve", "--data-dir", str(root / "x"), env=env, check=False)
        assert "OPENRED_PORT" in _one_line(result) and "65535" in result.stderr, result.stderr
    key = "PKQ1yLMr6W6wCGTapSUzkElojDYEehRbKcEiinBJLTM"
    for url in ("foo", "ftp://dir.example.org", "http://"):
        result = openred("node", "init", "--data-dir", str(root / "n"), "--directory", url,
                         "--directory-key", key, "--api-url", "http://127.0.0.1:8701",
                         check=False)
        assert "--directory" in _one_line(result), result.stderr
        assert not (root / "n").exists()


def test_a_node_that_cannot_start_logs_why_in_one_line_and_a_bad_log_level_is_one_line() -> None:
    """A node whose jail does not start (here: a test-only keystore served without
    OPENRED_JAIL_INSECURE_TEST_KDF, which the jail's message did not name — `openred` has no
    --insecure-test-kdf) logged a 30-line traceback before its error line, where the directory
    logs one line; OPENRED_LOG_LEVEL=bogus was a ValueError traceback."""
    root = short_dir()
    with network(root) as net:
        net.directory_key = "PKQ1yLMr6W6wCGTapSUzkElojDYEehRbKcEiinBJLTM"
        net.directory_port = free_port()
        net.init_node("a")
        plain = {**net.env}
        del plain["OPENRED_JAIL_INSECURE_TEST_KDF"]
        result = _serve_again(net.__class__(net.root, plain), "node", "serve", "--data-dir",
                              str(root / "a"))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "OPENRED_JAIL_INSECURE_TEST_KDF" in result.stderr, result.stderr
        assert "the node cannot start: the jail did not become ready" in result.stderr
        bad = {**net.env, "OPENRED_LOG_LEVEL": "bogus"}
        result = _serve_again(net.__class__(net.root, bad), "node", "serve", "--data-dir",
                              str(root / "a"))
        assert "OPENRED_LOG_LEVEL" in _one_line(result)


async def test_the_admin_api_names_a_failed_module_and_an_unknown_route() -> None:
    from quart import Quart

    from openred.modules import LoadReport
    from openred.node.admin import create_admin_app, explain_missing_routes

    app = create_admin_app(Quart("node"), "key")
    explain_missing_routes(app, LoadReport(failed={"authentication": "ImportError: qrcode"},
                                           not_enabled=["monitoring"]))
    client = app.test_client()
    headers = {"Authorization": "Bearer key"}
    for path, slug, words in (
        ("/admin/v1/authentication/status", "module-failed", "ImportError: qrcode"),
        ("/admin/v1/metrics", "module-not-enabled", "monitoring module is not enabled"),
        ("/admin/v1/nothing", "not-found", "no route GET /admin/v1/nothing"),
    ):
        answer = await client.get(path, headers=headers)
        problem = await answer.get_json()
        assert answer.status_code == 404, problem
        assert answer.content_type == "application/problem+json"
        assert problem["type"] == f"urn:openred:problem:{slug}" and words in problem["detail"]
    # the bearer key is still checked first
    assert (await client.get("/admin/v1/metrics")).status_code == 401
