"""An installed wheel works outside the source tree: it migrates a new store and verifies it.

The wheel is built from a copy of the repository (the working tree is left untouched) with the
project's own build backend, offline (``--no-build-isolation --no-index``), and installed with
``--no-deps`` into a fresh virtual environment in a temporary directory. That environment finds
the already installed dependencies through a ``.pth`` line naming this environment's
site-packages — a plain path entry, so the editable install of OpenRed found there is not
loaded: ``openred`` comes from the wheel alone. Everything then runs with the temporary
directory as its working directory and no PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".mypy_cache", ".ruff_cache", ".hypothesis", "demo-data", "*.db", "*.db-wal", "*.db-shm",
)

SCRIPT = """
import asyncio, sys
from pathlib import Path

import openred
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import migrate
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from openred.store.events import NewEvent

here = Path.cwd().resolve()
prefix = Path(sys.prefix).resolve()
# openred and its migrations come from the wheel installed in this environment.
assert Path(openred.__file__).resolve().is_relative_to(prefix), openred.__file__
assert migrate.migrations_dir().is_relative_to(prefix), migrate.migrations_dir()


async def main() -> None:
    signer = InProcessSigner.from_seed(b"\\x07" * 32)
    store = await SQLiteEventStore.open(
        here / "data", signer, registry=node_registry(), projections=node_projections(),
        checkpoint_every=5, checkpoint_interval=0)
    try:
        for i in range(12):
            node_id = f"{i:032d}".translate(str.maketrans("0123456789", "abcdefghij"))
            await store.append_one(NewEvent(f"node:{node_id}", "PeerDiscovered", {
                "node_id": node_id, "api_url": f"https://peer{i}.example",
                "sign_key": "A" * 43, "box_key": "B" * 43}))
    finally:
        await store.close()
    print(signer.sign_key.b64url())


asyncio.run(main())
"""


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its directory."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(REPO_ROOT, source, ignore=IGNORED)
    wheels = tmp / "wheels"
    ok(run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
            "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), "."],
           source))
    (wheel,) = wheels.glob("openred-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "openred/store/migrations/env.py" in names
    assert "openred/store/migrations/script.py.mako" in names
    assert any(n.startswith("openred/store/migrations/versions/0001") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "migrations/")) for n in names)

    venv = tmp / "venv"
    ok(run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp))
    python = venv / "bin" / "python"
    purelib = Path(ok(run([str(python), "-c", "import sysconfig; "
                                              "print(sysconfig.get_paths()['purelib'])"],
                          tmp)).strip())
    (purelib / "openred-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ok(run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
            "--disable-pip-version-check", "--no-deps", "--no-index", str(wheel)], tmp))
    return venv


def test_the_installed_wheel_opens_a_new_store_and_verifies_it(
    installed: Path, tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"
    (work / "data").mkdir(parents=True)
    key = ok(run([str(installed / "bin" / "python"), "-c", SCRIPT], work)).strip()
    assert (work / "data" / "openred.db").is_file()
    result = run([str(installed / "bin" / "audit_tools"), "verify", "data/openred.db",
                  "--key", key], work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VALID" in result.stdout
