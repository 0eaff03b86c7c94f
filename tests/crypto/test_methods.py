"""Cipher methods by epoch: the registry and each selection mode."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import pytest

from crypto_jail.noise import SUITES
from openred.crypto.methods import (
    DEFAULT_REGISTRY,
    MethodRegistry,
    select_crypto_method,
    selection_epoch,
)
from openred.errors import ConfigurationError, UnknownSuite

ORDER = ("alpha", "beta", "gamma", "delta")
SEED = b"network seed for the tests 32 b."
START = datetime(2025, 3, 14, 0, 0, tzinfo=UTC)


def test_default_methods_are_the_four_design_suites() -> None:
    assert DEFAULT_REGISTRY.names() == ORDER
    assert [DEFAULT_REGISTRY.suite(n) for n in ORDER] == [
        "25519_ChaChaPoly_SHA256",
        "25519_AESGCM_SHA256",
        "25519_ChaChaPoly_BLAKE2b",
        "25519_AESGCM_BLAKE2b",
    ]
    assert all(DEFAULT_REGISTRY.suite(n) in SUITES for n in ORDER)


def test_hourly_is_the_seed_formula() -> None:
    for hours in range(24 * 40):
        when = START + timedelta(hours=hours)
        expected = ORDER[(when.hour + when.day) % 4]
        assert select_crypto_method(when) == expected
        assert select_crypto_method(when, "hourly") == expected


def test_hourly_uses_utc_even_for_other_offsets() -> None:
    utc = datetime(2025, 3, 14, 23, 30, tzinfo=UTC)
    elsewhere = utc.astimezone(timezone(timedelta(hours=5)))  # 15 March, 04:30 local
    assert elsewhere.day == 15
    assert select_crypto_method(elsewhere) == select_crypto_method(utc) == ORDER[(23 + 14) % 4]


def test_hourly_changes_with_the_hour() -> None:
    a = datetime(2025, 3, 14, 10, 59, 59, tzinfo=UTC)
    assert select_crypto_method(a) != select_crypto_method(a + timedelta(seconds=1))
    assert select_crypto_method(a) == select_crypto_method(a.replace(minute=0, second=0))


def test_weekday_mode() -> None:
    for days in range(21):
        when = START + timedelta(days=days, hours=13)
        assert select_crypto_method(when, "weekday") == ORDER[when.weekday() % 4]


@pytest.mark.parametrize("mode", ["hourly", "seeded"])
def test_all_four_methods_appear_over_a_range_of_hours(mode: str) -> None:
    seen = {
        select_crypto_method(START + timedelta(hours=h), mode, seed=SEED) for h in range(96)
    }
    assert seen == set(ORDER)


def test_seeded_mode_is_hmac_of_the_hour_epoch() -> None:
    when = datetime(2025, 3, 14, 10, 15, tzinfo=UTC)
    epoch = int(when.timestamp()) // 3600
    assert selection_epoch(when) == epoch
    digest = hmac.new(SEED, epoch.to_bytes(8, "big"), hashlib.sha256).digest()
    expected = ORDER[int.from_bytes(digest, "big") % 4]
    assert select_crypto_method(when, "seeded", seed=SEED) == expected
    # the same hour gives the same method; the choice is deterministic
    assert select_crypto_method(when + timedelta(minutes=40), "seeded", seed=SEED) == expected


def test_seeded_mode_depends_on_the_seed() -> None:
    hours = [START + timedelta(hours=h) for h in range(64)]
    a = [select_crypto_method(t, "seeded", seed=SEED) for t in hours]
    b = [select_crypto_method(t, "seeded", seed=b"another network seed, 32 bytes!") for t in hours]
    assert a != b


@pytest.mark.parametrize("seed", [None, b"", b"short"])
def test_seeded_mode_needs_a_seed(seed: bytes | None) -> None:
    with pytest.raises(ConfigurationError):
        select_crypto_method(START, "seeded", seed=seed)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(UnknownSuite):
        select_crypto_method(START, "monthly")


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        select_crypto_method(datetime(2025, 3, 14, 10, 0))


def test_registry_extension_takes_part_in_selection() -> None:
    registry = MethodRegistry()
    registry.register("epsilon", "25519_ChaChaPoly_SHA512")
    assert registry.names() == (*ORDER, "epsilon")
    assert registry.suite("epsilon") == "25519_ChaChaPoly_SHA512"
    assert "epsilon" not in DEFAULT_REGISTRY
    seen = {
        select_crypto_method(START + timedelta(hours=h), registry=registry) for h in range(48)
    }
    assert seen == {*ORDER, "epsilon"}
    when = START + timedelta(hours=7)
    assert select_crypto_method(when, registry=registry) == registry.names()[(7 + 14) % 5]


def test_registry_refuses_duplicates_and_unknown_suites() -> None:
    registry = MethodRegistry()
    with pytest.raises(UnknownSuite):
        registry.register("alpha", "25519_AESGCM_SHA512")
    with pytest.raises(UnknownSuite):
        registry.register("omega", "25519_Rot13_MD5")
    with pytest.raises(UnknownSuite):
        registry.register("", "25519_AESGCM_SHA512")
    assert registry.names() == ORDER
    with pytest.raises(UnknownSuite):
        registry.suite("omega")


def test_empty_registry_cannot_select() -> None:
    with pytest.raises(UnknownSuite):
        select_crypto_method(START, registry=MethodRegistry({}))
