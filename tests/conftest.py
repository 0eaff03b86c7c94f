"""Shared fixtures: where the read-only test vectors live, and the long-run switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# The machine is shared and noisy: a per-example deadline would fail tests for the machine's
# load, not for the code. Timing lives in bench/, never in tests.
settings.register_profile("openred", deadline=None)
settings.load_profile("openred")

REPO_ROOT = Path(__file__).resolve().parents[1]
LONG = os.environ.get("OPENRED_TEST_LONG") == "1"


def find_vectors_dir() -> Path:
    """The shared/vectors folder beside the repository (or OPENRED_VECTORS_DIR)."""
    override = os.environ.get("OPENRED_VECTORS_DIR")
    candidates = [Path(override)] if override else []
    candidates += [REPO_ROOT.parent / "shared" / "vectors", REPO_ROOT / "shared" / "vectors"]
    for candidate in candidates:
        if (candidate / "noise_KK_KKpsk0_25519.json").is_file():
            return candidate
    raise FileNotFoundError(
        "test vectors not found: expected ../shared/vectors beside the repository "
        "(or set OPENRED_VECTORS_DIR)"
    )


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return find_vectors_dir()
