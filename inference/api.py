"""Scoring footage from Python, without the command lines::

    from inference import load_scorer

    scorer = load_scorer("exp/ped2/log/checkpoint.pth")  # a path, URL or published name
    scores = scorer.score("street.mp4")  # a video file, a frame folder or a (T, H, W, 3) array
    scores.psnr, scores.feature_distance, scores.normality  # one value per predicted frame

The numbers are those of ``evaluate.py`` on the same frames: the benchmark protocol (test-time
memory updates below ``gamma``, normality fused by per-video min-max normalisation). When the
checkpoint holds a calibration (``detect.py --calibrate`` or ``train.py --calibrate``),
``calibrated_normality`` and ``anomaly`` are those of ``detect.py`` as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.sources import FrameSource, array_source, open_input, preprocess
from inference.calibration import normality_from_calibration, threshold_for_rate
from inference.test_time import DEFAULT_GAMMA, DEFAULT_LAMBDA
from inference.video import evaluate_video
from model.checkpoint import LoadedModel, load_for_inference
from utils import InputError, normality_scores, resolve_device, resolve_precision


@dataclass
class FootageScores:
    """Per-frame scores of one video; frames before the first full window have none."""

    frame: np.ndarray  # (F,) 0-based positions of the scored frames
    psnr: np.ndarray  # (F,) dB of the predicted frame
    feature_distance: np.ndarray  # (F,) squared query-to-nearest-item distance
    normality: np.ndarray  # (F,) in [0, 1], 1 = normal: evaluate.py's per-video fusion
    memory_updates: int  # frames that updated the memory (point score below gamma)
    calibrated_normality: np.ndarray | None = None  # (F,) detect.py's score, if calibrated
    anomaly: np.ndarray | None = None  # (F,) bool, calibrated score below the threshold


class Scorer:
    """A loaded LGN-Net with its memory and the scoring settings; see the module notes."""

    def __init__(
        self,
        loaded: LoadedModel,
        precision: str = "auto",
        gamma: float = DEFAULT_GAMMA,
        memory_update: bool = True,
        lambda_: float = DEFAULT_LAMBDA,
        false_alarm_rate: float = 0.01,
    ) -> None:
        self.model, self.items = loaded.model.eval(), loaded.items
        self.height, self.width = loaded.height, loaded.width
        self.device = loaded.items.device
        self.dtype = resolve_precision(precision, self.device)
        self.gamma, self.memory_update, self.lambda_ = gamma, memory_update, lambda_
        self.calibration = loaded.checkpoint.get("calibration")
        self.false_alarm_rate = false_alarm_rate

    def score(self, video: str | os.PathLike | np.ndarray, chunk: int = 64) -> FootageScores:
        """Score one video from the trained memory on: a video file, a folder of frames, or
        BGR uint8 frames ``(T, H, W, 3)`` of any size (resized to the trained size).

        Frames are decoded and scored ``chunk`` windows at a time, so long videos need not
        fit in memory; the scores equal one pass over the whole video.
        """
        source = self._source(video)
        context = self.model.t_length - 1
        psnr, distance, updates = [], [], 0
        items, buffered = self.items, []
        for image in source.frames():
            buffered.append(preprocess(image, self.height, self.width))
            if len(buffered) == chunk + context:
                items, updates = self._score_chunk(buffered, items, psnr, distance, updates)
                buffered = buffered[-context:]
        if len(buffered) > context:
            items, updates = self._score_chunk(buffered, items, psnr, distance, updates)
        if not psnr:
            raise InputError(
                f"{source.description} has fewer than the {context + 1} frames needed to score one"
            )
        psnr_array, distance_array = np.array(psnr), np.array(distance)
        scores = FootageScores(
            np.arange(context, context + len(psnr)),
            psnr_array,
            distance_array,
            normality_scores(psnr_array, distance_array, self.lambda_),
            updates,
        )
        if isinstance(self.calibration, dict):
            calibrated = normality_from_calibration(psnr_array, distance_array, self.calibration)
            threshold = threshold_for_rate(self.calibration, self.false_alarm_rate)
            scores.calibrated_normality, scores.anomaly = calibrated, calibrated < threshold
        return scores

    def _score_chunk(
        self,
        buffered: list[torch.Tensor],
        items: torch.Tensor,
        psnr: list[float],
        distance: list[float],
        updates: int,
    ) -> tuple[torch.Tensor, int]:
        frames = torch.stack(buffered).to(self.device)
        result = evaluate_video(
            self.model, frames, items, self.gamma, self.memory_update, dtype=self.dtype
        )
        psnr.extend(result.psnr.tolist())
        distance.extend(result.feature_distance.tolist())
        return result.items, updates + result.memory_updates

    @staticmethod
    def _source(video: str | os.PathLike | np.ndarray) -> FrameSource:
        if isinstance(video, np.ndarray):
            return array_source("array", video)
        sources = open_input(str(video))
        if len(sources) != 1:
            raise InputError(f"{video} holds {len(sources)} videos; score them one at a time")
        return sources[0]


def load_scorer(
    checkpoint: str | os.PathLike | None = None,
    *,
    model_dir: str | os.PathLike | None = None,
    m_items_dir: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    gamma: float = DEFAULT_GAMMA,
    memory_update: bool = True,
    lambda_: float = DEFAULT_LAMBDA,
    false_alarm_rate: float = 0.01,
) -> Scorer:
    """A :class:`Scorer` for a ``train.py`` checkpoint (path, URL or published name), or for
    the reference release's ``model_dir`` + ``m_items_dir`` pair (256x256 unless trained
    otherwise: pass a checkpoint for other sizes)."""
    loaded = load_for_inference(
        checkpoint,
        Path(model_dir) if model_dir else None,
        Path(m_items_dir) if m_items_dir else None,
        device=resolve_device(device),
    )
    return Scorer(loaded, precision, gamma, memory_update, lambda_, false_alarm_rate)
