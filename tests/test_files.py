"""write_private: the one way private files beside a database are replaced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from openred.files import write_private


def test_it_replaces_the_file_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "nonces.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "nonces.json.tmp").exists()


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    path = tmp_path / "ledger.json"
    (tmp_path / "ledger.json.tmp").symlink_to(victim)
    write_private(path, "mine")
    assert victim.read_text() == "keep me"
    assert path.read_text() == "mine" and not path.is_symlink()
    # A dangling link (a file the attacker wants created) is not followed either.
    target = tmp_path / "created-by-us"
    (tmp_path / "ledger.json.tmp").symlink_to(target)
    write_private(path, "again")
    assert not target.exists() and path.read_text() == "again"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_private(path, "\ud800")  # a lone surrogate UTF-8 cannot carry
    assert path.read_text() == "old"
    assert not os.path.lexists(tmp_path / "x.json.tmp")
