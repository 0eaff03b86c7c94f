"""Shared fixtures: where the test vectors live (``tests/vectors/``), the long-run switch, and
where the suite's temporary files go (a RAM file system when there is one, see below)."""

from __future__ import annotations

import os
import shutil
import tempfile
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

RAM_DIR = Path("/dev/shm")
RAM_MIN_FREE = 4 << 30
"""The suite keeps a few hundred MB at once (each passed test's ``tmp_path`` goes at once)."""

_TMP_KEY = pytest.StashKey[Path]()
_PASSED_KEY = pytest.StashKey[bool]()


def _ram_tmp_root() -> Path | None:
    """``/dev/shm`` if it is a writable file system with room that takes ``O_DIRECT``, else None.

    Every log, keystore and shared file the suite writes is fsynced, and on a disk those fsyncs
    are most of the suite's time (a node test's five fresh logs cost seconds on a busy disk,
    milliseconds in RAM). What the tests prove does not depend on it: a SIGKILLed process
    leaves the page cache behind either way, and no test can cut the power. File sharing writes
    with ``O_DIRECT`` where the file system takes it, so a file system that refuses it is not
    used (the tests of that path would skip).
    """
    try:
        free = os.statvfs(RAM_DIR)
        if free.f_bavail * free.f_frsize < RAM_MIN_FREE:
            return None
        probe = tempfile.mkdtemp(prefix="openred-probe-", dir=RAM_DIR)
    except OSError:
        return None
    try:
        fd = os.open(Path(probe) / "direct", os.O_CREAT | os.O_RDWR | getattr(os, "O_DIRECT", 0),
                     0o600)
        os.close(fd)
        return RAM_DIR
    except OSError:
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Point ``TMPDIR`` (this process's and every child's) at a fresh folder of the suite's.

    ``OPENRED_TEST_TMPDIR`` names its parent (``/tmp`` runs the suite on disk); by default it
    is :data:`RAM_DIR` when :func:`_ram_tmp_root` accepts it, else the system's default.
    """
    chosen = os.environ.get("OPENRED_TEST_TMPDIR")
    root = Path(chosen) if chosen else _ram_tmp_root()
    if root is None:
        return
    folder = Path(tempfile.mkdtemp(prefix="openred-tests-", dir=root))
    # Others may pass through (not list) as through /tmp: the tests that let another uid reach
    # a jail's socket open their own folders to it.
    folder.chmod(0o711)
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)
    config.stash[_TMP_KEY] = folder
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        # tmp_path directly under the folder ("t"), not under "pytest-of-USER/pytest-N": a
        # Unix socket's path holds at most 107 bytes, and the pytest-xdist workers' folders
        # ("popen-gwN") make every tmp_path longer. The workers get "t/popen-gwN".
        config.option.basetemp = str(folder / "t")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_PASSED_KEY] = exitstatus in (pytest.ExitCode.OK,
                                                       pytest.ExitCode.NO_TESTS_COLLECTED)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the suite's folder after a passing run; after a failure, say where it is."""
    folder = config.stash.get(_TMP_KEY, None)
    if folder is None:
        return
    if config.stash.get(_PASSED_KEY, False):
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.is_dir():
        print(f"\nthe temporary files of the failed tests are kept in {folder}")


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    return VECTORS_DIR
