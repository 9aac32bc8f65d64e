"""Score your own footage with a trained LGN-Net: per-frame anomaly decisions on video files,
frame folders, network streams and cameras.

Examples::

    # once: calibrate the checkpoint on footage known to be normal (or train with --calibrate)
    python detect.py --calibrate --checkpoint exp/ped2/log/checkpoint.pth --input normal_videos/

    # then score anything
    python detect.py --checkpoint exp/ped2/log/checkpoint.pth --input street.mp4 \\
        --csv street.csv --events street_events.json --video_out street_annotated.mp4
    python detect.py --checkpoint ... --input frames_folder/          # sorted images
    python detect.py --checkpoint ... --input rtsp://camera.local/live  # stream URL
    python detect.py --checkpoint ... --input 0                         # camera index

``--input`` takes a video file, a folder of images (one video), a folder of videos or of
frame folders (several videos, scored one after another), a stream URL or a camera index.

Streaming. Frames are scored as they arrive, with memory bounded by a rolling window of
``t_length`` frames: once the window holds ``t_length`` frames, the first ``t_length - 1``
predict the last, exactly as in ``evaluate.py`` (same preprocessing: BGR, bilinear resize to
the trained size, x/127.5 - 1; same PSNR, feature distance and test-time memory update when a
frame's point score is below gamma; ``--memory_update off`` disables it). The first
``t_length - 1`` frames of every video have no score. Every video starts from the trained
memory, so a video's scores never depend on which videos were scored before it in the same
run (``evaluate.py`` instead carries the memory from one test video to the next).

Calibrated scores. The benchmark protocol min-max normalises PSNR and feature distance within
each video after seeing all of it: fine for an AUC, but the numbers mean something different
in every video, need the whole video first, and give no threshold (in a video without any
anomaly the most normal-looking frame still gets the lowest score, 0). Here the two measures
are instead standardised with statistics of normal footage, fixed once at calibration:

    z_psnr = (PSNR - mean_psnr) / std_psnr,   z_dist = (dist - mean_dist) / std_dist
    normality s = lambda * z_psnr - (1 - lambda) * z_dist        (lambda 0.6 by default)

(the benchmark's fusion ``lambda * minmax(PSNR) + (1 - lambda) * (1 - minmax(dist))`` with the
per-video min-max replaced by a fixed, normal-data standardisation; both are monotone in the
same direction, so s ranks frames within one video nearly as the benchmark score does.)
A frame is anomalous when s falls below a threshold chosen as a false-alarm rate on normal
data: the ``--false_alarm_rate`` quantile (default 1 %) of s over the calibration frames, so
about that share of normal frames like the calibration footage is flagged. Calibration runs
the same streaming scorer over normal videos and stores, in ``checkpoint["calibration"]``, the
means and standard deviations, lambda, gamma, the memory-update setting and a table of 1001
quantiles of s; ``--false_alarm_rate`` at detection time re-reads the threshold from that table
without recalibrating. Calibrate on footage from the same camera and conditions as the footage
you will score when you can: the statistics describe "normal" for the calibration videos.

Outputs (each written atomically; only frames with a score appear):
- ``--csv``: video, frame (0-based position in the video), psnr, feature_distance, normality,
  anomaly (1 = below the threshold);
- ``--events``: JSON list of runs of consecutive anomalous frames, {video, start, end (both
  inclusive frame indices), peak_frame, peak_score (the lowest normality in the run)};
- ``--video_out``: annotated MP4 with three panels: the frame (red border when anomalous),
  the prediction-error heat map (saturating at 8x the mean normal error) and a running plot of
  the normality score with the threshold line;
- ``--report``: JSON summary (and the metrics of ``--dataset``, below).

An input that ends before ``t_length`` frames (a short file, a stream that drops at once) is
reported on stderr; if no frame at all could be scored, the outputs are still written (empty
CSV and event list) and the exit status is 2. Ctrl-C, or ``--max_frames``, ends a live stream
cleanly: the outputs cover the frames scored so far (during ``--calibrate``, calibration uses
the frames collected so far). Unreadable inputs (missing path, corrupt video or image) stop
with a one-line error naming them.

Benchmarks. ``--dataset DIR`` (a frame tree with ``training/`` and ``testing/``, e.g. Ped2)
replaces ``--input``: ``--calibrate`` then uses the training videos only, and detection
scores the testing videos and reports, against the dataset's frame labels (or
``--label_path``), the precision, recall and F1 of the decisions, the AUC of the calibrated
scores and, for comparison, the AUC of the same PSNR/distance pairs with the benchmark's
per-video min-max normalisation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data.frames import (
    IMAGE_EXTENSIONS,
    find_split_dir,
    frames_to_tensor,
    list_videos,
    natural_sort_key,
)
from model import LGNNet
from model.test_time import score_next_frame
from utils import (
    InputError,
    atomic_write,
    autocast,
    frame_auc,
    normality_scores,
    resolve_device,
    resolve_precision,
    run_cli,
)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
CALIBRATION_VERSION = 1
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 1001)
DEFAULT_GAMMA = 0.009
DEFAULT_LAMBDA = 0.6
CSV_FIELDS = ("video", "frame", "psnr", "feature_distance", "normality", "anomaly")
# The heat map saturates at this multiple of the mean squared error of normal frames.
HEAT_SATURATION = 8.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("LGN-Net anomaly detection on videos and streams")
    source = parser.add_argument_group("input")
    source.add_argument(
        "--input",
        default=None,
        help="video file, folder of frames, folder of videos or frame folders, stream URL, "
        "or camera index",
    )
    source.add_argument(
        "--dataset",
        default=None,
        help="benchmark frame tree (training/ + testing/) instead of --input: --calibrate uses "
        "its training videos; detection scores its testing videos against their labels",
    )
    source.add_argument("--label_path", default=None, help="labels for --dataset (default: found)")
    source.add_argument(
        "--max_frames", type=int, default=None, help="stop after this many frames in all"
    )

    weights = parser.add_argument_group("weights")
    weights.add_argument("--checkpoint", default=None, help="checkpoint.pth written by train.py")
    weights.add_argument(
        "--model_dir", default=None, help="reference-layout weights (with --calibrate only)"
    )
    weights.add_argument(
        "--m_items_dir", default=None, help="reference-layout memory items (with --calibrate only)"
    )
    weights.add_argument("--h", type=int, default=None, help="frame height (default: as trained)")
    weights.add_argument("--w", type=int, default=None, help="frame width (default: as trained)")

    calibration = parser.add_argument_group("calibration")
    calibration.add_argument(
        "--calibrate",
        action="store_true",
        help="compute the normal-data statistics on --input (normal footage only) or on the "
        "training videos of --dataset, and store them in the checkpoint",
    )
    calibration.add_argument(
        "--output_checkpoint",
        default=None,
        help="with --calibrate: write the calibrated checkpoint here (default: in place)",
    )
    calibration.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=DEFAULT_LAMBDA,
        help="with --calibrate: weight of z(PSNR) against z(feature distance)",
    )

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--false_alarm_rate",
        type=float,
        default=0.01,
        help="share of normal frames flagged; sets the threshold (default 0.01)",
    )
    scoring.add_argument(
        "--gamma",
        type=float,
        default=None,
        help=f"test-time memory update threshold (default: as calibrated, else {DEFAULT_GAMMA})",
    )
    scoring.add_argument(
        "--memory_update",
        choices=("on", "off"),
        default=None,
        help="test-time memory update (default: as calibrated, else on)",
    )

    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--csv", default=None, help="per-frame scores and decisions (CSV)")
    outputs.add_argument("--events", default=None, help="anomalous events (JSON)")
    outputs.add_argument("--video_out", default=None, help="annotated video (MP4)")
    outputs.add_argument("--report", default=None, help="summary and metrics (JSON)")
    outputs.add_argument(
        "--plot_frames", type=int, default=150, help="frames shown in the running score plot"
    )

    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    run.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return parser


# --------------------------------------------------------------------------- frame sources


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Any decoded frame (grey ``(H, W)``/``(H, W, 1)``, BGR, BGRA) as uint8 BGR ``(H, W, 3)``."""
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def preprocess(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """A BGR frame of any size as the model sees it: ``(3, height, width)`` in [-1, 1]
    (bilinear resize, then x / 127.5 - 1: ``data.frames.decode_frame`` + ``frames_to_tensor``)."""
    resized = cv2.resize(to_bgr(image), (width, height), interpolation=cv2.INTER_LINEAR)
    return frames_to_tensor(resized)


@dataclass
class FrameSource:
    """One video to score: a name for the outputs and an iterator of BGR uint8 frames."""

    name: str
    description: str  # for messages, e.g. "video file clip.avi"
    frame_count: int | None = None  # when known up front
    fps: float | None = None
    kind: str = "video"  # "file", "stream", "camera", "images" or "array"
    _open: Callable[[], Iterator[np.ndarray]] | None = field(default=None, repr=False)

    def frames(self) -> Iterator[np.ndarray]:
        assert self._open is not None
        return self._open()


_UNREADABLE_FILE_FIX = (
    "the file is corrupt or in a format this OpenCV build cannot read; convert it "
    "(e.g. ffmpeg -i in.xyz out.mp4) or extract its frames into a folder"
)


def capture_source(target: str | int) -> FrameSource:
    """A source read with ``cv2.VideoCapture``: a video file path, a stream URL or a camera
    index. The capture is opened here, so an unreadable input fails before any scoring."""
    if isinstance(target, int):
        kind, description, name = "camera", f"camera {target}", f"camera{target}"
    elif "://" in target:
        kind, description, name = "stream", f"stream {target}", target.rstrip("/").split("/")[-1]
    else:
        kind, description, name = "file", f"video file {target}", Path(target).stem
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        fixes = {
            "camera": "check the camera index and that no other program holds the camera",
            "stream": "check the URL and that the stream is live",
            "file": _UNREADABLE_FILE_FIX,
        }
        raise InputError(f"cannot open {description}: {fixes[kind]}")
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "file" else 0
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if kind == "file":
        # Reopened when read, so a folder of many videos does not hold a decoder per file;
        # a camera or stream is kept open (reconnecting can be slow or lose frames).
        capture.release()

    def read() -> Iterator[np.ndarray]:
        reader = cv2.VideoCapture(target) if kind == "file" else capture
        count = 0
        try:
            while True:
                ok, image = reader.read()
                if not ok or image is None:
                    break
                count += 1
                yield to_bgr(image)
        finally:
            reader.release()
        if count == 0:
            fix = _UNREADABLE_FILE_FIX if kind == "file" else "check that it delivers frames"
            raise InputError(f"no frame could be decoded from {description}; {fix}")
        if kind == "file" and announced > count:
            warnings.warn(
                f"{description} ended after {count} of its {announced} announced frames; "
                "the file may be truncated",
                stacklevel=2,
            )
        elif kind != "file":
            print(f"{description} ended after {count} frames", file=sys.stderr)

    return FrameSource(
        name or "stream",
        description,
        announced if announced > 0 else None,
        fps if 0 < fps < 1000 else None,
        kind,
        read,
    )


def image_folder_source(name: str, paths: Sequence[Path]) -> FrameSource:
    """A video stored as image files, in the given order."""

    def read() -> Iterator[np.ndarray]:
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise InputError(f"cannot read image {path}; the file is corrupt or not an image")
            yield image

    folder = paths[0].parent if paths else Path(name)
    return FrameSource(name, f"frame folder {folder}", len(paths), None, "images", read)


def array_source(name: str, frames: np.ndarray) -> FrameSource:
    """Frames already in memory, uint8 ``(T, H, W, 3)`` BGR (e.g. a training set's)."""
    return FrameSource(
        name, f"video {name}", len(frames), None, "array", lambda: iter(np.asarray(frames))
    )


def _image_files(folder: Path) -> list[Path]:
    # Dot-files (e.g. macOS "._001.jpg") carry image extensions but hold no image.
    return sorted(
        (
            entry
            for entry in folder.iterdir()
            if entry.is_file()
            and entry.suffix.lower() in IMAGE_EXTENSIONS
            and not entry.name.startswith(".")
        ),
        key=lambda entry: natural_sort_key(entry.name),
    )


def open_input(spec: str) -> list[FrameSource]:
    """The videos named by ``--input``, in order (see the module notes for the forms)."""
    spec = str(spec).strip()
    path = Path(spec)
    if spec.isdigit() and not path.exists():
        return [capture_source(int(spec))]
    if "://" in spec:
        return [capture_source(spec)]
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise InputError(
                f"--input {path} is a single image; give the folder holding the video's frames"
            )
        return [capture_source(str(path))]
    if not path.is_dir():
        raise InputError(
            f"--input {spec} does not exist; give a video file, a folder of frames, a folder "
            "of videos, a stream URL or a camera index"
        )
    images = _image_files(path)
    if images:
        return [image_folder_source(path.name, images)]
    video_files = sorted(
        (e for e in path.iterdir() if e.is_file() and e.suffix.lower() in VIDEO_EXTENSIONS),
        key=lambda entry: natural_sort_key(entry.name),
    )
    if video_files:
        return [capture_source(str(video_file)) for video_file in video_files]
    if any(entry.is_dir() and not entry.name.startswith(".") for entry in path.iterdir()):
        return [image_folder_source(v.name, v.frame_paths) for v in list_videos(path)]
    raise InputError(
        f"--input folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}), videos "
        f"({', '.join(VIDEO_EXTENSIONS)}) or frame folders"
    )


def dataset_sources(dataset_dir: Path, split: str) -> list[FrameSource]:
    """Every video of one split of a benchmark frame tree, as image-folder sources."""
    videos = list_videos(find_split_dir(Path(dataset_dir), split))
    return [image_folder_source(video.name, video.frame_paths) for video in videos]


# --------------------------------------------------------------------------- streaming scorer


class FrameScore(NamedTuple):
    frame: int  # 0-based position of the predicted frame in its video
    psnr: float  # dB
    feature_distance: float
    error_map: np.ndarray | None  # (h, w) float32 squared error averaged over channels
    memory_updated: bool


class StreamingScorer:
    """Scores frames one at a time with a rolling window of ``t_length`` frames.

    Per predicted frame it runs exactly the steps of ``evaluate.evaluate_video`` (encode the
    ``t_length - 1`` input frames, read the memory and decode, PSNR of the prediction, feature
    distance, test-time memory update when the point score is below ``gamma``), so its PSNR
    and distances equal the benchmark's on the same frames and memory.
    """

    def __init__(
        self,
        model: LGNNet,
        items: torch.Tensor,
        height: int,
        width: int,
        gamma: float = DEFAULT_GAMMA,
        memory_update: bool = True,
        dtype: torch.dtype | None = None,
        keep_error_maps: bool = False,
    ) -> None:
        self.model = model.eval()
        self.trained_items = items
        self.height, self.width = int(height), int(width)
        self.gamma = float(gamma)
        self.memory_update = bool(memory_update)
        self.dtype = dtype
        self.keep_error_maps = keep_error_maps
        self.device = items.device
        self.window: deque[torch.Tensor] = deque(maxlen=model.t_length)
        self.start_video()

    def start_video(self) -> None:
        """Forget the window and go back to the trained memory items."""
        self.window.clear()
        self.items = self.trained_items
        self.frames_seen = 0

    @torch.no_grad()
    def push(self, image: np.ndarray) -> FrameScore | None:
        """Add the next BGR frame (any size); returns its score, or None while the window
        still fills (the first ``t_length - 1`` frames of a video)."""
        self.window.append(preprocess(image, self.height, self.width).to(self.device))
        self.frames_seen += 1
        if len(self.window) < self.model.t_length:
            return None
        inputs = torch.cat(list(self.window)[:-1], dim=0).unsqueeze(0)
        target = self.window[-1].unsqueeze(0)
        with autocast(self.device, self.dtype):
            encoded = self.model.encode(inputs)
        step = score_next_frame(
            self.model, encoded, target, self.items, self.gamma, self.memory_update, self.dtype
        )
        self.items = step.items
        error_map = step.errors[0].mean(0).cpu().numpy() if self.keep_error_maps else None
        return FrameScore(
            self.frames_seen - 1, step.psnr, step.feature_distance, error_map, step.updated
        )


def iter_scores(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    bar: tqdm | None = None,
    max_frames: int | None = None,
    on_video: Callable[[FrameSource], None] | None = None,
) -> Iterator[tuple[FrameSource, np.ndarray, FrameScore | None]]:
    """``(source, frame, score or None)`` for every frame of every source, each video starting
    from the trained memory; stops after ``max_frames`` frames in all."""
    total = 0
    for source in sources:
        scorer.start_video()
        if on_video is not None:
            on_video(source)
        if bar is not None:
            bar.set_postfix_str(source.name, refresh=False)
        for image in source.frames():
            yield source, image, scorer.push(image)
            total += 1
            if bar is not None:
                bar.update(1)
            if max_frames is not None and total >= max_frames:
                return
        if scorer.frames_seen < scorer.model.t_length:
            print(
                f"{source.description} has {scorer.frames_seen} frames, fewer than the "
                f"{scorer.model.t_length} needed to score one; nothing scored there",
                file=sys.stderr,
            )


# --------------------------------------------------------------------------- calibration


def _robust_std(values: np.ndarray) -> float:
    # A floor keeps z-scores finite on degenerate footage (e.g. a constant distance).
    return float(max(values.std(), 1e-6 * abs(values.mean()), 1e-12))


def calibration_from_scores(
    psnr: np.ndarray,
    distance: np.ndarray,
    lambda_: float = DEFAULT_LAMBDA,
    false_alarm_rate: float = 0.01,
    **metadata: Any,
) -> dict[str, Any]:
    """The calibration record for per-frame PSNRs (dB) and feature distances of normal
    frames: their means and standard deviations, lambda, a 1001-entry quantile table of the
    normality s and the threshold at ``false_alarm_rate``. Plain floats and lists only."""
    psnr, distance = np.asarray(psnr, np.float64), np.asarray(distance, np.float64)
    if psnr.size < 2 or psnr.shape != distance.shape:
        raise InputError(
            f"calibration needs the scores of at least 2 normal frames, got {psnr.size}; "
            "give longer normal videos (each needs more than t_length frames)"
        )
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


def threshold_for_rate(calibration: dict[str, Any], false_alarm_rate: float) -> float:
    """The normality below which a frame is anomalous, so that ``false_alarm_rate`` of the
    calibration frames fall below it (linear interpolation in the quantile table)."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise InputError(f"--false_alarm_rate {false_alarm_rate} must lie strictly between 0 and 1")
    table = np.asarray(calibration["normality_quantiles"], np.float64)
    levels = np.linspace(0.0, 1.0, len(table))
    return float(np.interp(false_alarm_rate, levels, table))


def collect_scores(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    max_frames: int | None = None,
    desc: str = "calibrating",
) -> tuple[np.ndarray, np.ndarray, int]:
    """PSNRs and feature distances of every scorable frame of ``sources``, and the number of
    videos; Ctrl-C ends the collection early and keeps what was gathered."""
    psnrs: list[float] = []
    distances: list[float] = []
    names: set[str] = set()
    bar = tqdm(desc=desc, unit="frame", dynamic_ncols=True)
    try:
        for source, _, score in iter_scores(scorer, sources, bar, max_frames):
            if score is not None:
                psnrs.append(score.psnr)
                distances.append(score.feature_distance)
                names.add(source.name)
    except KeyboardInterrupt:
        print(f"\ninterrupted: using the {len(psnrs)} frames scored so far", file=sys.stderr)
    finally:
        bar.close()
    return np.array(psnrs), np.array(distances), len(names)


def calibrate(
    scorer: StreamingScorer,
    sources: Iterable[FrameSource],
    lambda_: float = DEFAULT_LAMBDA,
    false_alarm_rate: float = 0.01,
    max_frames: int | None = None,
    source_name: str = "",
) -> dict[str, Any]:
    """Run ``scorer`` over normal videos and return their calibration record (see
    :func:`calibration_from_scores`), including the scorer's settings."""
    if not 0.0 <= lambda_ <= 1.0:
        raise InputError(f"--lambda {lambda_} must lie in [0, 1]")
    psnr, distance, videos = collect_scores(scorer, sources, max_frames)
    if len(psnr) and len(psnr) * false_alarm_rate < 10:
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
        precision=str(scorer.dtype or "fp32").replace("torch.", ""),
        source=source_name,
    )


