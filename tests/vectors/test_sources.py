"""The repository stands on its own: its vectors are here, named in SOURCES.md, nothing outside."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT, VECTORS_DIR

OUTSIDE = "/".join(("..", "shared"))
"""The material folder beside the repository (spelled so that this file does not name it)."""
OLD_VARIABLE = "_".join(("OPENRED", "VECTORS", "DIR"))
"""A variable that once pointed the tests at vectors outside the repository."""
PUBLISHED = sorted(p.name for p in VECTORS_DIR.glob("*.json") if p.name != "index.json")


def test_every_published_vector_file_is_named_with_origin_commit_and_licence() -> None:
    sources = (VECTORS_DIR / "SOURCES.md").read_text()
    assert PUBLISHED == ["noise_KK_KKpsk0_25519.json", "wycheproof_chacha20_poly1305_test.json",
                         "wycheproof_ed25519_test.json", "wycheproof_x25519_test.json"]
    for name in PUBLISHED:
        row = next(line for line in sources.splitlines() if line.startswith(f"| `{name}`"))
        origin, commit, licence = (cell.strip() for cell in row.split("|")[3:6])
        assert origin.startswith("https://github.com/"), row
        assert re.fullmatch(r"[0-9a-f]{7,40}", commit), row
        assert licence, row


def test_nothing_in_the_repository_points_outside_it() -> None:
    texts = [REPO_ROOT / "README.md", REPO_ROOT / "Makefile", REPO_ROOT / ".ci" / "run",
             *sorted((REPO_ROOT / "docs").glob("*.md")), *sorted(REPO_ROOT.glob("tests/**/*.py"))]
    for path in texts:
        assert OUTSIDE not in path.read_text(), path
        assert OLD_VARIABLE not in path.read_text(), path
    for link in re.findall(r"\]\(([^)#]+)\)", (REPO_ROOT / "README.md").read_text()):
        if not link.startswith(("http://", "https://")):
            assert (REPO_ROOT / link).exists(), link
