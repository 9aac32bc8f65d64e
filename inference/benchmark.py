"""The benchmark protocol over a test split: every video scored in order with the memory
carried from one video to the next, per-video min-max fusion, and the pooled frame AUC;
plus the per-frame CSV and the plots of ``evaluate.py``."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from common.errors import InputError
from common.files import atomic_write
from data.frame_folders import Video
from data.frame_store import choose_frames
from data.frames import FrameWindowDataset, frames_to_tensor
from inference.config import EVAL_BATCH_SIZE, GAMMA, LAMBDA
from inference.video import QualityMetric, ScoringFunctions, VideoScores, evaluate_video
from model import LGNNet
from utils import equal_error_rate, frame_auc, normality_scores, smooth_scores

SCORE_FIELDS = ("video", "frame", "psnr", "feature_distance", "normality", "label")


def fuse(scores: VideoScores, lambda_: float, smooth: float = 0.0) -> np.ndarray:
    """One video's normality: ``λ·minmax(score) + (1-λ)·(1 - minmax(distance))``, then
    Gaussian smoothing over ``smooth`` frames (0: none). 1 = normal."""
    return smooth_scores(
        normality_scores(scores.frame_score, scores.feature_distance, lambda_), smooth
    )


@dataclass
class VideoResult:
    """One test video's scores beside its labels (first ``t_length - 1`` frames dropped)."""

    name: str
    frame_index: np.ndarray  # (F,) 0-based positions of the scored frames in the video
    labels: np.ndarray  # (F,) 1 = abnormal
    scores: VideoScores
    normality: np.ndarray  # (F,) fused with the run's lambda and smoothing

    @property
    def auc(self) -> float | None:
        """Frame AUC within this video; None when it holds only one class."""
        both = 0 < self.labels.sum() < len(self.labels)
        return frame_auc(self.normality, self.labels) if both else None


class ScoringSettings(NamedTuple):
    """How a test split is scored (defaults: the reference protocol, PSNR, fp32, eager)."""

    gamma: float = GAMMA  # a frame updates the memory when its point score is below gamma
    memory_update: bool = True  # test-time memory updates at all
    lambda_: float = LAMBDA  # weight of the frame score against the memory distance
    smooth: float = 0.0  # Gaussian temporal smoothing of each video's normality, frames
    batch_size: int = EVAL_BATCH_SIZE  # windows encoded together
    dtype: torch.dtype | None = None  # autocast dtype, None for fp32
    metric: QualityMetric | None = None  # a frame score other than PSNR
    functions: ScoringFunctions | None = None  # compiled encoder and step (the fast path)


def score_test_videos(
    model: LGNNet,
    items: torch.Tensor,
    dataset: FrameWindowDataset,
    labels_by_video: Mapping[str, np.ndarray],
    settings: ScoringSettings | None = None,
    on_video: Callable[[VideoResult], None] | None = None,
) -> tuple[list[VideoResult], torch.Tensor]:
    """Score every video of ``dataset`` in order, the memory items carried from one video to
    the next as the reference does. Returns the per-video results and the final items.

    ``on_video`` is called after each video (e.g. to advance a progress bar). A dataset
    built with ``preload=False`` loads each video when its turn comes, so only one video's
    frames are held at a time.
    """
    settings = settings or ScoringSettings()
    device = items.device
    results = []
    for index, video in enumerate(dataset.videos):
        frames = frames_to_tensor(torch.from_numpy(dataset.video_frames(index)).to(device))
        scores = evaluate_video(
            model, frames, items, settings.gamma, settings.memory_update, settings.batch_size,
            settings.dtype, settings.metric, settings.functions,
        )  # fmt: skip
        del frames  # before the next video is loaded: one video's frames at a time
        items = scores.items
        result = VideoResult(
            video.name,
            np.arange(dataset.t_length - 1, len(video)),
            labels_by_video[video.name][dataset.t_length - 1 :],
            scores,
            fuse(scores, settings.lambda_, settings.smooth),
        )
        results.append(result)
        if on_video is not None:
            on_video(result)
    return results, items


def open_test_windows(
    videos: list[Video],
    dataset_dir: Path,
    height: int,
    width: int,
    t_length: int,
    frames: str = "auto",
    cache_dir: Path | None = None,
) -> tuple[FrameWindowDataset, str]:
    """The test windows at ``height`` x ``width`` for :func:`evaluate_split`, with the line
    saying where their frames live (``--frames``). Videos are scored one after the other,
    so each is loaded (from memory or from the disk store) when its turn comes."""
    choice = choose_frames(
        frames, videos, height, width, cache_dir, dataset_dir, one_video_at_a_time=True
    )
    dataset = FrameWindowDataset(videos, height, width, t_length, choice.source, preload=False)
    return dataset, choice.line


