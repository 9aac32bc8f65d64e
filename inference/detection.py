"""Detection on footage: score sources as they stream, decide per frame against a calibrated
threshold, and write the outputs through one :class:`DetectionOutputs` that commits them all
together (also after Ctrl-C or SIGTERM, for the frames scored so far) or none of them."""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.files import PendingFile
from data.frame_folders import find_split_dir, list_videos
from data.labels import load_frame_labels
from data.sources import FrameSource, image_folder_source
from inference.annotate import AnnotatedVideo
from inference.calibration import normality_from_calibration, threshold_for_rate
from inference.config import FALSE_ALARM_RATE
from inference.events import EventTracker, decision_metrics
from inference.streaming import FrameScore, StreamingScorer, iter_scores

CSV_FIELDS = ("video", "frame", "psnr", "feature_distance", "normality", "anomaly")
_KEPT = ("frame", "psnr", "distance", "normality", "anomaly")


@dataclass
class DetectionResult:
    """What :func:`detect` found; the per-frame arrays are kept only with ``keep_scores``."""

    frames: int = 0  # scored frames
    anomalous_frames: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = 0.0
    seconds: float = 0.0
    stop: KeyboardInterrupt | None = None  # Ctrl-C or SIGTERM (common.cli.Terminated)
    per_video: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        return self.stop is not None

    def record(self, video: str, score: FrameScore, normality: float, anomaly: bool) -> None:
        """Keep one scored frame's values under its video."""
        values = (score.frame, score.psnr, score.feature_distance, normality, int(anomaly))
        kept = self.per_video.setdefault(video, {key: [] for key in _KEPT})
        for key, value in zip(_KEPT, values, strict=True):
            kept[key].append(value)


class DetectionOutputs:
    """The files of one detection run, each written under a temporary name beside its
    destination: the per-frame CSV and the annotated video as frames arrive, the events and
    the report at the end. :meth:`commit` puts them all in place; :meth:`discard` (after a
    failure) removes them all, so a run never leaves some outputs new and others old.

    Args:
        scores: per-frame CSV (``CSV_FIELDS``), or None.
        video: annotated MP4 (frame | error heat map | running score plot), or None.
        events, report: JSON files written by :meth:`commit`, or None.
        plot_frames: frames shown in the video's running score plot.
    """

    def __init__(
        self,
        scores: str | os.PathLike | None = None,
        video: str | os.PathLike | None = None,
        events: str | os.PathLike | None = None,
        report: str | os.PathLike | None = None,
        plot_frames: int = 150,
    ) -> None:
        self.video_path, self.plot_frames = video, plot_frames
        self.annotated: AnnotatedVideo | None = None
        self.calibration: dict[str, Any] = {}
        self.threshold = 0.0
        self.json_files = {key: path for key, path in (("events", events), ("report", report))}
        self.scores = PendingFile(scores) if scores else None
        self._handle = (
            open(self.scores.tmp, "w", newline="", encoding="utf-8") if self.scores else None
        )
        self._rows = csv.writer(self._handle) if self._handle else None
        if self._rows is not None:
            self._rows.writerow(CSV_FIELDS)

    def start(self, calibration: dict[str, Any], threshold: float) -> None:
        """The calibration and threshold the decisions use (drawn in the video)."""
        self.calibration, self.threshold = calibration, threshold

    def add(
        self,
        source: FrameSource,
        image: np.ndarray,
        frame_index: int,
        score: FrameScore | None,
        decision: tuple[float | None, bool],
    ) -> None:
        """One frame of ``source``: its CSV row (when scored) and its video frame."""
        normality, anomaly = decision
        if self._rows is not None and score is not None:
            self._rows.writerow(
                [source.name, score.frame, f"{score.psnr:.6f}", f"{score.feature_distance:.8g}",
                 f"{normality:.6f}", int(anomaly)]
            )  # fmt: skip
        if self.video_path is None:
            return
        if self.annotated is None:
            self.annotated = AnnotatedVideo(
                self.video_path, image, source.fps or 25.0, self.threshold, self.calibration,
                self.plot_frames,
            )  # fmt: skip
        self.annotated.write(image, source.name, frame_index, score, normality, anomaly)

    def _close_streams(self) -> list[PendingFile]:
        pending = []
        if self._handle is not None:
            self._handle.close()
            pending.append(self.scores)
        if self.annotated is not None:
            self.annotated.release()
            pending.append(self.annotated.pending)
        return pending

    def commit(self, events: list[dict[str, Any]], report: dict[str, Any] | None = None) -> None:
        """Finish every file and put them all in place."""
        pending = self._close_streams()
        contents = {"events": events, "report": report}
        try:
            for key, path in self.json_files.items():
                if path:
                    file = PendingFile(path)
                    pending.append(file)
                    file.tmp.write_text(json.dumps(contents[key], indent=2), encoding="utf-8")
        except BaseException:
            for file in pending:
                file.discard()
            raise
        for file in pending:
            file.commit()
        if self.video_path is not None and self.annotated is None:
            print(
                f"no frame arrived, so no video was written to {self.video_path}", file=sys.stderr
            )

    def discard(self) -> None:
        """Remove every unfinished file."""
        for file in self._close_streams():
            file.discard()