def save_calibration(
    checkpoint: dict[str, Any], calibration: dict[str, Any], path: str | os.PathLike
) -> None:
    """Write ``checkpoint`` with ``calibration`` added to ``path`` atomically."""
    checkpoint = dict(checkpoint)
    checkpoint["calibration"] = calibration
    atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def calibrate_training_run(
    checkpoint_path: str | os.PathLike,
    model: LGNNet,
    items: torch.Tensor,
    dataset: Any,
    dtype: torch.dtype | None = None,
    gamma: float = DEFAULT_GAMMA,
    lambda_: float = DEFAULT_LAMBDA,
    false_alarm_rate: float = 0.01,
) -> dict[str, Any]:
    """Calibrate a freshly trained model on its training videos (``train.py --calibrate``).

    Args:
        checkpoint_path: the run's ``checkpoint.pth``; rewritten atomically with the
            calibration added.
        dataset: a ``data.frames.FrameWindowDataset`` (its decoded frames are reused).
    """
    scorer = StreamingScorer(model, items, dataset.height, dataset.width, gamma, True, dtype)
    sources = [
        array_source(video.name, dataset.video_frames(index))
        for index, video in enumerate(dataset.videos)
    ]
    calibration = calibrate(
        scorer, sources, lambda_, false_alarm_rate, source_name="training videos"
    )
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    save_calibration(checkpoint, calibration, checkpoint_path)
    print(
        f"calibrated on {calibration['frames']} training frames: threshold "
        f"{calibration['threshold']:.3f} at a {false_alarm_rate:.2%} false-alarm rate",
        file=sys.stderr,
    )
    return calibration