def evaluate_split(
    model: LGNNet,
    items: torch.Tensor,
    dataset: FrameWindowDataset,
    labels_by_video: Mapping[str, np.ndarray],
    settings: ScoringSettings,
    progress: bool = True,
) -> list[VideoResult]:
    """``evaluate.py``'s scoring of a test split: :func:`score_test_videos` from ``items``
    ``(M, D)``, with a progress bar (frames) unless ``progress`` is False. ``items`` itself is
    never changed: the test-time updates go to the new tensors each step returns."""
    bar = tqdm(
        total=len(dataset), desc="evaluating", unit="frame", dynamic_ncols=True,
        disable=not progress, leave=False,
    )  # fmt: skip

    def advance(result: VideoResult) -> None:
        bar.update(len(result.labels))

    results, _ = score_test_videos(
        model, items, dataset, labels_by_video, settings, on_video=advance
    )
    bar.close()
    return results


def benchmark_metrics(
    results: list[VideoResult], lambda_: float = LAMBDA, smooth: float = 0.0
) -> dict[str, Any]:
    """Pooled frame AUC, mean per-video AUC, EER, frame counts, the single-branch AUCs of the
    same pass and the per-video AUCs. Raises InputError when the labels hold one class."""
    normality = np.concatenate([r.normality for r in results])
    labels = np.concatenate([r.labels for r in results])
    if labels.min() == labels.max():
        raise InputError(
            "the test labels hold only one class after dropping the first frames of each "
            "video, so no AUC exists; check --label_path"
        )
    video_aucs = [r.auc for r in results if r.auc is not None]
    return {
        "auc": frame_auc(normality, labels),
        "auc_macro": float(np.mean(video_aucs)) if video_aucs else None,
        "eer": equal_error_rate(normality, labels),
        "frames": int(len(labels)),
        "abnormal_frames": int(labels.sum()),
        # The update gate reads the prediction error alone, never lambda, so these equal
        # separate --lambda 1 / --lambda 0 runs.
        "auc_components": {
            f"{name} (lambda={weight:g})": frame_auc(
                np.concatenate([fuse(r.scores, weight, smooth) for r in results]), labels
            )
            for name, weight in (("prediction_only", 1.0), ("memory_only", 0.0))
        },
        "videos": [
            {
                "name": r.name,
                "frames": len(r.labels),
                "abnormal_frames": int(r.labels.sum()),
                "auc": r.auc,
            }
            for r in results
        ],  # fmt: skip
    }


def score_rows(results: list[VideoResult]) -> list[dict[str, Any]]:
    """The rows of the per-frame CSV (``SCORE_FIELDS``), 9 significant digits."""
    return [
        {
            "video": r.name,
            "frame": int(f),
            "psnr": f"{p:.9g}",
            "feature_distance": f"{d:.9g}",
            "normality": f"{n:.9g}",
            "label": int(y),
        }
        for r in results
        for f, p, d, n, y in zip(
            r.frame_index,
            r.scores.psnr,
            r.scores.feature_distance,
            r.normality,
            r.labels,
            strict=True,
        )  # fmt: skip
    ]


def write_scores_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write :func:`score_rows` as CSV, atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=SCORE_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def save_plots(plot_dir: Path, results: list[VideoResult]) -> None:
    """A normality curve per video (abnormal frames shaded) and the pooled ROC curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    normality = np.concatenate([r.normality for r in results])
    labels = np.concatenate([r.labels for r in results])
    plot_dir.mkdir(parents=True, exist_ok=True)
    for video in results:
        fig, ax = plt.subplots(figsize=(6, 2.2), dpi=100)
        frames = video.frame_index
        ax.plot(frames, video.normality, color="tab:blue", lw=1.2, label="normality")
        ax.fill_between(
            frames,
            0,
            1,
            where=video.labels > 0,
            color="tab:red",
            alpha=0.2,
            step="mid",
            label="abnormal (ground truth)",
        )
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("frame")
        ax.set_title(f"video {video.name}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        atomic_write(
            plot_dir / f"scores_{video.name}.png", lambda p, f=fig: f.savefig(p, format="png")
        )
        plt.close(fig)
    # Abnormal frames are the positive class, as in detection; the AUC is the same.
    fpr, tpr, _ = roc_curve(labels, -normality)
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=100)
    ax.plot(fpr, tpr, color="tab:blue")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("normal frames flagged")
    ax.set_ylabel("abnormal frames found")
    ax.set_title(f"ROC, AUC {frame_auc(normality, labels):.4f}", fontsize=9)
    fig.tight_layout()
    atomic_write(plot_dir / "roc.png", lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
