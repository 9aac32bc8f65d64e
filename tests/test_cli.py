"""train.py and evaluate.py end to end on a tiny synthetic dataset, and the evaluation loop
against an independent one-window-at-a-time reference."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import stop_training_after, train_tiny

import evaluate
import train
from inference.video import evaluate_video
from model import LGNNet, init_memory_items, update_memory
from utils import frame_errors, point_score, psnr_from_mse

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_training_writes_every_artefact(trained_run: Path) -> None:
    for name in ("model.pth", "keys.pt", "checkpoint.pth", "config.json", "log.jsonl"):
        assert (trained_run / name).is_file(), name
    log = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1]
    assert {"loss", "pixel", "compact", "separate", "lr", "seconds"} <= set(log[0])
    # The reference-layout pair equals the checkpoint's content.
    checkpoint = torch.load(trained_run / "checkpoint.pth", weights_only=True)
    items = torch.load(trained_run / "keys.pt")
    assert torch.equal(items, checkpoint["items"])
    assert torch.allclose(items.norm(dim=1), torch.ones(items.shape[0]), atol=1e-5)
    assert len(torch.load(trained_run / "model.pth")) == 197


def test_evaluate_writes_report_scores_and_plots(
    tiny_dataset: Path, trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "--dataset_type", "ped2", "--dataset_path", str(tiny_dataset),
        "--checkpoint", str(trained_run / "checkpoint.pth"), "--precision", "fp32",
        "--report", str(tmp_path / "report.json"), "--scores", str(tmp_path / "scores.csv"),
        "--plot_dir", str(tmp_path / "plots"), "--eval_batch_size", "3",
    ]  # fmt: skip
    report = evaluate.main(evaluate.get_args_parser().parse_args(argv))
    assert "Frame AUC: " in capsys.readouterr().out

    saved = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "dataset", "auc", "auc_macro", "eer", "frames", "abnormal_frames", "lambda", "gamma",
        "checkpoint", "seconds", "frames_per_second", "videos",
    ):  # fmt: skip
        assert key in saved, key
    assert saved["auc"] == pytest.approx(report["auc"])
    assert (saved["h"], saved["w"]) == (16, 24)  # taken from the checkpoint
    with open(tmp_path / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["video", "frame", "psnr", "feature_distance", "normality", "label"]
    assert len(rows) == saved["frames"] == sum(v["frames"] for v in saved["videos"])
    assert sum(int(r["label"]) for r in rows) == saved["abnormal_frames"]
    assert rows[0]["frame"] == "1"  # t_length 2: the first frame has no prediction
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert "roc.png" in plots and len(plots) == 1 + len(saved["videos"])
    # Each video's normality is its own min-max fusion of the PSNR and distance columns,
    # written out here: 0.6 * (p - min p) / (max p - min p) + 0.4 * (max d - d) / (max d - min d).
    for video in {r["video"] for r in rows}:
        mine = [r for r in rows if r["video"] == video]
        psnr = np.array([float(r["psnr"]) for r in mine])
        distance = np.array([float(r["feature_distance"]) for r in mine])
        expected = 0.6 * (psnr - psnr.min()) / (psnr.max() - psnr.min()) + 0.4 * (
            distance.max() - distance
        ) / (distance.max() - distance.min())
        normality = np.array([float(r["normality"]) for r in mine])
        np.testing.assert_allclose(normality, expected, atol=1e-6)


def test_single_branch_aucs_equal_separate_lambda_runs(
    tiny_dataset: Path, trained_run: Path
) -> None:
    """The report's lambda=1 / lambda=0 AUCs come from the same pass; with gamma = 1 every
    frame updates the memory, so this also checks that the gate does not depend on lambda."""

    def run(lambda_: str) -> dict:
        argv = [
            "--dataset_type", "ped2", "--dataset_path", str(tiny_dataset),
            "--checkpoint", str(trained_run / "checkpoint.pth"), "--precision", "fp32",
            "--gamma", "1.0", "--lambda", lambda_,
        ]  # fmt: skip
        return evaluate.main(evaluate.get_args_parser().parse_args(argv))

    fused, prediction_only, memory_only = run("0.6"), run("1"), run("0")
    assert fused["memory_updates"] == fused["frames"] == prediction_only["memory_updates"]
    components = fused["auc_components"]
    assert components["prediction_only (lambda=1)"] == prediction_only["auc"]
    assert components["memory_only (lambda=0)"] == memory_only["auc"]


def reference_scores(
    model: LGNNet, frames: torch.Tensor, items: torch.Tensor, gamma: float
) -> tuple[list[float], list[float], torch.Tensor]:
    """The protocol written plainly: one window at a time through forward_infer."""
    psnrs, distances = [], []
    with torch.no_grad():
        for start in range(frames.shape[0] - 4):
            window = frames[start : start + 4].reshape(1, -1, *frames.shape[-2:])
            out = model.forward_infer(window, items)
            errors = frame_errors(out.prediction, frames[start + 4 : start + 5])
            psnrs.append(psnr_from_mse(float(errors.mean())))
            distances.append(float(out.feature_distance))
            if point_score(errors) < gamma:
                items = update_memory(out.queries, items)
    return psnrs, distances, items


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_batched_evaluation_equals_one_window_at_a_time(batch_size: int) -> None:
    torch.manual_seed(0)
    model = LGNNet(msize=4).eval()
    items = init_memory_items(4, 512, generator=torch.Generator().manual_seed(1))
    frames = torch.rand(11, 3, 16, 16) * 2 - 1
    # gamma high enough that every frame updates the memory: order matters then.
    expected_psnr, expected_dist, expected_items = reference_scores(model, frames, items, 10.0)
    scores = evaluate_video(model, frames, items, 10.0, batch_size=batch_size)
    assert scores.psnr == pytest.approx(expected_psnr, abs=1e-4)
    assert scores.feature_distance == pytest.approx(expected_dist, rel=1e-4)
    assert torch.allclose(scores.items, expected_items, atol=1e-5)
    assert not torch.allclose(scores.items, items)


def assert_same_state(run_a: Path, run_b: Path) -> None:
    a = torch.load(run_a / "checkpoint.pth", weights_only=True)
    b = torch.load(run_b / "checkpoint.pth", weights_only=True)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6), key
    assert torch.allclose(a["items"], b["items"], atol=1e-6)


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train_tiny(tiny_dataset, tmp_path / "straight", "--epochs", "2")

    # Die right after the first epoch's checkpoint, as a SIGKILL would.
    real_save = train.save_run_state

    def save_then_die(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train, "save_run_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(tiny_dataset, tmp_path / "killed", "--epochs", "2")
    monkeypatch.setattr(train, "save_run_state", real_save)
    resumed = train_tiny(tiny_dataset, tmp_path / "killed", "--epochs", "2", "--resume")
    assert_same_state(straight, resumed)


def test_sigterm_mid_epoch_saves_and_resumes_exactly(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = train_tiny(tiny_dataset, tmp_path / "straight", "--epochs", "1")
    stop_training_after(monkeypatch, 2, "SIGTERM")
    with pytest.raises(SystemExit) as stopped:
        train_tiny(tiny_dataset, tmp_path / "stopped", "--epochs", "1")
    assert stopped.value.code == 143
    saved = torch.load(tmp_path / "stopped/ped2/log/checkpoint.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (0, 2)
    monkeypatch.undo()
    resumed = train_tiny(tiny_dataset, tmp_path / "stopped", "--epochs", "1", "--resume")
    assert_same_state(straight, resumed)


def test_bad_flag_exits_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "train.py", "--dataset_type", "demo", "--h", "30"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1] == "error: --h 30 must be a positive multiple of 8"
    )


def test_named_configurations_are_the_documented_command_lines() -> None:
    def parsed(argv: list[str]) -> dict:
        values = vars(train.parse_args(argv))
        values.pop("config")
        values.pop("given_flags", None)  # which flags were typed, not what they set
        return values

    # The README's quickstart and RESULTS.md's Ped2 CPU command, spelled out in full.
    quickstart = "--dataset_type demo --h 32 --w 48 --epochs 1 --num_workers 0"
    ped2_cpu = "--dataset_type ped2 --h 32 --w 48 --epochs 2 --batch_size 6 --num_workers 0"
    ped2_cpu += " --precision fp32"
    assert parsed(["--config", "demo"]) == parsed(quickstart.split())
    assert parsed(["--config", "ped2_cpu"]) == parsed(ped2_cpu.split())
    assert parsed(["--config", "ped2_paper"]) == parsed([])  # the paper's are the defaults
    # RESULTS.md's command of the published ped2-32x48 weights.
    ped2_cpu_e8 = ped2_cpu.replace("--epochs 2", "--epochs 8") + " --calibrate"
    assert parsed(["--config", "ped2_cpu_32x48_e8"]) == parsed(ped2_cpu_e8.split())
    # Flags given beside a configuration win, wherever they stand.
    assert parsed(["--epochs", "3", "--config", "ped2_cpu"])["epochs"] == 3