# --------------------------------------------------------------------------- outputs


class PendingFile:
    """An output written under a temporary name beside its destination (same suffix, so
    OpenCV can pick the container from it, which ``utils.atomic_write``'s ``.tmp`` names
    prevent) and renamed over it by :meth:`commit`; :meth:`discard` removes it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


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

    def close(self, commit: bool = True) -> None:
        self.writer.release()
        if commit:
            self.pending.commit()
        else:
            self.pending.discard()


def _text(
    image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple, scale: float
) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


# --------------------------------------------------------------------------- detection


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


def decision_metrics(
    normality: np.ndarray,
    anomaly: np.ndarray,
    labels: np.ndarray,
    per_video: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    lambda_: float = DEFAULT_LAMBDA,
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
    from data.labels import load_frame_labels

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


# --------------------------------------------------------------------------- CLI


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The whole checkpoint dictionary (tensors memory-mapped where the format allows)."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise InputError(
            f"cannot read the checkpoint {path} ({type(error).__name__}); is it a "
            "checkpoint.pth written by train.py?"
        ) from None


def load_model(
    args: argparse.Namespace, device: torch.device
) -> tuple[LGNNet, torch.Tensor, dict[str, Any], Path | None]:
    """Model, memory items, the checkpoint dictionary (or a minimal one for reference-layout
    weights) and the checkpoint path, loaded through ``evaluate.load_weights``."""
    from evaluate import load_weights
    from model.pretrained import resolve_checkpoint

    spec = argparse.Namespace(
        checkpoint=args.checkpoint,
        model_dir=args.model_dir,
        m_items_dir=args.m_items_dir,
        h=args.h,
        w=args.w,
        c=None,
        t_length=None,
        msize=None,
    )
    model, items, _ = load_weights(spec, device)
    args.h, args.w = spec.h, spec.w
    if args.checkpoint:
        path = resolve_checkpoint(args.checkpoint)
        return model, items, read_checkpoint(path), path
    checkpoint = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "items": items.detach().cpu(),
        "args": {
            "h": spec.h,
            "w": spec.w,
            "c": spec.c,
            "t_length": spec.t_length,
            "msize": model.msize,
            "fdim": model.fdim,
            "mdim": model.mdim,
        },
    }
    return model, items, checkpoint, None


def validate_args(args: argparse.Namespace) -> None:
    if (args.input is None) == (args.dataset is None):
        raise InputError("give exactly one of --input (video, folder, URL, camera) or --dataset")
    if not args.checkpoint and not (args.model_dir and args.m_items_dir):
        raise InputError("give --checkpoint (a checkpoint.pth written by train.py)")
    if not args.checkpoint and not (args.calibrate and args.output_checkpoint):
        raise InputError(
            "reference-layout weights (--model_dir/--m_items_dir) carry no calibration: run "
            "--calibrate with --output_checkpoint first, then detect with that checkpoint"
        )
    threshold_for_rate({"normality_quantiles": [0.0, 1.0]}, args.false_alarm_rate)
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max_frames must be at least 1, got {args.max_frames}")
    if args.plot_frames < 2:
        raise InputError(f"--plot_frames must be at least 2, got {args.plot_frames}")
    if args.video_out and Path(args.video_out).suffix.lower() != ".mp4":
        raise InputError(f"--video_out {args.video_out} must end in .mp4")


def run_calibration(
    args: argparse.Namespace, scorer: StreamingScorer, checkpoint: dict, path: Path | None
) -> dict[str, Any]:
    if args.output_checkpoint:
        output = Path(args.output_checkpoint)
    elif path is not None and Path(args.checkpoint).is_file():
        output = path
    else:
        raise InputError(
            f"--checkpoint {args.checkpoint} is not a local file; name where the calibrated "
            "checkpoint goes with --output_checkpoint"
        )
    if args.dataset:
        sources, source_name = dataset_sources(Path(args.dataset), "training"), args.dataset
    else:
        sources, source_name = open_input(args.input), args.input
    calibration = calibrate(
        scorer, sources, args.lambda_, args.false_alarm_rate, args.max_frames, source_name
    )
    save_calibration(checkpoint, calibration, output)
    print(
        f"calibrated on {calibration['frames']} frames of {calibration['videos']} videos: "
        f"PSNR {calibration['psnr_mean']:.2f} ± {calibration['psnr_std']:.2f} dB, feature "
        f"distance {calibration['distance_mean']:.4g} ± {calibration['distance_std']:.2g}; "
        f"threshold {calibration['threshold']:.3f} at a {args.false_alarm_rate:.2%} "
        f"false-alarm rate -> {output}",
        file=sys.stderr,
    )
    return calibration


def checked_calibration(checkpoint: dict[str, Any], source: str) -> dict[str, Any]:
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate (``--calibrate``) or detect; returns the calibration or the summary."""
    validate_args(args)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    model, items, checkpoint, path = load_model(args, device)
    calibration = None if args.calibrate else checked_calibration(checkpoint, str(path))
    settings = calibration or {}
    gamma = args.gamma if args.gamma is not None else settings.get("gamma", DEFAULT_GAMMA)
    update = (
        args.memory_update == "on"
        if args.memory_update is not None
        else settings.get("memory_update", True)
    )
    scorer = StreamingScorer(
        model, items, args.h, args.w, gamma, update, dtype, keep_error_maps=bool(args.video_out)
    )
    if args.calibrate:
        return run_calibration(args, scorer, checkpoint, path)

    precision = str(dtype or "fp32").replace("torch.", "")
    for name, now, then in (
        ("gamma", gamma, calibration.get("gamma")),
        ("memory update", update, calibration.get("memory_update")),
        ("precision", precision, calibration.get("precision")),
    ):
        if then is not None and now != then:
            print(
                f"note: {name} is {now} here but was {then} at calibration; the scores shift "
                "accordingly (recalibrate with the same settings for exact false-alarm rates)",
                file=sys.stderr,
            )
    detect_kwargs = {
        "csv_path": args.csv,
        "video_out": args.video_out,
        "plot_frames": args.plot_frames,
        "max_frames": args.max_frames,
    }
    metrics = None
    if args.dataset:
        result, metrics = score_dataset(
            scorer,
            calibration,
            args.dataset,
            args.label_path,
            args.false_alarm_rate,
            **detect_kwargs,
        )
    else:
        sources = open_input(args.input)
        known = [source.frame_count for source in sources]
        total = sum(known) if all(known) else None
        result = detect(
            scorer,
            sources,
            calibration,
            args.false_alarm_rate,
            total_frames=total,
            **detect_kwargs,
        )
    if args.events:
        atomic_write(Path(args.events), lambda p: p.write_text(json.dumps(result.events, indent=2)))
    summary = {
        "input": args.input or args.dataset,
        "checkpoint": str(path),
        "frames": result.frames,
        "anomalous_frames": result.anomalous_frames,
        "events": len(result.events),
        "false_alarm_rate": args.false_alarm_rate,
        "threshold": result.threshold,
        "gamma": gamma,
        "memory_update": update,
        "precision": precision,
        "seconds": round(result.seconds, 2),
        "frames_per_second": round(result.frames / max(result.seconds, 1e-9), 3),
        "stopped_early": result.stopped_early,
    }
    if metrics is not None:
        summary["metrics"] = metrics
    if args.report:
        atomic_write(Path(args.report), lambda p: p.write_text(json.dumps(summary, indent=2)))
    share = result.anomalous_frames / result.frames if result.frames else math.nan
    print(
        f"{result.frames} frames scored in {result.seconds:.1f}s: {result.anomalous_frames} "
        f"anomalous ({share:.1%}) in {len(result.events)} events, threshold "
        f"{result.threshold:.3f}",
        file=sys.stderr,
    )
    if metrics is not None:
        aucs = [metrics.get(key) for key in ("auc_calibrated", "auc_minmax_per_video")]
        calibrated_auc, minmax_auc = (math.nan if auc is None else auc for auc in aucs)
        print(
            f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, F1 "
            f"{metrics['f1']:.3f}; AUC calibrated {calibrated_auc:.4f}, per-video min-max "
            f"{minmax_auc:.4f}"
        )
    if result.frames == 0:
        raise InputError(
            f"no frame of {args.input or args.dataset} could be scored: it ended before "
            f"{model.t_length} frames (empty outputs were written)"
        )
    return summary


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
