"""Scoring functions against hand-computed values."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.files import atomic_write
from utils import (
    equal_error_rate,
    frame_auc,
    frame_errors,
    minmax_normalize,
    normality_scores,
    point_score,
    psnr_from_mse,
    smooth_scores,
)


def test_psnr_of_known_mse() -> None:
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(1.0) == pytest.approx(0.0)


def test_frame_errors_work_on_the_unit_scale() -> None:
    prediction = torch.tensor([[-1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0]])
    # (0 - 1)^2 = 1 and (1 - 1)^2 = 0 after mapping [-1, 1] to [0, 1].
    assert frame_errors(prediction, target).tolist() == [[1.0, 0.0]]


def test_point_score_weights_errors_by_one_minus_exp() -> None:
    errors = torch.tensor([0.0, 0.5, 2.0])
    weights = [0.0, 1 - math.exp(-0.5), 1 - math.exp(-2.0)]
    expected = (weights[1] * 0.5 + weights[2] * 2.0) / (weights[1] + weights[2])
    assert point_score(errors) == pytest.approx(expected)


def test_minmax_and_fusion_by_hand() -> None:
    assert minmax_normalize(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax_normalize(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]
    psnr = np.array([30.0, 20.0, 25.0])  # normalised: 1, 0, 0.5
    distance = np.array([0.1, 0.3, 0.2])  # normalised: 0, 1, 0.5 -> inverted 1, 0, 0.5
    fused = normality_scores(psnr, distance, lambda_=0.6)
    assert fused.tolist() == pytest.approx([1.0, 0.0, 0.5])
    fused = normality_scores(psnr, np.array([0.3, 0.1, 0.2]), lambda_=0.6)
    assert fused.tolist() == pytest.approx([0.6, 0.4, 0.5])


def test_auc_counts_correctly_ordered_pairs() -> None:
    # normal frames should score high; 1 = abnormal
    normality = np.array([0.9, 0.8, 0.3, 0.85, 0.1])
    labels = np.array([0, 0, 1, 1, 1])
    # pairs (normal, abnormal) ranked right: 0.9 beats all 3, 0.8 beats 0.3 and 0.1 -> 5 of 6
    assert frame_auc(normality, labels) == pytest.approx(5 / 6)


def test_eer_of_perfect_and_inverted_detectors() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert equal_error_rate(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), labels) == pytest.approx(0)
    assert equal_error_rate(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), labels) == pytest.approx(1)


def test_smoothing_keeps_constants_and_spreads_a_spike() -> None:
    assert smooth_scores(np.full(9, 0.5), 2.0) == pytest.approx(np.full(9, 0.5))
    spike = np.zeros(21)
    spike[10] = 1.0
    smoothed = smooth_scores(spike, 2.0)
    assert smoothed.sum() == pytest.approx(1.0, abs=1e-6)
    assert smoothed[10] == pytest.approx(1 / (2.0 * math.sqrt(2 * math.pi)), rel=0.02)
    assert smooth_scores(spike, 0).tolist() == spike.tolist()


def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out.txt", lambda p: p.write_text("x"))
    finally:
        os.umask(previous)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
