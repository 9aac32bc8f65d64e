"""Shared test fixtures: repository root on sys.path, the optional real Ped2 data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
PED2_DIR = SHARED / "datasets" / "ped2"
LABELS_DIR = SHARED / "labels"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# One intra-op thread: the test tensors are tiny, and on a busy 2-core machine two
# OpenMP threads stall each other far more than they help.
torch.set_num_threads(1)


@pytest.fixture
def ped2_dir() -> Path:
    """The real UCSD Ped2 frame tree; skips the test when it is absent."""
    if not (PED2_DIR / "testing").is_dir():
        pytest.skip("real Ped2 data not found at ../shared/datasets/ped2")
    return PED2_DIR
