"""The project is installable: pyproject.toml declares the library (packages and the
``utils`` module), so that after installing, ``from inference import load_scorer`` works in a
script outside the repository."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = "import inference, utils; from inference import load_scorer; print(inference.__file__)"


def run_probe(cwd: Path, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_the_api_imports_from_another_folder_once_installed(tmp_path: Path) -> None:
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("pip and setuptools are needed to build the project")
    # A copy of what the build reads, so that building leaves nothing in the repository.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md", "utils.py"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for package in ("common", "data", "inference", "model", "training"):
        shutil.copytree(
            REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    install += ["--no-build-isolation", "--target", str(site), str(source)]
    built = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    missing = run_probe(elsewhere, None)  # not installed: the import fails there
    assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr
    installed = run_probe(elsewhere, str(site))
    assert installed.returncode == 0, installed.stderr
    assert Path(installed.stdout.strip()).is_relative_to(site)
