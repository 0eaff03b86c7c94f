"""The node's settings: environment over the data directory's .env, parsed strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from openred.crypto.identity import SignKey
from openred.errors import ConfigurationError
from openred.modules.authentication.service import ProofBudget
from openred.node.settings import DEFAULT_MAX_BODY, NodeSettings
from openred.ratelimit import Allowance
from openred.settings import MAX_INTEGER, write_env_file

KEY = SignKey(bytes(range(32))).b64url()


def test_defaults_and_the_env_file(tmp_path: Path) -> None:
    write_env_file(tmp_path / ".env", {"OPENRED_DIRECTORY_URL": "http://dir.example/",
                                       "OPENRED_DIRECTORY_KEY": KEY})
    settings = NodeSettings.load(tmp_path, environ={"OPENRED_MODULES": "messaging, notes"})
    assert settings.port == 8710 and settings.max_body_bytes == DEFAULT_MAX_BODY
    assert settings.directory_url == "http://dir.example"
    assert settings.directory_sign_key.raw == bytes(range(32))
    assert settings.modules == ("messaging", "notes")
    assert settings.session_lifetime == 86400
    assert settings.base_url == "http://127.0.0.1:8710"
    assert settings.disk_reserve == 64 << 20
    assert (settings.peer_messages_per_hour, settings.peer_message_bytes_per_hour) == (
        100_000, 1 << 30)
    assert settings.peer_proofs_per_minute == 60
    tight = NodeSettings.load(tmp_path, environ={
        "OPENRED_DISK_RESERVE": "0", "OPENRED_PEER_MESSAGES_PER_HOUR": "10",
        "OPENRED_PEER_MESSAGE_BYTES_PER_HOUR": "65536", "OPENRED_PEER_PROOFS_PER_MINUTE": "5"})
    assert (tight.disk_reserve, tight.peer_messages_per_hour,
            tight.peer_message_bytes_per_hour, tight.peer_proofs_per_minute) == (0, 10, 65536, 5)


@pytest.mark.parametrize(("environ", "match"), [
    ({"OPENRED_MODULES": "messaging, ../x"}, "module"),
    ({"OPENRED_SESSION_LIFETIME": "10"}, "SESSION_LIFETIME"),
    ({"OPENRED_LIFECYCLE_INTERVAL": "soon"}, "LIFECYCLE_INTERVAL"),
    ({"OPENRED_DISK_RESERVE": "-1"}, "DISK_RESERVE"),
    ({"OPENRED_PEER_MESSAGES_PER_HOUR": "0"}, "PEER_MESSAGES_PER_HOUR"),
    ({"OPENRED_PEER_PROOFS_PER_MINUTE": "0"}, "PEER_PROOFS_PER_MINUTE"),
    # Below the largest message's text, that message could never be logged.
    ({"OPENRED_PEER_MESSAGE_BYTES_PER_HOUR": "65535"}, "PEER_MESSAGE_BYTES_PER_HOUR"),
])
def test_malformed_values_are_refused(tmp_path: Path, environ: dict[str, str],
                                      match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        NodeSettings.load(tmp_path, environ=environ)


@pytest.mark.parametrize("key", ["", "not-a-key", "AAAA"])
def test_the_pinned_directory_key_must_be_a_key(tmp_path: Path, key: str) -> None:
    settings = NodeSettings.load(tmp_path, environ={"OPENRED_DIRECTORY_KEY": key})
    with pytest.raises(ConfigurationError, match="OPENRED_DIRECTORY_KEY"):
        _ = settings.directory_sign_key


@pytest.mark.parametrize("name", ["PEER_PROOFS_PER_MINUTE", "PEER_MESSAGES_PER_HOUR",
                                  "PEER_MESSAGE_BYTES_PER_HOUR"])
def test_a_budget_no_float_can_hold_is_refused_at_load(tmp_path: Path, name: str) -> None:
    """A budget of 400 digits parsed as an integer, then the per-peer budget built from it
    (``limit / window``) raised OverflowError: a traceback when the node built its modules, not
    the one-line error every other bad setting gets. The largest accepted budget works."""
    with pytest.raises(ConfigurationError, match=name):
        NodeSettings.load(tmp_path, environ={f"OPENRED_{name}": "9" * 400})
    largest = NodeSettings.load(tmp_path, environ={f"OPENRED_{name}": str(MAX_INTEGER)})
    budget = ProofBudget(largest.peer_proofs_per_minute)
    budget.charge("a" * 32, 1.0)
    Allowance(largest.peer_messages_per_hour, 3600.0).take("a" * 32, 1.0)
    Allowance(largest.peer_message_bytes_per_hour, 3600.0).take("a" * 32, 1.0)
