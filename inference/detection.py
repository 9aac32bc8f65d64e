"""Detection on footage: score sources as they stream, decide per frame against a calibrated
threshold, and write the per-frame CSV, the events and the annotated video as it goes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.frames import find_split_dir, list_videos
from data.labels import load_frame_labels
from data.sources import FrameSource, image_folder_source
from inference.annotate import AnnotatedVideo
from inference.calibration import normality_from_calibration, threshold_for_rate
from inference.events import EventTracker, decision_metrics
from inference.streaming import StreamingScorer, iter_scores
from utils import InputError, PendingFile

CSV_FIELDS = ("video", "frame", "psnr", "feature_distance", "normality", "anomaly")


@dataclass
class DetectionResult:
    """What :func:`detect` found; the per-frame arrays are kept only with ``keep_scores``."""

    frames: int = 0  # scored frames
    anomalous_frames: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    threshold: float = 0.0
    seconds: float = 0.0
    stopped_early: bool = False
    per_video: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def detect(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    calibration: dict[str, Any],
    false_alarm_rate: float = 0.01,
    csv_path: str | os.PathLike | None = None,
    video_out: str | os.PathLike | None = None,
    plot_frames: int = 150,
    max_frames: int | None = None,
    keep_scores: bool = False,
    total_frames: int | None = None,
) -> DetectionResult:
    """Score ``sources`` as they stream and decide per frame (normality below the threshold
    at ``false_alarm_rate`` = anomaly); writes the CSV and the annotated video as it goes
    (committed at the end, also after Ctrl-C). With ``keep_scores`` the per-video frame
    indices, PSNRs, distances, normalities and decisions are returned in ``per_video``."""
    threshold = threshold_for_rate(calibration, false_alarm_rate)
    result = DetectionResult(threshold=threshold)
    tracker = EventTracker()
    pending_csv = PendingFile(csv_path) if csv_path else None
    csv_handle = open(pending_csv.tmp, "w", encoding="utf-8") if pending_csv else None
    annotated: AnnotatedVideo | None = None
    began = time.time()
    bar = tqdm(total=total_frames, desc="detecting", unit="frame", dynamic_ncols=True)
    ok = False
    try:
        if csv_handle is not None:
            csv_handle.write(",".join(CSV_FIELDS) + "\n")
        try:
            for source, image, score in iter_scores(scorer, sources, bar, max_frames):
                normality, anomaly = None, False
                if score is not None:
                    normality = float(
                        normality_from_calibration(score.psnr, score.feature_distance, calibration)
                    )
                    anomaly = normality < threshold
                    result.frames += 1
                    result.anomalous_frames += int(anomaly)
                    tracker.update(source.name, score.frame, normality, anomaly)
                    if csv_handle is not None:
                        csv_handle.write(
                            f"{source.name},{score.frame},{score.psnr:.6f},"
                            f"{score.feature_distance:.8g},{normality:.6f},{int(anomaly)}\n"
                        )
                    if keep_scores:
                        video = result.per_video.setdefault(
                            source.name,
                            {k: [] for k in ("frame", "psnr", "distance", "normality", "anomaly")},
                        )
                        for key, value in (
                            ("frame", score.frame),
                            ("psnr", score.psnr),
                            ("distance", score.feature_distance),
                            ("normality", normality),
                            ("anomaly", int(anomaly)),
                        ):
                            video[key].append(value)
                if video_out is not None:
                    if annotated is None:
                        annotated = AnnotatedVideo(
                            video_out,
                            image,
                            source.fps or 25.0,
                            threshold,
                            calibration,
                            plot_frames,
                        )
                    frame_index = scorer.frames_seen - 1
                    annotated.write(image, source.name, frame_index, score, normality, anomaly)
                bar.set_postfix_str(
                    f"{source.name}, {result.anomalous_frames} anomalous", refresh=False
                )
        except KeyboardInterrupt:
            result.stopped_early = True
            print(
                f"\ninterrupted: keeping the {result.frames} frames scored so far", file=sys.stderr
            )
        ok = True
    finally:
        bar.close()
        if csv_handle is not None:
            csv_handle.close()
            pending_csv.commit() if ok else pending_csv.discard()
        if annotated is not None:
            annotated.close(commit=ok)
    tracker.close()
    result.events = tracker.events
    result.seconds = time.time() - began
    if video_out is not None and annotated is None:
        print(f"no frame arrived, so no video was written to {video_out}", file=sys.stderr)
    return result


def score_dataset(
    scorer: StreamingScorer,
    calibration: dict[str, Any],
    dataset_dir: str | os.PathLike,
    label_path: str | os.PathLike | None = None,
    false_alarm_rate: float = 0.01,
    **detect_kwargs: Any,
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
        scorer,
        sources,
        calibration,
        false_alarm_rate,
        keep_scores=True,
        total_frames=sum(len(video) for video in videos),
        **detect_kwargs,
    )
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
