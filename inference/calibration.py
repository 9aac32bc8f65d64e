"""Calibrated anomaly scores for footage: thresholds that mean the same in every video.

The benchmark protocol min-max normalises PSNR and feature distance within each video after
seeing all of it: fine for an AUC, but the numbers mean something different in every video,
need the whole video first, and give no threshold (in a video without any anomaly the most
normal-looking frame still gets the lowest score, 0). Here the two measures are instead
standardised with statistics of normal footage, fixed once at calibration::

    z_psnr = (PSNR - mean_psnr) / std_psnr,   z_dist = (dist - mean_dist) / std_dist
    normality s = lambda * z_psnr - (1 - lambda) * z_dist        (lambda 0.6 by default)

(the benchmark's fusion ``lambda * minmax(PSNR) + (1 - lambda) * (1 - minmax(dist))`` with the
per-video min-max replaced by a fixed, normal-data standardisation; both are monotone in the
same direction, so s ranks frames within one video nearly as the benchmark score does.)
A frame is anomalous when s falls below a threshold chosen as a false-alarm rate on normal
data: the ``false_alarm_rate`` quantile (default 1 %) of s over the calibration frames, so about
that share of normal frames like the calibration footage is flagged. A calibration record holds
the means and standard deviations, lambda, gamma, the memory-update setting and a table of 1001
quantiles of s, so the threshold for another rate is read from the table without recalibrating.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.cli import exit_status
from common.devices import precision_name
from common.errors import InputError
from data.sources import FrameSource, array_source
from inference.config import FALSE_ALARM_RATE, GAMMA, LAMBDA
from inference.streaming import StreamingScorer, iter_scores
from model import LGNNet
from model import checkpoint as checkpoint_format

CALIBRATION_VERSION = 1
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 1001)


def _robust_std(values: np.ndarray) -> float:
    # A floor keeps z-scores finite on degenerate footage (e.g. a constant distance).
    return float(max(values.std(), 1e-6 * abs(values.mean()), 1e-12))


def calibration_from_scores(
    psnr: np.ndarray,
    distance: np.ndarray,
    lambda_: float = LAMBDA,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    **metadata: Any,
) -> dict[str, Any]:
    """The calibration record for per-frame PSNRs (dB) and feature distances of normal
    frames: their means and standard deviations, lambda, a 1001-entry quantile table of the
    normality s and the threshold at ``false_alarm_rate``. Plain floats and lists only."""
    psnr, distance = np.asarray(psnr, np.float64), np.asarray(distance, np.float64)
    if psnr.shape != distance.shape:
        raise InputError(f"{psnr.size} PSNRs but {distance.size} distances to calibrate on")
    check_enough_frames(psnr.size, false_alarm_rate, "calibration scored")
    calibration: dict[str, Any] = {
        "version": CALIBRATION_VERSION,
        "psnr_mean": float(psnr.mean()),
        "psnr_std": _robust_std(psnr),
        "distance_mean": float(distance.mean()),
        "distance_std": _robust_std(distance),
        "lambda": float(lambda_),
        "frames": int(psnr.size),
    }
    scores = normality_from_calibration(psnr, distance, calibration)
    calibration["normality_quantiles"] = [float(q) for q in np.quantile(scores, QUANTILE_LEVELS)]
    calibration["false_alarm_rate"] = float(false_alarm_rate)
    calibration["threshold"] = threshold_for_rate(calibration, false_alarm_rate)
    calibration.update(metadata)
    return calibration


def normality_from_calibration(
    psnr: np.ndarray | float, distance: np.ndarray | float, calibration: dict[str, Any]
) -> np.ndarray:
    """``s = λ·z(PSNR) − (1−λ)·z(distance)`` with the calibration's normal-data statistics;
    higher = more normal, 0 ≈ an average normal frame, units of standard deviations."""
    lam = calibration["lambda"]
    z_psnr = (np.asarray(psnr, np.float64) - calibration["psnr_mean"]) / calibration["psnr_std"]
    z_distance = (np.asarray(distance, np.float64) - calibration["distance_mean"]) / calibration[
        "distance_std"
    ]
    return lam * z_psnr - (1 - lam) * z_distance


def check_enough_frames(frames: int, false_alarm_rate: float, what: str) -> None:
    """Raise :class:`InputError` unless ``frames`` normal frames support a threshold at
    ``false_alarm_rate`` (:func:`minimum_frames`); ``what`` begins the message."""
    needed = max(2, minimum_frames(false_alarm_rate))
    if frames < needed:
        raise InputError(
            f"{what} {frames} normal frames; a false-alarm rate of {false_alarm_rate:g} needs "
            f"at least {needed}: give more normal footage (each video scores its frames after "
            "the first t_length - 1) or a larger false-alarm rate"
        )


def minimum_frames(false_alarm_rate: float) -> int:
    """How many normal frames a threshold at ``false_alarm_rate`` needs: at least one of them
    must fall below it (1 / rate, rounded up); with fewer the threshold would only repeat
    the lowest score seen."""
    return math.ceil(1.0 / false_alarm_rate - 1e-9)


def threshold_for_rate(calibration: dict[str, Any], false_alarm_rate: float) -> float:
    """The normality below which a frame is anomalous, so that ``false_alarm_rate`` of the
    calibration frames fall below it (linear interpolation in the quantile table). A rate
    the calibration's number of frames cannot support is refused (:func:`minimum_frames`)."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise InputError(f"--false_alarm_rate {false_alarm_rate} must lie strictly between 0 and 1")
    frames = calibration.get("frames")
    if frames is not None and frames < minimum_frames(false_alarm_rate):
        raise InputError(
            f"the calibration holds {frames} normal frames; a false-alarm rate of "
            f"{false_alarm_rate:g} needs at least {minimum_frames(false_alarm_rate)}: "
            f"calibrate on more normal footage or raise --false_alarm_rate to at least "
            f"{1 / frames:.3g}"
        )
    table = np.asarray(calibration["normality_quantiles"], np.float64)
    levels = np.linspace(0.0, 1.0, len(table))
    return float(np.interp(false_alarm_rate, levels, table))


