"""Today's settings rules reviewed (mreview): what "an empty value is not given" must not do."""

from __future__ import annotations

from pathlib import Path

import pytest

from openred.settings import DirectorySettings


@pytest.mark.parametrize(("name", "field"), [
    ("OPENRED_ALLOW_PRIVATE_URLS", "allow_private_urls"),
    ("OPENRED_JAIL_NO_SECCOMP", "jail_no_seccomp"),
])
def test_an_empty_flag_in_the_environment_still_switches_the_dotenv_flag_off(
    tmp_path: Path, name: str, field: str,
) -> None:
    """A flag the ``.env`` turns on (``init --allow-private-urls`` writes ``1``) blanked in the
    environment (``Environment=OPENRED_ALLOW_PRIVATE_URLS=``, a compose file's empty
    ``${VAR}``): an empty flag has always read as off (``_FALSE`` holds ""). With "empty is not
    given" the ``.env``'s 1 came back: the SSRF guard on node URLs, or seccomp, off while the
    operator's environment said off. A flag fails safe: empty in the environment is off."""
    data = tmp_path / "d"
    data.mkdir(mode=0o700)
    (data / ".env").write_text(f"{name}=1\n")
    assert getattr(DirectorySettings.load(data, environ={}), field) is True
    assert getattr(DirectorySettings.load(data, environ={name: ""}), field) is False
    assert getattr(DirectorySettings.load(data, environ={name: "0"}), field) is False


@pytest.mark.parametrize("url", ["http://[::1", "http://[not-an-address]:8700"])
@pytest.mark.parametrize("command", ["init", "serve"])
def test_a_public_url_urlsplit_cannot_read_is_one_error_line(
    tmp_path: Path, url: str, command: str,
) -> None:
    """The public URL check read the value with ``urlsplit``, which raises ValueError itself on
    a bracketed host that is not an IPv6 address: a traceback, not one error line."""
    from tests.directory.test_cli_attacked import cli, one_error_line

    data = tmp_path / "d"
    line = one_error_line(cli(command, "--data-dir", str(data),
                              env={"OPENRED_PUBLIC_URL": url}))
    assert "OPENRED_PUBLIC_URL" in line, line
    assert not data.exists()


@pytest.mark.parametrize("option", ["--directory", "--api-url"])
def test_node_init_with_a_url_urlsplit_cannot_read_is_one_error_line(
    tmp_path: Path, option: str,
) -> None:
    """The same ValueError from ``openred node init``'s own URL checks: a traceback."""
    import subprocess
    import sys

    from tests.directory.test_cli_attacked import base_env, one_error_line

    data = tmp_path / "n"
    args = {"--directory": "http://127.0.0.1:1", "--api-url": "http://127.0.0.1:2",
            option: "http://[::1"}
    result = subprocess.run(
        [sys.executable, "-m", "openred.cli", "node", "init", "--data-dir", str(data),
         "--directory-key", "x", *(item for pair in args.items() for item in pair)],
        env=base_env(), capture_output=True, text=True, timeout=60, check=False)
    line = one_error_line(result)
    assert option in line, line
    assert not data.exists()
