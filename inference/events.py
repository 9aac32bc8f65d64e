"""Per-frame decisions turned into events, and how good the decisions are against labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.config import LAMBDA
from utils import frame_auc, normality_scores


class EventTracker:
    """Runs of consecutive anomalous frames, built incrementally (bounded memory)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None

    def update(self, video: str, frame: int, normality: float, anomaly: bool) -> None:
        if self._open is not None and (
            not anomaly or self._open["video"] != video or frame != self._open["end"] + 1
        ):
            self.close()
        if not anomaly:
            return
        if self._open is None:
            self._open = {
                "video": video,
                "start": frame,
                "end": frame,
                "peak_frame": frame,
                "peak_score": normality,
            }
            return
        self._open["end"] = frame
        if normality < self._open["peak_score"]:
            self._open["peak_frame"], self._open["peak_score"] = frame, normality

    def close(self) -> None:
        if self._open is not None:
            self.events.append(self._open)
            self._open = None


def decision_metrics(
    normality: np.ndarray,
    anomaly: np.ndarray,
    labels: np.ndarray,
    per_video: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    lambda_: float = LAMBDA,
) -> dict[str, Any]:
    """Frame-level quality of the decisions against labels (1 = abnormal).

    Args:
        normality, anomaly, labels: pooled per-frame calibrated normality, 0/1 decisions and
            ground truth.
        per_video: optional ``(psnr, distance)`` arrays per video, for the AUC of the same
            frames under the benchmark's per-video min-max normalisation.

    Returns:
        precision, recall, F1 of the decisions (anomaly = positive), the false-alarm rate
        observed on the normal frames, the ROC AUC of the calibrated scores and, when
        ``per_video`` is given, the min-max AUC.
    """
    anomaly, labels = np.asarray(anomaly).astype(bool), np.asarray(labels).astype(bool)
    true_positive = int((anomaly & labels).sum())
    precision = true_positive / anomaly.sum() if anomaly.any() else 0.0
    recall = true_positive / labels.sum() if labels.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = labels.any() and not labels.all()
    metrics: dict[str, Any] = {
        "frames": int(labels.size),
        "abnormal_frames": int(labels.sum()),
        "flagged_frames": int(anomaly.sum()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "false_alarm_rate": float(anomaly[~labels].mean()) if (~labels).any() else None,
        "auc_calibrated": frame_auc(normality, labels.astype(int)) if both else None,
    }
    if per_video and both:
        minmax = np.concatenate([normality_scores(p, d, lambda_) for p, d in per_video])
        metrics["auc_minmax_per_video"] = frame_auc(minmax, labels.astype(int))
    return metrics