def collect_scores(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    max_frames: int | None = None,
    desc: str = "calibrating",
) -> tuple[np.ndarray, np.ndarray, int, str | None]:
    """PSNRs and feature distances of every scorable frame of ``sources``, the number of
    videos, and the signal that ended the collection early (``SIGINT`` for Ctrl-C,
    ``SIGTERM``; None when it ran to the end; what was gathered is kept)."""
    psnrs: list[float] = []
    distances: list[float] = []
    names: set[str] = set()
    interrupted = None
    bar = tqdm(desc=desc, unit="frame", dynamic_ncols=True)
    try:
        for source, _, score in iter_scores(scorer, sources, bar, max_frames):
            if score is not None:
                psnrs.append(score.psnr)
                distances.append(score.feature_distance)
                names.add(source.name)
    except KeyboardInterrupt as stop:
        interrupted = "SIGTERM" if exit_status(stop) == 143 else "SIGINT"
        print(f"\ninterrupted: using the {len(psnrs)} frames scored so far", file=sys.stderr)
    finally:
        bar.close()
    return np.array(psnrs), np.array(distances), len(names), interrupted


def calibrate(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    lambda_: float = LAMBDA,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    max_frames: int | None = None,
    source_name: str = "",
) -> dict[str, Any]:
    """Run ``scorer`` over normal videos and return their calibration record (see
    :func:`calibration_from_scores`), including the scorer's settings."""
    if not 0.0 <= lambda_ <= 1.0:
        raise InputError(f"--lambda {lambda_} must lie in [0, 1]")
    psnr, distance, videos, stop = collect_scores(scorer, sources, max_frames)
    if len(psnr) * false_alarm_rate >= 1 and len(psnr) * false_alarm_rate < 10:
        print(
            f"note: {len(psnr)} calibration frames estimate a false-alarm rate of "
            f"{false_alarm_rate} from about {len(psnr) * false_alarm_rate:.1f} frames; more "
            "normal footage gives a steadier threshold",
            file=sys.stderr,
        )
    return calibration_from_scores(
        psnr,
        distance,
        lambda_,
        false_alarm_rate,
        videos=videos,
        gamma=scorer.gamma,
        memory_update=scorer.memory_update,
        h=scorer.height,
        w=scorer.width,
        t_length=scorer.model.t_length,
        precision=precision_name(scorer.dtype),
        source=source_name,
        **({"interrupted": stop} if stop else {}),
    )


