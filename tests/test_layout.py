"""The repository's layout: product files are never named like tests."""

from __future__ import annotations

from conftest import REPO_ROOT

# Folders that hold no product code of this repository (environments, caches, outputs).
NOT_PRODUCT = {"tests", "build", "dist", "venv", "site-packages", "__pycache__", "exp"}


def test_no_product_file_is_named_like_a_test() -> None:
    """pytest collects ``test_*.py``, and tools that split product from tests file such a
    module as a test: outside ``tests/`` no file may match it."""
    misnamed = [
        path.relative_to(REPO_ROOT).as_posix()
        for path in REPO_ROOT.rglob("test_*.py")
        if not any(
            part in NOT_PRODUCT or part.startswith(".")
            for part in path.relative_to(REPO_ROOT).parts[:-1]
        )
    ]
    assert misnamed == []
