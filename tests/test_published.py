"""The published weights as a user gets them: name -> bundled file -> sha256 -> a scorer at the
file's own size, and the published Ped2 results agreeing with the real labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from sklearn.metrics import roc_auc_score

import model.pretrained as pretrained
from common.download import file_sha256
from inference import load_scorer
from model.weights_file import load_for_inference

REPO = Path(__file__).resolve().parents[1]
CPU_NAME = "ped2-32x48"  # the CPU-trained Ped2 weights
CPU_RESULTS = REPO / "results" / CPU_NAME


def test_published_name_resolves_to_the_bundled_file_with_its_sha256() -> None:
    entry = pretrained.PUBLISHED_WEIGHTS[CPU_NAME]
    path = pretrained.resolve_checkpoint(CPU_NAME)
    assert path == pretrained.WEIGHTS_DIR / entry["file"]
    assert file_sha256(path) == entry["sha256"]
    assert pretrained.local_path(CPU_NAME) == path


def test_published_file_carries_its_size_and_calibration() -> None:
    loaded = load_for_inference(pretrained.resolve_checkpoint(CPU_NAME))
    assert (loaded.height, loaded.width) == (32, 48)
    assert loaded.items.shape == (loaded.model.msize, loaded.model.mdim)
    assert loaded.checkpoint.get("calibration")  # detect.py needs no calibration step
    saved = loaded.checkpoint
    assert saved["epoch"] == 8 and saved["args"]["epochs"] == 8
    assert "dataset_path" not in saved["args"]  # the trainer's folders stay behind


def test_published_scorer_scores_frames_in_memory_like_torch_hub() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (7, 60, 90, 3), dtype=np.uint8)
    scorer = load_scorer(CPU_NAME, device="cpu", precision="fp32")
    hub = torch.hub.load(str(REPO), "lgn_net", weights=CPU_NAME, source="local", device="cpu",
                         precision="fp32")  # fmt: skip
    a, b = scorer.score(frames), hub.score(frames)
    assert a.psnr.shape == (7 - 4,) and np.isfinite(a.psnr).all()
    np.testing.assert_array_equal(a.psnr, b.psnr)  # one file, one path: the same numbers
    assert a.anomaly is not None  # calibrated: decisions without a calibration step


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_published_report_matches_its_scores_and_the_real_labels(ped2_dir: Path) -> None:
    report = json.loads((CPU_RESULTS / "report.json").read_text())
    rows = read_scores(CPU_RESULTS / "scores.csv")
    ranges = scipy.io.loadmat(ped2_dir / "ped2.mat")["gt"][0]  # 1-based inclusive [start; end]
    videos = sorted({row["video"] for row in rows})
    labels = []
    for row in rows:
        start, end = ranges[videos.index(row["video"])].ravel()[:2]
        labels.append(int(start - 1 <= int(row["frame"]) <= end - 1))
    normality = np.array([float(row["normality"]) for row in rows])
    assert len(rows) == report["frames"] == 1962 and sum(labels) == report["abnormal_frames"]
    # Abnormal frames score low normality: the AUC of the anomaly score 1 - normality.
    assert roc_auc_score(labels, 1 - normality) == pytest.approx(report["auc"], abs=1e-9)
