"""Scoring footage from Python, without the command lines::

    from inference import load_scorer

    scorer = load_scorer("exp/ped2/log/checkpoint.pth")  # a path, URL or published name
    scores = scorer.score("street.mp4")  # a video file, a frame folder or frames in memory
    scores.psnr, scores.feature_distance, scores.normality  # one value per predicted frame

What ``score`` accepts (anything else is refused with one line saying what was given):

- a path to a video file or to a folder of frame images;
- frames in memory: a NumPy array, a torch tensor (any device) or a list of equal frames,
  shaped ``(T, H, W, 3)`` in **BGR** order (OpenCV's; flip RGB with ``rgb[..., ::-1]``) or
  grey ``(T, H, W)`` / ``(T, H, W, 1)`` (copied to B, G and R), as integers in [0, 255]
  (any integer dtype: the same values as uint8) or floats in [0, 1] (``round(x * 255)``), of
  any size (resized to the trained size); at least ``t_length`` frames. Four channels
  (BGRA/RGBA: drop alpha yourself), NaN or infinite values and values out of range are
  refused (``data.sources.checked_frames``).

The numbers are those of ``evaluate.py`` on the same frames: the benchmark protocol (test-time
memory updates below ``gamma``, normality fused by per-video min-max normalisation). Each call
starts from the trained memory, as ``detect.py`` scores each video; ``evaluate.py`` instead
carries the memory from one test video to the next, which ``score(..., carry_memory=True)``
does across calls (``reset_memory()`` goes back to the trained items). When the checkpoint
holds a calibration (``detect.py --calibrate`` or ``train.py --calibrate``),
``calibrated_normality`` and ``anomaly`` are those of ``detect.py`` as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.devices import resolve_device, resolve_precision
from common.errors import InputError
from data.sources import FrameSource, array_source, checked_frames, open_input, preprocess
from inference.calibration import normality_from_calibration, threshold_for_rate
from inference.config import FALSE_ALARM_RATE, GAMMA, LAMBDA
from inference.video import evaluate_video
from model.pretrained import load_weights
from model.weights_file import LoadedModel
from utils import normality_scores


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
        gamma: float = GAMMA,
        memory_update: bool = True,
        lambda_: float = LAMBDA,
        false_alarm_rate: float = FALSE_ALARM_RATE,
    ) -> None:
        self.model, self.items = loaded.model.eval(), loaded.items
        self.height, self.width = loaded.height, loaded.width
        self.device = loaded.items.device
        self.dtype = resolve_precision(precision, self.device, flag="precision")
        self.gamma, self.memory_update, self.lambda_ = gamma, memory_update, lambda_
        self.calibration = loaded.checkpoint.get("calibration")
        self.false_alarm_rate = false_alarm_rate
        self.carried_items = self.items

    def reset_memory(self) -> None:
        """Go back to the trained memory items for the next ``carry_memory`` call."""
        self.carried_items = self.items

    def score(self, video: object, chunk: int = 64, carry_memory: bool = False) -> FootageScores:
        """Score one video (see the module notes for what ``video`` may be).

        Frames are decoded and scored ``chunk`` windows at a time, so long videos need not
        fit in memory; the scores equal one pass over the whole video. The memory starts
        from the trained items, or with ``carry_memory`` from where the previous
        ``carry_memory`` call left it (as ``evaluate.py`` goes from one video to the next).
        """
        source = self._source(video)
        context = self.model.t_length - 1
        psnr, distance, updates = [], [], 0
        items = self.carried_items if carry_memory else self.items
        buffered: list[torch.Tensor] = []
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
        if carry_memory:
            self.carried_items = items
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
    def _source(video: object) -> FrameSource:
        if isinstance(video, str | os.PathLike):
            sources = open_input(str(video), what="video")
            if len(sources) != 1:
                raise InputError(f"{video} holds {len(sources)} videos; score them one at a time")
            return sources[0]
        return array_source("array", checked_frames(video))


def load_scorer(
    checkpoint: str | os.PathLike | None = None,
    *,
    model_dir: str | os.PathLike | None = None,
    m_items_dir: str | os.PathLike | None = None,
    device: str = "auto",
    **settings: Any,
) -> Scorer:
    """A :class:`Scorer` for a ``train.py`` checkpoint (path, URL or published name), or for
    the reference release's ``model_dir`` + ``m_items_dir`` pair (256x256 unless trained
    otherwise: pass a checkpoint for other sizes). Every file is read as data only.
    ``settings`` are :class:`Scorer`'s (``precision``, ``gamma``, ``memory_update``,
    ``lambda_``, ``false_alarm_rate``)."""
    if checkpoint is None and not (model_dir and m_items_dir):
        raise InputError("give a checkpoint, or both model_dir and m_items_dir")
    loaded = load_weights(
        checkpoint,
        Path(model_dir) if model_dir else None,
        Path(m_items_dir) if m_items_dir else None,
        device=resolve_device(device, flag="device"),
        reference_names=("model_dir", "m_items_dir"),
    )
    return Scorer(loaded, **settings)
