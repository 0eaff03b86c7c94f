"""Shared fixtures: where the test vectors live (``tests/vectors/``), the long-run switch."""

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


VECTORS_DIR = REPO_ROOT / "tests" / "vectors"
"""Published known-answer vectors (copies, see ``tests/vectors/SOURCES.md``) and golden fixtures.

Only this folder: the repository passes its tests with nothing beside it."""


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR
