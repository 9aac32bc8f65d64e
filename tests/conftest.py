"""Shared test fixtures: the repository root on sys.path, one tiny benchmark-shaped dataset,
one trained run and its real checkpoint (every test that needs a trained network uses these),
and the optional real Ped2 data."""

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

# The smallest network train.py builds: one input frame (t_length 2), a 64-dim memory of 4
# items, at 16x24; and how the shared run trains it.
TINY_MODEL_FLAGS = ["--h", "16", "--w", "24", "--t_length", "2", "--fdim", "64", "--mdim", "64"]
TINY_TRAIN_FLAGS = [*TINY_MODEL_FLAGS, "--msize", "4", "--batch_size", "3", "--num_workers", "0"]
TINY_TRAIN_FLAGS += ["--precision", "fp32"]


def one_line_error(main, *args: object) -> str:
    """The message of the InputError that ``main(*args)`` raises; it must be one line."""
    from common.errors import InputError

    with pytest.raises(InputError) as raised:
        main(*args)
    message = str(raised.value)
    assert "\n" not in message
    return message


def training_windows(tiny_dataset: Path, height: int, width: int, t_length: int):
    """The windows of the shared tiny dataset's training videos at ``height`` x ``width``."""
    from data.frame_folders import find_split_dir, list_videos
    from data.frames import FrameWindowDataset

    videos = list_videos(find_split_dir(tiny_dataset / "ped2", "training"))
    return FrameWindowDataset(videos, height, width, t_length=t_length)


def make_tiny_dataset(
    root: Path, train_videos: int = 2, test_videos: int = 2, min_frames: int = 20,
    max_frames: int = 22,
) -> Path:  # fmt: skip
    """A small demo scene (32x48 frames, labelled test videos) renamed to look like a
    benchmark folder ``<root>/ped2``; returns ``root``."""
    from data.demo import ensure_demo_dataset

    demo = ensure_demo_dataset(
        root, height=32, width=48, train_videos=train_videos, test_videos=test_videos,
        min_frames=min_frames, max_frames=max_frames,
    )  # fmt: skip
    demo.rename(root / "ped2")
    return root


def train_tiny(dataset_root: Path, output_root: Path, *extra: str) -> Path:
    """``train.py`` with the tiny network on ``<dataset_root>/ped2``; returns the run folder."""
    import train

    argv = ["--dataset_type", "ped2", "--dataset_path", str(dataset_root)]
    argv += ["--output_root", str(output_root), *TINY_TRAIN_FLAGS, *extra]
    return train.main(train.get_args_parser().parse_args(argv))


def evaluate_run(dataset_root: Path, checkpoint: Path, *extra: str) -> dict:
    """``evaluate.py`` in fp32 on ``<dataset_root>/ped2`` with ``checkpoint``; returns its
    report."""
    import evaluate

    argv = ["--dataset_type", "ped2", "--dataset_path", str(dataset_root)]
    argv += ["--checkpoint", str(checkpoint), "--precision", "fp32", *extra]
    return evaluate.main(evaluate.get_args_parser().parse_args(argv))


def stop_training_after(
    monkeypatch: pytest.MonkeyPatch, checks: int, signal_name: str = "SIGTERM"
) -> None:
    """Make training's stop check report ``signal_name`` from its ``checks``-th call on (one
    call per step), as if the signal arrived then: train.py saves mid-epoch and exits."""
    from training.loop import StopRequested

    calls = {"count": 0}

    def stop_from_then_on(self: StopRequested) -> bool:
        calls["count"] += 1
        if calls["count"] >= checks:
            self.signal_name = signal_name
        return self.signal_name is not None

    monkeypatch.setattr(StopRequested, "__bool__", stop_from_then_on)


def window_by_window_scores(model, frames: torch.Tensor, items: torch.Tensor, gamma: float):
    """The reference release's test-time order, as an independent expectation: each window's
    full forward on its own (``frames`` ``(T, C, H, W)`` in [-1, 1]), the point score read on
    the host, the memory updated there when it is below ``gamma``. Returns the PSNRs (dB) and
    feature distances as arrays, the point scores, the update decision of every window and
    the final items."""
    import math

    import numpy as np

    from model.memory import update_memory

    psnrs, distances, points, updated = [], [], [], []
    context = model.t_length - 1
    with torch.no_grad():
        for start in range(frames.shape[0] - context):
            window = frames[start : start + context].reshape(1, -1, *frames.shape[-2:])
            out = model(window, items, train=False)
            target = frames[start + context : start + context + 1]
            errors = ((out.prediction + 1) / 2 - (target + 1) / 2) ** 2
            weights = 1 - torch.exp(-errors)
            point = float((weights * errors).sum() / weights.sum())
            psnrs.append(10 * math.log10(1 / float(errors.mean())))
            distances.append(float(out.feature_distance))
            points.append(point)
            updated.append(point < gamma)
            if point < gamma:
                items = update_memory(out.queries, items)
    return np.array(psnrs), np.array(distances), points, updated, items


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/ped2``: 2 training and 2 labelled test videos of 20-22 frames; returns root."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture(scope="session")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run of the tiny network (checkpoint.pth, model.pth, keys.pt,
    config.json, log.jsonl), written by train.py itself. Tests must not change it."""
    return train_tiny(tiny_dataset, tmp_path_factory.mktemp("exp"), "--epochs", "1")


@pytest.fixture(scope="session")
def checkpoint(trained_run: Path) -> Path:
    """The shared run's checkpoint.pth (the real writer's format). Tests must not change it."""
    return trained_run / "checkpoint.pth"


@pytest.fixture
def ped2_dir() -> Path:
    """The real UCSD Ped2 frame tree; skips the test when it is absent."""
    if not (PED2_DIR / "testing").is_dir():
        pytest.skip("real Ped2 data not found at ../shared/datasets/ped2")
    return PED2_DIR


# The slow compile tests run with the rest; their times are reported at the end, so that a
# slow suite shows where its time went (deselect them with -m "not slow_compile").
_slow_durations: list[tuple[str, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "slow_compile" in report.keywords:
        _slow_durations.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter) -> None:
    for nodeid, seconds in _slow_durations:
        terminalreporter.write_line(f"slow_compile: {nodeid} took {seconds:.0f} s")
