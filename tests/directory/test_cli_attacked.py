"""``openred directory …`` against an operator's mistakes and a hostile local environment.

Every case runs the real command as a subprocess on real files under ``tmp_path``: what the
operator sees is one line on stderr and exit code 1, never a traceback, and nothing started.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openred.cli", "directory", *args],
        env={**base_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout,
        check=False)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENRED_")}
    return {**env, "OPENRED_JAIL_KDF": "min", "OPENRED_JAIL_INSECURE_TEST_KDF": "1"}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("serve",), ("nodes",), ("key",), ("revoke", "a" * 32)])
def test_a_data_dir_name_with_rich_markup_is_printed_as_it_is(
    tmp_path: Path, command: tuple[str, ...],
) -> None:
    """Errors were printed through Rich's markup: a data directory named ``[/]`` (or anything
    else the operator typed or a variable held) raised MarkupError, a traceback."""
    data = tmp_path / "[/]x[bold]"
    line = one_error_line(cli(*command, "--data-dir", str(data)))
    assert "[/]x[bold]" in line, line


def test_a_setting_with_markup_or_control_characters_is_one_inert_line(tmp_path: Path) -> None:
    line = one_error_line(cli("serve", "--data-dir", str(tmp_path / "d"),
                              env={"OPENRED_SUITE_MODE": "[/x]"}))
    assert "OPENRED_SUITE_MODE" in line and "[/x]" in line, line
    line = one_error_line(cli("revoke", "--data-dir", str(tmp_path / "d"), "\x1b[31mred"))
    assert "\x1b" not in line, repr(line)


def test_a_dotenv_saved_with_a_byte_order_mark_and_crlf_is_read(tmp_path: Path) -> None:
    """An editor on Windows saves ``.env`` as UTF-8 with a BOM and CRLF line ends: its first
    line was "not a KEY=VALUE line", though it looks like one."""
    data = tmp_path / "d"
    data.mkdir()
    (data / ".env").write_bytes(b"\xef\xbb\xbfOPENRED_PORT=eighty\r\nOPENRED_HOST=::1\r\n")
    line = one_error_line(cli("serve", "--data-dir", str(data)))
    assert "OPENRED_PORT='eighty' is not an integer" in line, line


@pytest.mark.parametrize("url", [
    "not a url", "ftp://d.example", "https://", "https://d.example:99999",
    "https://d.example/?x=1", "https://d.example/#f", "https://user@d.example",
    "https://d.example/\x1b[2J",
])
def test_a_public_url_nodes_cannot_sign_for_is_refused_before_serving(
    tmp_path: Path, url: str,
) -> None:
    """``OPENRED_PUBLIC_URL`` is what every signed request's ``@target-uri`` is rebuilt from:
    ``not a url`` served, and refused every signed request as a bad signature."""
    line = one_error_line(cli("serve", "--data-dir", str(tmp_path / "d"),
                              env={"OPENRED_PUBLIC_URL": url}))
    assert "OPENRED_PUBLIC_URL" in line and "not initialized" not in line, line
    assert "\x1b" not in line, repr(line)


def test_init_refuses_a_public_url_before_creating_anything(tmp_path: Path) -> None:
    data = tmp_path / "d"
    line = one_error_line(cli("init", "--data-dir", str(data), "--public-url", "d.example"))
    assert "--public-url" in line or "OPENRED_PUBLIC_URL" in line, line
    assert not data.exists() or not any(data.iterdir()), list(data.iterdir())


def test_a_sound_public_url_with_a_path_is_accepted(tmp_path: Path) -> None:
    line = one_error_line(cli("serve", "--data-dir", str(tmp_path / "d"),
                              env={"OPENRED_PUBLIC_URL": "https://d.example:8443/openred/"}))
    assert "not initialized" in line, line


@pytest.mark.parametrize("mode", [0o777, 0o703, 0o1777])
def test_a_world_writable_data_dir_is_refused(tmp_path: Path, mode: int) -> None:
    """Anyone may replace the ``.env``, keystore or database of a world-writable data directory
    (a sticky bit still lets them create the files that are not there yet)."""
    data = tmp_path / "d"
    data.mkdir()
    data.chmod(mode)
    for command in (("init", "--port", str(free_port())), ("serve",), ("revoke", "a" * 32)):
        line = one_error_line(cli(*command, "--data-dir", str(data)))
        assert "writable" in line and str(data) in line, line
    assert list(data.iterdir()) == []


def test_the_nodes_table_keeps_each_record_on_its_own_line(tmp_path: Path) -> None:
    """The table printed a record's newline as a line break: an ``api_url`` could draw lines
    that read as more nodes."""
    conn = sqlite3.connect(tmp_path / "openred.db")
    conn.execute("CREATE TABLE directory_nodes (node_id, status, api_url, version, last_seen, "
                 "registered_at)")
    forged = "http://a.example\nzzzzforgedzzzz active http://evil.example"
    conn.execute("INSERT INTO directory_nodes VALUES ('n1', 'active', ?, 1, 1, 1)", (forged,))
    conn.commit()
    conn.close()
    result = cli("nodes", "--data-dir", str(tmp_path), env={"COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "zzzzforgedzzzz" in line]
    assert lines and all("a.example" in line for line in lines), result.stdout


@pytest.mark.parametrize("group", ["directory", "node"])
def test_init_on_a_dangling_symlink_is_one_line(tmp_path: Path, group: str) -> None:
    """``mkdir(exist_ok=True)`` raises FileExistsError for a link to a missing directory: init
    ended in a traceback ("File exists"), as it did for any directory it could not create."""
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "gone")
    args = ["init", "--data-dir", str(link)]
    if group == "node":
        args += ["--directory", "http://127.0.0.1:1", "--directory-key", "A" * 43,
                 "--api-url", "http://127.0.0.1:2", "--allow-private-urls"]
    result = subprocess.run([sys.executable, "-m", "openred.cli", group, *args],
                            env=base_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    line = one_error_line(result)
    assert str(link) in line and "gone" in line, line
    assert not (tmp_path / "gone").exists()


def test_port_0_without_a_public_url_is_refused(tmp_path: Path) -> None:
    """Port 0 served on a random port and announced ``http://127.0.0.1:0``: the @target-uri
    every signed request is checked against, which no node could sign for."""
    data = tmp_path / "d"
    for args, env in ((("serve", "--port", "0"), {}), (("serve",), {"OPENRED_PORT": "0"}),
                      (("init", "--port", "0"), {})):
        line = one_error_line(cli(*args, "--data-dir", str(data), env=env))
        assert "port 0" in line and "OPENRED_PUBLIC_URL" in line, line
    assert not data.exists() or not any(data.iterdir())
    line = one_error_line(cli("serve", "--port", "0", "--data-dir", str(data),
                              env={"OPENRED_PUBLIC_URL": "https://d.example"}))
    assert "not initialized" in line, line


def test_an_empty_environment_variable_does_not_mask_the_dotenv(tmp_path: Path) -> None:
    """``OPENRED_PUBLIC_URL=`` in the environment (a compose file's ``${PUBLIC_URL}`` with
    nothing behind it, a unit's ``Environment=OPENRED_PUBLIC_URL=``) replaced the ``.env``'s
    public URL with the default ``http://HOST:PORT``: a directory every node's signatures
    failed on. Empty means "not given", in the environment as in the file."""
    from openred.settings import DirectorySettings

    data = tmp_path / "d"
    data.mkdir()
    (data / ".env").write_text("OPENRED_PUBLIC_URL=https://d.example\nOPENRED_PORT=0\n")
    env = {"OPENRED_PUBLIC_URL": ""}
    line = one_error_line(cli("serve", "--data-dir", str(data), env=env))
    assert "not initialized" in line, line  # not "port 0 …": the public URL still counts
    settings = DirectorySettings.load(data, environ=env)
    assert (settings.base_url, settings.port) == ("https://d.example", 0)


def test_an_init_that_failed_after_creating_the_keystore_can_be_run_again(
    tmp_path: Path,
) -> None:
    """An init stopped between its keystore and its log (a jail socket it could not bind,
    Ctrl-C while the jail derives its key) left a keystore and no database: the next init said
    "exists already: this directory is initialized", while `key` and `nodes` said "run
    `openred directory init`". Init now finishes such a directory with the keystore it holds;
    one whose log has a key is still refused."""
    data = tmp_path / "d"
    port = str(free_port())
    bad = {"OPENRED_JAIL_SOCKET": str(tmp_path / ("s" * 120))}
    first = one_error_line(cli("init", "--data-dir", str(data), "--port", port, env=bad))
    assert "too long" in first, first
    assert (data / "keystore.json").is_file() and not (data / "openred.db").exists()
    again = cli("init", "--data-dir", str(data), "--port", port, "--allow-private-urls")
    assert again.returncode == 0, again.stderr
    key = again.stdout.strip().splitlines()[-1]
    assert cli("key", "--data-dir", str(data)).stdout.strip() == key
    assert "OPENRED_ALLOW_PRIVATE_URLS=1" in (data / ".env").read_text()
    third = one_error_line(cli("init", "--data-dir", str(data), "--port", port))
    assert "initialized" in third, third
    # A log lost after it began is no interrupted init: its witness names a checkpoint.
    env_file = (data / ".env").read_text()
    for lost in data.glob("openred.db*"):
        lost.unlink()
    fourth = one_error_line(cli("init", "--data-dir", str(data), "--port", "1"))
    assert "initialized" in fourth, fourth
    assert (data / ".env").read_text() == env_file


@pytest.mark.parametrize("value", ["8_700", "\uff18\uff17\uff10\uff10", "0x10", "1e3", "+-1",
                                   "9" * 5000])
def test_an_integer_setting_is_ascii_digits_only(tmp_path: Path, value: str) -> None:
    """``int()`` reads ``8_700`` and full-width digits: a typo or a pasted value became a
    number the operator never wrote."""
    line = one_error_line(cli("serve", "--data-dir", str(tmp_path / "d"),
                              env={"OPENRED_PORT": value}))
    assert "OPENRED_PORT" in line and "not an integer" in line, line
    assert len(line) < 300, len(line)  # the value is clipped, not echoed whole


def test_padded_integers_and_never_are_read(tmp_path: Path) -> None:
    line = one_error_line(cli("serve", "--data-dir", str(tmp_path / "d"),
                              env={"OPENRED_PORT": " 8701 ", "OPENRED_EXPIRE_AFTER": " Never "}))
    assert "not initialized" in line, line


def test_key_and_nodes_refuse_a_nodes_data_dir(tmp_path: Path) -> None:
    """`openred directory key --data-dir NODE_DIR` printed the node's key as if it were a
    directory's: an operator who mixed up two data directories handed nodes the wrong key to
    pin. `nodes` said "no such table: directory_nodes"."""
    import asyncio

    from tests.vectors import make_fixtures as mf

    asyncio.run(mf.build_closed_log(tmp_path / "openred.db"))
    for command in ("key", "nodes"):
        line = one_error_line(cli(command, "--data-dir", str(tmp_path)))
        assert "node log" in line and "directory" in line, line


def test_a_world_writable_node_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "n"
    data.mkdir()
    data.chmod(0o777)
    for args in (["init", "--directory", "http://127.0.0.1:1", "--directory-key", "A" * 43,
                  "--api-url", "http://127.0.0.1:2", "--allow-private-urls"], ["serve"]):
        result = subprocess.run(
            [sys.executable, "-m", "openred.cli", "node", *args, "--data-dir", str(data)],
            env=base_env(), capture_output=True, text=True, timeout=60, check=False)
        line = one_error_line(result)
        assert "writable" in line and str(data) in line, line
    assert list(data.iterdir()) == []
