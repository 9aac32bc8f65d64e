"""Watching a run train: TensorBoard event files (readable, resumed without repeated steps),
the whole-epoch record of an interrupted and resumed epoch, --eval_every's AUC against
evaluate.py, the evaluation's memory kept apart from training's, and the collapse warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import evaluate_run, make_tiny_dataset, stop_training_after, train_tiny

from model import LGNNet, init_memory_items
from training.monitor import (
    FixedWindows,
    TrainingMonitor,
    memory_health,
    open_test_evaluation,
)

TINY_NET = {"t_length": 2, "msize": 4, "fdim": 16, "mdim": 16, "hidden": 8}


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one scalar tag, as TensorBoard reads the run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- memory health


def test_collapse_warning_fires_on_a_collapsed_memory_only() -> None:
    items = torch.eye(4, 8)  # four orthogonal unit items: mean pairwise similarity 0
    # Healthy: 10 queries near each item (40 in all).
    healthy = F.normalize(items.repeat_interleave(10, 0) + 0.01 * torch.rand(40, 8), dim=1)
    health = memory_health(healthy, items)
    assert health.usage.tolist() == [0.25, 0.25, 0.25, 0.25]
    assert health.items_used == 4 and health.top_item_share == 0.25
    assert health.mean_item_similarity == pytest.approx(0.0, abs=1e-7)
    assert not health.collapsed and health.warning() is None

    # Collapsed: 37 of 40 queries (92.5 %) nearest to item 2, one each to the others.
    picks = [2] * 37 + [0, 1, 3]
    collapsed = memory_health(items[picks], items)
    assert collapsed.usage.tolist() == [1 / 40, 1 / 40, 37 / 40, 1 / 40]
    assert collapsed.items_used == 4  # 2.5 % each is still >= 1 %
    warning = collapsed.warning()
    assert warning is not None and "\n" not in warning
    assert "item 2" in warning and "92.5 %" in warning

    # Exactly 90 % is not yet a collapse (the rule is "more than 90 %").
    assert memory_health(items[[0] * 36 + [1] * 4], items).warning() is None
    # Items that all point the same way: mean pairwise cosine similarity 1.
    same = F.normalize(torch.ones(3, 8), dim=1)
    assert memory_health(same, same).mean_item_similarity == pytest.approx(1.0)


# --------------------------------------------------------------------------- event files


def tiny_monitor(run_dir: Path, start: tuple[int, int], steps_per_epoch: int) -> TrainingMonitor:
    windows = torch.rand(3, 6, 16, 16) * 2 - 1
    fixed = FixedWindows(windows[0], windows[1], windows)
    return TrainingMonitor(run_dir, fixed, steps_per_epoch, 3, start)


def test_event_files_are_readable_and_a_resume_replaces_the_steps_after_its_checkpoint(
    tmp_path: Path,
) -> None:
    """A run logs epoch 1 (4 steps) and 3 steps of epoch 2, its last checkpoint being at
    step 1 of epoch 2; the resumed run logs steps 2-4 of epoch 2 again. TensorBoard then
    reads each global step once, in order, with the resumed run's values."""
    torch.manual_seed(0)
    model, items = LGNNet(**TINY_NET), init_memory_items(4, 16)
    first = tiny_monitor(tmp_path, (0, 0), 4)
    for epoch, steps in ((0, range(1, 5)), (1, range(1, 4))):
        first.begin_epoch(epoch, lr=1e-3)
        for step in steps:
            first.step(step, torch.full((4,), 10.0 * epoch + step, dtype=torch.float64))
        if epoch == 0:
            health = first.end_epoch(0, model, items)
            first.log_record({"epoch": 1, "loss": 2.5, **health}, 0)
    first.close()

    resumed = tiny_monitor(tmp_path, (1, 1), 4)
    resumed.begin_epoch(1, lr=5e-4)
    for step in range(2, 5):
        resumed.step(step, torch.full((4,), 100.0 + step, dtype=torch.float64))
    resumed.end_epoch(1, model, items)
    resumed.log_record({"epoch": 2, "loss": 1.5}, 1)
    resumed.close()

    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    loss = scalars(tmp_path, "train/loss")
    assert [step for step, _ in loss] == list(range(1, 9))
    assert [value for _, value in loss] == [1, 2, 3, 4, 11, 102, 103, 104]
    lr = scalars(tmp_path, "train/lr")
    assert [value for _, value in lr] == pytest.approx([1e-3] * 5 + [5e-4] * 3)
    assert [step for step, _ in scalars(tmp_path, "epoch/loss")] == [4, 8]
    assert all(rate > 0 for _, rate in scalars(tmp_path, "train/samples_per_s"))
    assert [v for _, v in scalars(tmp_path, "epoch/memory_items_used")] == [health[
        "memory_items_used"
    ]]  # fmt: skip
    # One grid per epoch: 2 windows x (1 input, prediction, target, error map), enlarged
    # 6x to 96-pixel tiles with 2-pixel padding.
    for epoch in (1, 2):
        png = tmp_path / "samples" / f"epoch_{epoch:03d}.png"
        from PIL import Image

        assert Image.open(png).size == (4 * 96 + 5 * 2, 2 * 96 + 3 * 2)


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 20-frame training video (19 windows: 6 steps of 3) and two labelled test videos."""
    return make_tiny_dataset(
        tmp_path_factory.mktemp("small"), train_videos=1, test_videos=2, min_frames=20,
        max_frames=20,
    )  # fmt: skip


def test_interrupted_epoch_logs_the_whole_epoch_and_eval_every_matches_evaluate(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ("--epochs", "1", "--eval_every", "1")
    straight = train_tiny(small_dataset, tmp_path / "straight", *flags)
    [record] = read_log(straight)
    assert record["steps"] == 6

    # --eval_every's AUC is evaluate.py's on the run's checkpoint (default flags).
    report = evaluate_run(small_dataset, straight / "checkpoint.pth")
    assert record["auc"] == report["auc"] and record["auc_seconds"] > 0
    assert [v for _, v in scalars(straight, "epoch/auc")] == pytest.approx([report["auc"]])
    assert (straight / "samples" / "epoch_001.png").is_file()
    assert (straight / "training_curves.png").stat().st_size > 1000

    # The same run stopped by SIGTERM after 2 of 6 steps, then resumed.
    stop_training_after(monkeypatch, 2, "SIGTERM")
    with pytest.raises(SystemExit):
        train_tiny(small_dataset, tmp_path / "stopped", *flags)
    monkeypatch.undo()
    stopped_dir = tmp_path / "stopped" / "ped2" / "log"
    saved = torch.load(stopped_dir / "checkpoint.pth", weights_only=True)
    assert saved["step"] == 2 and saved["epoch_totals"]["count"] == 2
    carried_seconds = saved["epoch_totals"]["seconds"]
    old_style = tmp_path / "old" / "ped2" / "log"  # the same checkpoint without the sums
    shutil.copytree(stopped_dir, old_style)
    del saved["epoch_totals"]
    torch.save(saved, old_style / "checkpoint.pth")

    resumed = train_tiny(small_dataset, tmp_path / "stopped", *flags, "--resume")
    [whole] = read_log(resumed)
    assert whole["steps"] == record["steps"]
    # Resuming retraces the same steps (tests/test_cli.py), so the sums agree to rounding;
    # the last 4 steps' mean alone would be far off (the loss falls fast in the first steps).
    for name in ("loss", "pixel", "compact", "separate", "auc"):
        assert whole[name] == pytest.approx(record[name], rel=1e-6), name
    assert whole["seconds"] > carried_seconds > 0
    # Each step logged once, in order, across the two processes' event files.
    assert [step for step, _ in scalars(resumed, "train/loss")] == list(range(1, 7))
    losses = [v for _, v in scalars(resumed, "train/loss")]
    assert np.mean(losses) == pytest.approx(record["loss"], rel=1e-6)

    # A mid-epoch checkpoint written before the sums existed still resumes; its record says
    # that it covers the epoch from step 2 on.
    partial = train_tiny(small_dataset, tmp_path / "old", "--epochs", "1", "--resume")
    [part] = read_log(partial)
    assert part["from_step"] == 2 and part["steps"] == 4
    assert part["loss"] < 0.8 * whole["loss"]  # what a partial record would have claimed


def test_evaluation_during_training_leaves_the_training_memory_alone(
    small_dataset: Path,
) -> None:
    """With gamma so large that every test frame updates the memory, the evaluation's items
    move (the updates happen) while the items training goes on with stay as they were."""
    from inference.benchmark import ScoringSettings, evaluate_split

    torch.manual_seed(0)
    model, items = LGNNet(**TINY_NET).eval(), init_memory_items(4, 16)
    before = items.clone()
    evaluation = open_test_evaluation(
        small_dataset / "ped2", "ped2", (16, 24), 2, "memory", None, None
    )
    evaluation.settings = ScoringSettings(gamma=1e9)
    result = evaluation(model, items)
    assert 0.0 <= result["auc"] <= 1.0
    assert torch.equal(items, before)
    results = evaluate_split(
        model, items, evaluation.dataset, evaluation.labels_by_video, evaluation.settings,
        progress=False,
    )  # fmt: skip
    assert sum(r.scores.memory_updates for r in results) == len(evaluation.dataset)
    assert not torch.equal(results[-1].scores.items, before)


def test_missing_tensorboard_is_a_one_line_error_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from conftest import one_line_error

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    message = one_line_error(tiny_monitor, tmp_path, (0, 0), 4)
    assert "tensorboard" in message and "--tensorboard off" in message
    windows = torch.rand(1, 6, 16, 16)
    fixed = FixedWindows(windows[0], None, windows)
    TrainingMonitor(tmp_path, fixed, 4, 3, tensorboard=False)  # off: no package needed
    assert not list(tmp_path.iterdir())
