"""The keystore file and the ``init`` / ``serve`` commands that create and open it."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_jail.errors import KeystoreError
from crypto_jail.keystore import (
    MIN_PASSPHRASE,
    Keystore,
    create_keystore,
    decode_keystore,
    encode_keystore,
    load_keystore,
    node_id_for,
)
from tests.crypto_jail.test_server import (
    RawClient,
    dev_keystore,
    jail_env,
    run_jail_cli,
    short_dir,
    spawn_jail,
)

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = short_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# --- the file format, in process -------------------------------------------------------------


def test_encrypted_roundtrip_and_file_mode(workdir: Path) -> None:
    path = workdir / "ks.json"
    made = create_keystore(path, PASSPHRASE, kdf_level="min", test_only=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    opened = load_keystore(path, PASSPHRASE, allow_test_only=True)
    assert opened.public_info() == made.public_info()
    assert opened.wrap_key == made.wrap_key
    assert not opened.insecure
    text = path.read_text()
    for secret in (bytes(made.signing_key), bytes(made.box_private), made.wrap_key):
        assert secret.hex() not in text
    assert json.loads(text)["public"] == made.public_info()
    assert [p.name for p in workdir.iterdir()] == ["ks.json"]  # no temp file left behind


def test_node_id_is_base32_of_sha256_prefix() -> None:
    keystore = Keystore.generate()
    node_id = node_id_for(keystore.sign_public)
    assert len(node_id) == 32 and node_id == node_id.lower()
    assert keystore.public_info()["node_id"] == node_id


def test_repr_shows_no_secret() -> None:
    keystore = Keystore.generate()
    text = repr(keystore)
    assert bytes(keystore.signing_key).hex() not in text
    assert "SigningKey" not in text and "wrap_key" not in text


def test_wrong_passphrase(workdir: Path) -> None:
    path = workdir / "ks.json"
    create_keystore(path, PASSPHRASE, kdf_level="min", test_only=True)
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        load_keystore(path, b"wrong", allow_test_only=True)
    with pytest.raises(KeystoreError, match="passphrase is needed"):
        load_keystore(path, None, allow_test_only=True)


def _doc(workdir: Path) -> dict[str, object]:
    path = workdir / "ks.json"
    create_keystore(path, PASSPHRASE, kdf_level="min", test_only=True)
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def _tampered_ciphertext(doc: dict[str, object]) -> None:
    text = str(doc["ciphertext"])
    doc["ciphertext"] = ("B" if text[10] == "A" else "A").join((text[:10], text[11:]))


def _swapped_public(doc: dict[str, object]) -> None:
    public = dict(doc["public"])  # type: ignore[call-overload]
    public["box_key"] = Keystore.generate().public_info()["box_key"]
    doc["public"] = public


def _huge_memlimit(doc: dict[str, object]) -> None:
    kdf = dict(doc["kdf"])  # type: ignore[call-overload]
    kdf["memlimit"] = 2**40
    doc["kdf"] = kdf


def _other_salt(doc: dict[str, object]) -> None:
    kdf = dict(doc["kdf"])  # type: ignore[call-overload]
    kdf["salt"] = "A" * 22
    doc["kdf"] = kdf


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_tampered_ciphertext, "wrong passphrase or damaged"),
        (_swapped_public, "public keys do not match"),
        (_huge_memlimit, "out of range"),
        (_other_salt, "wrong passphrase or damaged"),
        (lambda d: d.update(version=2), "unsupported keystore version"),
        (lambda d: d.update(format="other"), "not an OpenRed jail keystore"),
        (lambda d: d.update(protection="rot13"), "unknown protection"),
        (lambda d: d.pop("ciphertext"), "ciphertext"),
    ],
)
def test_tampered_keystore_is_refused(workdir: Path, tamper: object, message: str) -> None:
    doc = _doc(workdir)
    tamper(doc)  # type: ignore[operator]
    with pytest.raises(KeystoreError, match=message):
        decode_keystore(json.dumps(doc).encode(), PASSPHRASE, allow_test_only=True)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff", b"null"])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(KeystoreError):
        decode_keystore(data, PASSPHRASE, allow_test_only=True)


def test_insecure_roundtrip_and_tampering() -> None:
    keystore = Keystore.generate(insecure=True)
    data = encode_keystore(keystore, None)
    opened = decode_keystore(data, None)
    assert opened.insecure and opened.public_info() == keystore.public_info()
    doc = json.loads(data)
    doc["secrets"]["sign_seed"] = doc["secrets"]["box_private"]
    with pytest.raises(KeystoreError, match="public keys do not match"):
        decode_keystore(json.dumps(doc).encode(), None)


def test_refuses_to_overwrite(workdir: Path) -> None:
    path = workdir / "ks.json"
    first = create_keystore(path, None)
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        create_keystore(path, None)
    assert load_keystore(path, None, allow_test_only=True).public_info() == first.public_info()


def test_missing_keystore(workdir: Path) -> None:
    with pytest.raises(KeystoreError, match="no keystore"):
        load_keystore(workdir / "absent.json", None)


# --- the commands ----------------------------------------------------------------------------


def test_init_then_serve_gives_the_printed_keys(workdir: Path) -> None:
    passphrase_file = workdir / "pass"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    keystore = workdir / "ks.json"
    made = run_jail_cli("init", "--keystore", str(keystore),
                        "--passphrase-file", str(passphrase_file), "--json")
    assert made.returncode == 0, made.stderr
    printed = json.loads(made.stdout)
    assert set(printed) == {"sign_key", "box_key", "node_id"}
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert "WARNING" not in made.stderr
    # serve with the passphrase from the environment this time
    proc = spawn_jail(keystore, workdir / "s" / "j.sock",
                      env=jail_env(OPENRED_JAIL_PASSPHRASE=PASSPHRASE.decode()))
    try:
        client = RawClient(proc.socket_path)
        assert client.result("public_keys") == printed
        client.close()
        assert "INSECURE" not in proc.stderr()
    finally:
        proc.stop()


def test_init_prints_public_keys_only(workdir: Path) -> None:
    made = run_jail_cli("init", "--keystore", str(workdir / "ks.json"), "--insecure-no-passphrase")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["node_id", "sign_key", "box_key"]
    secrets = json.loads((workdir / "ks.json").read_text())["secrets"]
    for value in secrets.values():
        assert value not in made.stdout + made.stderr


def test_wrong_passphrase_is_a_clear_error_without_traceback(workdir: Path) -> None:
    keystore = workdir / "ks.json"
    create_keystore(keystore, PASSPHRASE, kdf_level="min", test_only=True)
    wrong = workdir / "wrong"
    wrong.write_bytes(b"not it\n")
    result = run_jail_cli("serve", "--keystore", str(keystore), "--passphrase-file", str(wrong),
                          "--socket", str(workdir / "s" / "j.sock"))
    assert result.returncode == 1
    assert "wrong passphrase" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    no_passphrase = run_jail_cli("serve", "--keystore", str(keystore),
                                 "--socket", str(workdir / "s" / "j.sock"))
    assert no_passphrase.returncode == 1
    assert "passphrase is needed" in no_passphrase.stderr


def test_dev_mode_warns_at_init_and_at_every_serve(workdir: Path) -> None:
    keystore = workdir / "ks.json"
    made = run_jail_cli("init", "--keystore", str(keystore), "--insecure-no-passphrase")
    assert made.returncode == 0
    assert "INSECURE DEVELOPMENT KEYSTORE" in made.stderr
    for attempt in range(2):
        proc = spawn_jail(keystore, workdir / "s" / f"j{attempt}.sock")
        try:
            assert "INSECURE DEVELOPMENT KEYSTORE" in proc.stderr()
        finally:
            proc.stop()


def test_init_refuses_overwrite_and_missing_passphrase(workdir: Path) -> None:
    keystore = workdir / "ks.json"
    assert run_jail_cli("init", "--keystore", str(keystore),
                        "--insecure-no-passphrase").returncode == 0
    before = keystore.read_bytes()
    again = run_jail_cli("init", "--keystore", str(keystore), "--insecure-no-passphrase")
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert keystore.read_bytes() == before
    none = run_jail_cli("init", "--keystore", str(workdir / "other.json"))
    assert none.returncode == 1
    assert "no passphrase" in none.stderr
    assert not (workdir / "other.json").exists()


def test_there_is_no_passphrase_argument(workdir: Path) -> None:
    result = run_jail_cli("init", "--keystore", str(workdir / "ks.json"), "--passphrase", "x")
    assert result.returncode == 2
    assert not (workdir / "ks.json").exists()


# --- keystore policy -------------------------------------------------------------------------


def test_a_clear_keystore_is_refused_when_a_passphrase_is_given(workdir: Path) -> None:
    keystore, _ = dev_keystore(workdir)
    with pytest.raises(KeystoreError, match="NOT encrypted"):
        load_keystore(keystore, PASSPHRASE)
    given = workdir / "pass"
    given.write_bytes(PASSPHRASE)
    result = run_jail_cli("serve", "--keystore", str(keystore), "--passphrase-file", str(given),
                          "--socket", str(workdir / "s" / "j.sock"))
    assert result.returncode == 1 and "NOT encrypted" in result.stderr
    assert not (workdir / "s" / "j.sock").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o610])
def test_a_clear_keystore_looser_than_0600_is_refused(workdir: Path, mode: int) -> None:
    keystore, _ = dev_keystore(workdir)
    keystore.chmod(mode)
    with pytest.raises(KeystoreError, match="0600"):
        load_keystore(keystore, None)
    result = run_jail_cli("serve", "--keystore", str(keystore),
                          "--socket", str(workdir / "s" / "j.sock"))
    assert result.returncode == 1 and "must be 0600" in result.stderr
    keystore.chmod(0o600)
    assert load_keystore(keystore, None).insecure
    keystore.chmod(0o400)
    assert load_keystore(keystore, None).insecure  # stricter is fine


def test_the_test_kdf_needs_an_explicit_flag_and_marks_the_keystore(workdir: Path) -> None:
    path = workdir / "ks.json"
    with pytest.raises(KeystoreError, match="test keystores only"):
        create_keystore(path, PASSPHRASE, kdf_level="min")
    assert not path.exists()
    create_keystore(path, PASSPHRASE, kdf_level="min", test_only=True)
    assert json.loads(path.read_text())["test_only"] is True
    with pytest.raises(KeystoreError, match="test-only"):
        load_keystore(path, PASSPHRASE)
    assert load_keystore(path, PASSPHRASE, allow_test_only=True).node_id


def test_weak_kdf_parameters_are_test_only_even_without_the_mark(workdir: Path) -> None:
    # Dropping the mark from the file does not make a weak keystore a real one.
    path = workdir / "ks.json"
    create_keystore(path, PASSPHRASE, kdf_level="min", test_only=True)
    doc = json.loads(path.read_text())
    del doc["test_only"]
    with pytest.raises(KeystoreError, match="test-only"):
        decode_keystore(json.dumps(doc).encode(), PASSPHRASE)


def test_the_command_line_refuses_the_test_kdf_without_the_flag(workdir: Path) -> None:
    passphrase = workdir / "pass"
    passphrase.write_bytes(PASSPHRASE)
    keystore = workdir / "ks.json"
    refused = run_jail_cli("init", "--keystore", str(keystore), "--passphrase-file",
                           str(passphrase), "--kdf", "min", test_kdf=False)
    assert refused.returncode == 1 and "--insecure-test-kdf" in refused.stderr
    assert not keystore.exists()
    made = run_jail_cli("init", "--keystore", str(keystore), "--passphrase-file",
                        str(passphrase), "--kdf", "min")  # the helper adds the flag
    assert made.returncode == 0, made.stderr
    serve = run_jail_cli("serve", "--keystore", str(keystore), "--passphrase-file",
                         str(passphrase), "--socket", str(workdir / "s" / "j.sock"),
                         test_kdf=False)
    assert serve.returncode == 1 and "test-only" in serve.stderr
    # Test suites that start jails through other programs say so in the environment instead.
    proc = spawn_jail(keystore, workdir / "s" / "e.sock", "--passphrase-file", str(passphrase),
                      test_kdf=False, env=jail_env(OPENRED_JAIL_INSECURE_TEST_KDF="1"))
    proc.stop()
    for value in ("0", "yes", ""):
        refused = run_jail_cli("serve", "--keystore", str(keystore), "--passphrase-file",
                               str(passphrase), "--socket", str(workdir / "s" / "j.sock"),
                               test_kdf=False, env=jail_env(OPENRED_JAIL_INSECURE_TEST_KDF=value))
        assert refused.returncode == 1, value


@pytest.mark.parametrize("length", [0, 1, MIN_PASSPHRASE - 1])
def test_short_passphrases_are_refused(workdir: Path, length: int) -> None:
    path = workdir / "ks.json"
    with pytest.raises(KeystoreError, match="passphrase is"):
        create_keystore(path, b"p" * length, kdf_level="min", test_only=True)
    assert not path.exists()
    passphrase = workdir / "pass"
    passphrase.write_bytes(b"p" * length)
    result = run_jail_cli("init", "--keystore", str(path), "--passphrase-file", str(passphrase))
    assert result.returncode == 1 and not path.exists()
    create_keystore(path, b"p" * MIN_PASSPHRASE, kdf_level="min", test_only=True)


def test_the_passphrase_can_come_from_a_systemd_credential(workdir: Path) -> None:
    keystore = workdir / "ks.json"
    made = create_keystore(keystore, PASSPHRASE, kdf_level="min", test_only=True)
    credentials = workdir / "creds"
    credentials.mkdir(mode=0o700)
    (credentials / "openred-jail-passphrase").write_bytes(PASSPHRASE + b"\n")
    proc = spawn_jail(keystore, workdir / "s" / "c.sock", "--passphrase-credential",
                      "openred-jail-passphrase",
                      env=jail_env(CREDENTIALS_DIRECTORY=str(credentials)))
    try:
        client = RawClient(proc.socket_path)
        assert client.result("public_keys")["node_id"] == made.node_id
        client.close()
    finally:
        proc.stop()
    missing = run_jail_cli("serve", "--keystore", str(keystore), "--socket",
                           str(workdir / "s" / "c.sock"), "--passphrase-credential", "x")
    assert missing.returncode == 1 and "CREDENTIALS_DIRECTORY" in missing.stderr
    escape = run_jail_cli("serve", "--keystore", str(keystore), "--socket",
                          str(workdir / "s" / "c.sock"), "--passphrase-credential", "../pass",
                          env=jail_env(CREDENTIALS_DIRECTORY=str(credentials)))
    assert escape.returncode == 1 and "plain file name" in escape.stderr
