"""Settings: OPENRED_* variables over the data directory's .env, parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from openred.errors import ConfigurationError
from openred.settings import DirectorySettings, ServiceSettings, read_env_file, write_env_file


def test_defaults_env_file_and_environment_precedence(tmp_path: Path) -> None:
    s = DirectorySettings.load(tmp_path, environ={})
    assert (s.host, s.port, s.expire_after, s.stale_after) == ("127.0.0.1", 8700, 86400, 120)
    assert s.base_url == "http://127.0.0.1:8700"
    write_env_file(tmp_path / ".env", {"OPENRED_PORT": "9000", "OPENRED_EXPIRE_AFTER": "never",
                                       "OPENRED_HEARTBEAT_INTERVAL": "5"}, header="test")
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    s = DirectorySettings.load(tmp_path, environ={"OPENRED_PORT": "9100"})
    assert (s.port, s.expire_after, s.stale_after) == (9100, None, 10)
    s = DirectorySettings.load(tmp_path, environ={"OPENRED_PUBLIC_URL": "https://d.example/"})
    assert s.base_url == "https://d.example"
    assert ServiceSettings.load(tmp_path, environ={}).port == 9000


@pytest.mark.parametrize("env", [
    {"OPENRED_PORT": "eighty"},
    {"OPENRED_ALLOW_PRIVATE_URLS": "maybe"},
    {"OPENRED_SUITE_MODE": "daily"},
    {"OPENRED_SUITE_MODE": "seeded"},
    {"OPENRED_SUITE_SEED": "zz"},
    {"OPENRED_STALE_AFTER": "100", "OPENRED_EXPIRE_AFTER": "50"},
    {"OPENRED_SIGNATURE_WINDOW": "0"},
])
def test_malformed_values_name_the_variable(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        DirectorySettings.load(tmp_path, environ=env)


def test_env_file_syntax(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# comment\nexport OPENRED_HOST='0.0.0.0'\n\nOPENRED_PORT = \"81\"\n")
    assert read_env_file(path) == {"OPENRED_HOST": "0.0.0.0", "OPENRED_PORT": "81"}
    path.write_text("not a line\n")
    with pytest.raises(ConfigurationError, match=":1:"):
        read_env_file(path)
    assert read_env_file(tmp_path / "missing") == {}