def decide(
    score: FrameScore | None, calibration: dict[str, Any], threshold: float
) -> tuple[float | None, bool]:
    """A scored frame's calibrated normality and whether it falls below ``threshold``;
    ``(None, False)`` for a frame without a score (the first ``t_length - 1`` of a video)."""
    if score is None:
        return None, False
    normality = float(normality_from_calibration(score.psnr, score.feature_distance, calibration))
    return normality, normality < threshold


def detect(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    calibration: dict[str, Any],
    false_alarm_rate: float = FALSE_ALARM_RATE,
    outputs: DetectionOutputs | None = None,
    *,
    max_frames: int | None = None,
    keep_scores: bool = False,
    total_frames: int | None = None,
) -> DetectionResult:
    """Score ``sources`` as they stream and decide per frame (calibrated normality below the
    threshold at ``false_alarm_rate`` = anomaly), handing every frame to ``outputs``. Ctrl-C
    or SIGTERM ends the scoring early (``result.stop``); the caller commits the outputs.
    With ``keep_scores`` the per-video values are returned in ``per_video``."""
    threshold = threshold_for_rate(calibration, false_alarm_rate)
    if outputs is not None:
        outputs.start(calibration, threshold)
    result, tracker, began = DetectionResult(threshold=threshold), EventTracker(), time.time()
    with tqdm(total=total_frames, desc="detecting", unit="frame", dynamic_ncols=True) as bar:
        try:
            for source, image, score in iter_scores(scorer, sources, bar, max_frames):
                normality, anomaly = decide(score, calibration, threshold)
                if score is not None:
                    result.frames += 1
                    result.anomalous_frames += int(anomaly)
                    tracker.update(source.name, score.frame, normality, anomaly)
                    if keep_scores:
                        result.record(source.name, score, normality, anomaly)
                if outputs is not None:
                    frame_index = scorer.frames_seen - 1
                    outputs.add(source, image, frame_index, score, (normality, anomaly))
                bar.set_postfix_str(
                    f"{source.name}, {result.anomalous_frames} anomalous", refresh=False
                )
        except KeyboardInterrupt as stop:
            result.stop = stop
            print(
                f"\ninterrupted: keeping the {result.frames} frames scored so far", file=sys.stderr
            )
    tracker.close()
    result.events, result.seconds = tracker.events, time.time() - began
    return result


def score_dataset(
    scorer: StreamingScorer,
    calibration: dict[str, Any],
    dataset_dir: str | os.PathLike,
    label_path: str | os.PathLike | None = None,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    outputs: DetectionOutputs | None = None,
    max_frames: int | None = None,
) -> tuple[DetectionResult, dict[str, Any]]:
    """Detect on the testing videos of a benchmark frame tree and score the decisions
    against its frame labels (see :func:`decision_metrics`)."""
    dataset_dir = Path(dataset_dir)
    videos = list_videos(find_split_dir(dataset_dir, "testing"))
    labels_by_video = load_frame_labels(
        dataset_dir, videos, Path(label_path) if label_path else None
    )
    sources = [image_folder_source(video.name, video.frame_paths) for video in videos]
    result = detect(
        scorer, sources, calibration, false_alarm_rate, outputs, max_frames=max_frames,
        keep_scores=True, total_frames=sum(len(video) for video in videos),
    )  # fmt: skip
    normality, anomaly, labels, pairs = [], [], [], []
    for name, scores in result.per_video.items():
        normality.append(scores["normality"])
        anomaly.append(scores["anomaly"])
        labels.append(labels_by_video[name][np.asarray(scores["frame"], dtype=int)])
        pairs.append((np.asarray(scores["psnr"]), np.asarray(scores["distance"])))
    if not labels:
        raise InputError(f"no frame of {dataset_dir} could be scored; the videos are too short")
    metrics = decision_metrics(
        np.concatenate(normality),
        np.concatenate(anomaly),
        np.concatenate(labels),
        pairs,
        calibration["lambda"],
    )
    return result, metrics
