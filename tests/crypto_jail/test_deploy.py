"""The systemd unit we ship runs the jail as its own user with the passphrase as a credential,
and its command line, run as written, starts a jail that serves."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_jail.keystore import create_keystore
from tests.crypto_jail.test_server import (
    JailProc,
    RawClient,
    jail_env,
    short_dir,
    spawn_jail,
)

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "openred-jail@.service"
PASSPHRASE = b"a deployment passphrase"
NOBODY = 65534


def _unit() -> configparser.ConfigParser:
    text = UNIT.read_text().replace("\\\n", " ")
    parser = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(text)
    return parser


def _exec_start() -> list[str]:
    return shlex.split(_unit()["Service"]["ExecStart"])


def _serve_options(argv: list[str]) -> list[str]:
    """The options after ``serve`` but the two ``spawn_jail`` passes itself."""
    rest = argv[5:]
    for option in ("--keystore", "--socket"):
        del rest[rest.index(option):rest.index(option) + 2]
    return rest


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_the_unit_runs_the_jail_as_its_own_user_with_a_credential() -> None:
    service = _unit()["Service"]
    assert service["User"] not in {"root", "openred", "0"}
    credential, _, source = service["LoadCredential"].partition(":")
    argv = _exec_start()
    assert argv[argv.index("--passphrase-credential") + 1] == credential
    assert source.startswith("/etc/") and "%i" in source
    # The passphrase never appears on the command line or in the environment.
    assert not any(arg.startswith(("--passphrase-file", "--passphrase-fd")) for arg in argv)
    assert "Environment" not in service and "EnvironmentFile" not in service
    assert "--exit-on-stdin-eof" not in argv and "--no-seccomp" not in argv
    assert "--insecure-test-kdf" not in argv
    # The socket lives in the RuntimeDirectory, shared with the node's group only.
    socket = argv[argv.index("--socket") + 1]
    assert socket == f"%t/{service['RuntimeDirectory']}/jail.sock"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert argv[argv.index("--socket-group") + 1] == service["Group"]
    keystore = argv[argv.index("--keystore") + 1]
    assert keystore == f"%S/{service['StateDirectory']}/keystore.json"
    assert service["StateDirectoryMode"] == "0700"
    assert service["Restart"] == "on-failure"  # systemd restarts it, never the node
    assert service["LimitCORE"] == "0" and service["NoNewPrivileges"] == "yes"
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    assert "PrivateUsers" not in service  # it would defeat the SO_PEERCRED check


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(workdir: Path) -> None:
    text = UNIT.read_text().replace("/opt/openred/venv/bin/python", sys.executable)
    copy = workdir / "openred-jail@alice.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60, check=False)
    # Only complaints about this unit count (a host without a running systemd adds its own).
    assert "openred-jail" not in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the socket a group")
def test_the_units_command_line_serves_with_the_credential(workdir: Path) -> None:
    state, run = workdir / "state" / "openred-jail" / "alice", workdir / "run" / "openred-jail"
    state.mkdir(parents=True, mode=0o700)
    (run / "alice").mkdir(parents=True, mode=0o750)
    os.chown(run / "alice", -1, NOBODY)  # the unit's Group= is "openred"; here: nogroup
    made = create_keystore(state / "keystore.json", PASSPHRASE, kdf_level="interactive")
    credentials = workdir / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "passphrase").write_bytes(PASSPHRASE)
    argv = [arg.replace("%S", str(workdir / "state")).replace("%t", str(workdir / "run"))
            .replace("%i", "alice") for arg in _exec_start()]
    argv[argv.index("--socket-group") + 1] = "nogroup"
    argv[argv.index("--allow-user") + 1] = "nobody"
    assert argv[:5] == ["/opt/openred/venv/bin/python", "-I", "-m", "crypto_jail", "serve"]
    keystore = Path(argv[argv.index("--keystore") + 1])
    socket = Path(argv[argv.index("--socket") + 1])
    proc: JailProc = spawn_jail(keystore, socket, *_serve_options(argv), test_kdf=False,
                                env=jail_env(CREDENTIALS_DIRECTORY=str(credentials)))
    try:
        client = RawClient(proc.socket_path)
        assert client.result("public_keys")["node_id"] == made.node_id
        client.close()
        assert "Landlock" in proc.stderr()
        assert (state / "witness").is_file()
    finally:
        proc.stop()


# -- the directory's jail: deploy/systemd/openred-directory-jail.service ----------------------

DIRECTORY_JAIL_UNIT = UNIT.with_name("openred-directory-jail.service")
DIRECTORY_UNIT = UNIT.with_name("openred-directory.service")


def _parse(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(path.read_text().replace("\\\n", " "))
    return parser


def _environment(path: Path) -> dict[str, str]:
    # configparser keeps the last of repeated keys only: read every Environment= line.
    lines = path.read_text().splitlines()
    pairs = [line.split("=", 1)[1] for line in lines if line.startswith("Environment=")]
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_directory_jail_runs_as_its_own_user_and_keeps_the_witness() -> None:
    jail = _parse(DIRECTORY_JAIL_UNIT)["Service"]
    directory = _parse(DIRECTORY_UNIT)
    service = directory["Service"]
    # The jail's user is neither the directory's nor a node's jail user: no process of the
    # directory's uid can write the keystore or the witness, or signal the jail.
    assert jail["User"] not in {"root", "0", "openred", "openred-jail", service["User"]}
    argv = shlex.split(jail["ExecStart"])
    assert argv[:5] == ["/opt/openred/venv/bin/python", "-I", "-m", "crypto_jail", "serve"]
    state = f"%S/{jail['StateDirectory']}"
    assert argv[argv.index("--keystore") + 1] == f"{state}/keystore.json"
    assert argv[argv.index("--witness-file") + 1] == f"{state}/witness"
    assert jail["StateDirectoryMode"] == "0700"
    credential, _, source = jail["LoadCredential"].partition(":")
    assert argv[argv.index("--passphrase-credential") + 1] == credential
    assert source.startswith("/etc/")
    assert not any(arg.startswith(("--passphrase-file", "--passphrase-fd")) for arg in argv)
    assert "Environment" not in jail and "EnvironmentFile" not in jail
    assert not {"--exit-on-stdin-eof", "--no-seccomp", "--insecure-test-kdf"} & set(argv)
    # The socket: in the RuntimeDirectory, 0750 with the directory's group, for its user only.
    socket = argv[argv.index("--socket") + 1]
    assert socket == f"%t/{jail['RuntimeDirectory']}/jail.sock"
    assert jail["RuntimeDirectoryMode"] == "0750"
    assert argv[argv.index("--socket-group") + 1] == jail["Group"] == service["Group"]
    assert argv[argv.index("--allow-user") + 1] == service["User"]
    assert jail["Restart"] == "on-failure"  # systemd restarts it, never the directory
    assert jail["LimitCORE"] == "0" and jail["NoNewPrivileges"] == "yes"
    assert jail["RestrictAddressFamilies"] == "AF_UNIX" and "PrivateUsers" not in jail
    # The directory: that socket, no passphrase, no keystore of its own; started after the jail.
    env = _environment(DIRECTORY_UNIT)
    assert env["OPENRED_JAIL_SOCKET"] == socket.replace("%t", "/run")
    assert not any("PASSPHRASE" in name for name in env)
    assert "LoadCredential" not in service and "LoadCredentialEncrypted" not in service
    unit = directory["Unit"]
    assert DIRECTORY_JAIL_UNIT.name in unit["Requires"].split()
    assert DIRECTORY_JAIL_UNIT.name in unit["After"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_directory_units(workdir: Path) -> None:
    openred = Path(sys.executable).with_name("openred")
    for unit in (DIRECTORY_JAIL_UNIT, DIRECTORY_UNIT):
        text = (unit.read_text().replace("/opt/openred/venv/bin/python", sys.executable)
                .replace("/opt/openred/venv/bin/openred", str(openred)))
        (workdir / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(workdir / u.name)
                                        for u in (DIRECTORY_JAIL_UNIT, DIRECTORY_UNIT))],
        capture_output=True, text=True, timeout=60, check=False)
    assert "openred-directory" not in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the socket a group")
def test_the_directory_jail_units_command_line_serves_and_witnesses(workdir: Path) -> None:
    name = _parse(DIRECTORY_JAIL_UNIT)["Service"]["StateDirectory"]
    state, run = workdir / "state" / name, workdir / "run" / name
    state.mkdir(parents=True, mode=0o700)
    run.mkdir(parents=True, mode=0o750)
    os.chown(run, -1, NOBODY)  # the unit's Group= is the directory's; here: nogroup
    made = create_keystore(state / "keystore.json", PASSPHRASE, kdf_level="interactive")
    credentials = workdir / "credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "passphrase").write_bytes(PASSPHRASE)
    argv = [arg.replace("%S", str(workdir / "state")).replace("%t", str(workdir / "run"))
            for arg in shlex.split(_parse(DIRECTORY_JAIL_UNIT)["Service"]["ExecStart"])]
    argv[argv.index("--socket-group") + 1] = "nogroup"
    argv[argv.index("--allow-user") + 1] = "nobody"
    keystore = Path(argv[argv.index("--keystore") + 1])
    socket = Path(argv[argv.index("--socket") + 1])
    proc: JailProc = spawn_jail(keystore, socket, *_serve_options(argv), test_kdf=False,
                                env=jail_env(CREDENTIALS_DIRECTORY=str(credentials)))
    client = RawClient(proc.socket_path)
    try:
        assert client.result("public_keys")["node_id"] == made.node_id
        answer = client.result("witnessed", {"origin": f"openred/{made.node_id}"})
        assert answer["witness"] is True and answer["file"] == str(state / "witness")
        assert (state / "witness").is_file()
    finally:
        client.close()
        proc.stop()
