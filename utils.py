"""Scoring maths and metrics: PSNR, the point score that gates the test-time memory update,
per-video min-max fusion of the two scores, smoothing, frame AUC and EER.

The fusion weight λ and the update gate γ are the reference release's evaluation defaults
(``inference.config``): normality ``λ·minmax(PSNR) + (1 − λ)·(1 − minmax(distance))`` within
each video, and a frame updates the memory when its point score is below γ.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import roc_auc_score, roc_curve


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of images in [0, 1]: ``10·log10(1 / mse)``."""
    return float(10.0 * math.log10(1.0 / max(mse, 1e-12)))


def frame_errors(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error ``((pred+1)/2 - (gt+1)/2)²`` of frames in [-1, 1], fp32."""
    return (((prediction.float() + 1) / 2 - (target.float() + 1) / 2) ** 2).float()


def point_score_tensor(errors: torch.Tensor) -> torch.Tensor:
    """Error-weighted mean error ``Σ w·e / Σ w`` with ``w = 1 - exp(-e)``, a 0-d tensor on the
    errors' device: gates the test-time memory update (update when below gamma)."""
    weights = 1 - torch.exp(-errors)
    return (weights * errors).sum() / weights.sum().clamp_min(1e-12)


def point_score(errors: torch.Tensor) -> float:
    """:func:`point_score_tensor` as a Python float."""
    return float(point_score_tensor(errors))


def minmax_normalize(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the array's own min and max; a constant array maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    if span <= 0:
        return np.zeros_like(values)
    return (values - values.min()) / span


def normality_scores(psnr: np.ndarray, distance: np.ndarray, lambda_: float = 0.6) -> np.ndarray:
    """Per-video fusion: ``λ·minmax(psnr) + (1-λ)·(1 - minmax(distance))``; 1 = normal."""
    return lambda_ * minmax_normalize(psnr) + (1 - lambda_) * (1 - minmax_normalize(distance))


def smooth_scores(scores: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian temporal smoothing (sigma in frames); ``sigma <= 0`` returns the input."""
    if sigma <= 0:
        return np.asarray(scores, dtype=np.float64)
    return gaussian_filter1d(np.asarray(scores, dtype=np.float64), sigma, mode="nearest")


def frame_auc(normality: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of the normality scores against ``1 - label`` (labels: 1 = abnormal)."""
    return float(roc_auc_score(1 - np.asarray(labels), normality))


def equal_error_rate(normality: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate of the anomaly detector that flags low normality scores."""
    fpr, tpr, _ = roc_curve(1 - np.asarray(labels), normality)
    fnr = 1 - tpr
    index = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[index] + fnr[index]) / 2)