def describe_calibration(calibration: dict[str, Any]) -> str:
    """One line: the frames it was measured on, the statistics and the threshold."""
    return (
        f"calibrated on {calibration['frames']} frames of {calibration['videos']} videos: "
        f"PSNR {calibration['psnr_mean']:.2f} ± {calibration['psnr_std']:.2f} dB, feature "
        f"distance {calibration['distance_mean']:.4g} ± {calibration['distance_std']:.2g}; "
        f"threshold {calibration['threshold']:.3f} at a {calibration['false_alarm_rate']:.2%} "
        "false-alarm rate"
    )


def save_calibration(
    checkpoint: dict[str, Any], calibration: dict[str, Any], path: str | os.PathLike
) -> None:
    """Write ``checkpoint`` with ``calibration`` added to ``path`` atomically."""
    checkpoint_format.write(checkpoint_format.with_calibration(checkpoint, calibration), path)


def calibrate_training_run(
    checkpoint_path: str | os.PathLike,
    model: LGNNet,
    items: torch.Tensor,
    dataset: Any,
    dtype: torch.dtype | None = None,
    gamma: float = GAMMA,
    lambda_: float = LAMBDA,
    false_alarm_rate: float = FALSE_ALARM_RATE,
) -> dict[str, Any]:
    """Calibrate a freshly trained model on its training videos (``train.py --calibrate``).

    Args:
        checkpoint_path: the run's ``checkpoint.pth``; rewritten atomically with the
            calibration added.
        dataset: a ``data.frames.FrameWindowDataset`` (its decoded frames are reused).
    """
    checkpoint = checkpoint_format.read(checkpoint_path)  # before the work: a bad file fails now
    check_enough_frames(len(dataset), false_alarm_rate, "the training videos hold")
    scorer = StreamingScorer(model, items, dataset.height, dataset.width, gamma, True, dtype)
    sources = [
        array_source(video.name, dataset.video_frames(index))
        for index, video in enumerate(dataset.videos)
    ]
    calibration = calibrate(
        scorer, sources, lambda_, false_alarm_rate, source_name="training videos"
    )
    save_calibration(checkpoint, calibration, checkpoint_path)
    print(
        f"calibrated on {calibration['frames']} training frames: threshold "
        f"{calibration['threshold']:.3f} at a {false_alarm_rate:.2%} false-alarm rate",
        file=sys.stderr,
    )
    return calibration


def checked_calibration(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
    """The calibration stored in ``checkpoint``; an error naming ``source`` and the fix when
    there is none or it was written by another version."""
    calibration = checkpoint.get("calibration")
    if not isinstance(calibration, dict):
        raise InputError(
            f"{source} holds no calibration; run `python detect.py --calibrate --checkpoint "
            f"{source} --input <normal videos>` or train with `train.py --calibrate`"
        )
    if calibration.get("version") != CALIBRATION_VERSION:
        raise InputError(
            f"{source} holds calibration version {calibration.get('version')}, this detect.py "
            f"reads version {CALIBRATION_VERSION}; run detect.py --calibrate again"
        )
    return calibration
