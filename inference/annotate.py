"""The annotated video of ``detect.py --video_out``: each frame beside its prediction-error
heat map and a running plot of the normality score with the threshold."""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import cv2
import numpy as np

from common.errors import InputError
from common.files import PendingFile
from data.sources import to_bgr
from inference.streaming import FrameScore

# The heat map saturates at this multiple of the mean squared error of normal frames.
HEAT_SATURATION = 8.0


def _even(value: float) -> int:
    # mp4v needs even frame sizes.
    return max(2, int(round(value / 2)) * 2)


class AnnotatedVideo:
    """The ``--video_out`` writer: frame | error heat map | running normality plot."""

    def __init__(
        self,
        path: str | os.PathLike,
        first_frame: np.ndarray,
        fps: float,
        threshold: float,
        calibration: dict[str, Any],
        plot_frames: int = 150,
    ) -> None:
        self.pending = PendingFile(path)
        height, width = first_frame.shape[:2]
        self.panel_h = _even(max(240, min(height, 480)))
        self.panel_w = _even(self.panel_h * width / height)
        self.plot_w = _even(max(self.panel_h * 1.5, 240))
        self.size = (2 * self.panel_w + self.plot_w, self.panel_h)
        self.threshold = threshold
        quantiles = calibration["normality_quantiles"]
        self.normal_top = float(quantiles[-2])  # the 99.9 % quantile: most normal frames
        normal_mse = 10 ** (-calibration["psnr_mean"] / 10)
        self.heat_scale = 255.0 / (HEAT_SATURATION * normal_mse)
        self.history: deque[tuple[float, bool] | None] = deque(maxlen=max(2, plot_frames))
        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
        self.writer = cv2.VideoWriter(str(self.pending.tmp), fourcc, fps, self.size)
        if not self.writer.isOpened():
            self.pending.discard()
            raise InputError(f"cannot write the video {path}; use a .mp4 path in a writable folder")

    def write(
        self,
        image: np.ndarray,
        video: str,
        frame: int,
        score: FrameScore | None,
        normality: float | None,
        anomaly: bool,
    ) -> None:
        panel = cv2.resize(to_bgr(image), (self.panel_w, self.panel_h))
        if anomaly:
            cv2.rectangle(panel, (0, 0), (self.panel_w - 1, self.panel_h - 1), (0, 0, 255), 6)
            _text(panel, "ANOMALY", (10, self.panel_h - 14), (0, 0, 255), 0.8)
        _text(panel, f"{video} #{frame}", (8, 22), (255, 255, 255), 0.5)
        if score is not None and score.error_map is not None:
            heat = np.clip(score.error_map * self.heat_scale, 0, 255).astype(np.uint8)
            heat = cv2.resize(heat, (self.panel_w, self.panel_h))
            heat = cv2.applyColorMap(heat, cv2.COLORMAP_JET)
        else:
            heat = np.zeros((self.panel_h, self.panel_w, 3), np.uint8)
            _text(heat, "warming up", (10, self.panel_h // 2), (200, 200, 200), 0.6)
        _text(heat, "prediction error", (8, 22), (255, 255, 255), 0.5)
        self.history.append(None if normality is None else (normality, anomaly))
        canvas = np.concatenate([panel, heat, self._plot(normality)], axis=1)
        self.writer.write(canvas)

    def _plot(self, current: float | None) -> np.ndarray:
        """The normality of the last ``plot_frames`` frames, threshold in red, drawn with cv2
        primitives (a matplotlib figure per frame would cost far more than scoring)."""
        h, w = self.panel_h, self.plot_w
        plot = np.full((h, w, 3), 30, np.uint8)
        values = [entry[0] for entry in self.history if entry is not None]
        top = max([self.normal_top, *values])
        headroom = top - self.threshold
        # Show at least half the normal range below the threshold, and at most three times
        # it, so a strong anomaly does not flatten the normal part of the curve; deeper
        # values are drawn at the bottom edge.
        bottom = max(min([self.threshold - 0.5 * headroom, *values]), self.threshold - 3 * headroom)
        span = max(top - bottom, 1e-6)
        margin_top, margin_bottom = 28, 10
        offset = self.history.maxlen - len(self.history)  # newest frame at the right edge

        def y_of(value: float) -> int:
            fraction = (top - min(max(value, bottom), top)) / span
            return int(round(margin_top + fraction * (h - margin_top - margin_bottom)))

        def x_of(index: int) -> int:
            return int(round((index + offset) * (w - 1) / (self.history.maxlen - 1)))

        y_threshold = y_of(self.threshold)
        cv2.line(plot, (0, y_threshold), (w - 1, y_threshold), (0, 0, 255), 1, cv2.LINE_AA)
        _text(plot, "threshold", (w - 80, y_threshold - 5), (0, 0, 255), 0.4)
        previous = None
        for index, entry in enumerate(self.history):
            if entry is None:
                previous = None
                continue
            point = (x_of(index), y_of(entry[0]))
            if previous is not None:
                cv2.line(plot, previous, point, (230, 230, 230), 1, cv2.LINE_AA)
            if entry[1]:
                cv2.circle(plot, point, 2, (0, 0, 255), -1, cv2.LINE_AA)
            previous = point
        label = "normality" if current is None else f"normality {current:+.2f}"
        _text(plot, label, (8, 18), (255, 255, 255), 0.45)
        return plot

    def release(self) -> None:
        """Finish the file under its temporary name (``self.pending``, committed by the
        caller together with the run's other outputs)."""
        self.writer.release()


def _text(
    image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple, scale: float
) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
