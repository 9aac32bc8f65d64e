"""Where frames come from when scoring footage: video files, network streams, cameras,
folders of images and arrays already in memory, each as a :class:`FrameSource` that yields
BGR uint8 frames one at a time (so a long stream never has to fit in memory)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from common.errors import InputError
from data.decoding import read_image
from data.frame_folders import (
    IMAGE_EXTENSIONS,
    check_frame_order,
    find_split_dir,
    list_videos,
    natural_sort_key,
)
from data.frames import frames_to_tensor

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")


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
    (bilinear resize, then x / 127.5 - 1: ``data.decoding.decode_frame`` +
    ``data.frames.frames_to_tensor``)."""
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
            yield read_image(path)

    folder = paths[0].parent if paths else Path(name)
    return FrameSource(name, f"frame folder {folder}", len(paths), None, "images", read)


FRAMES_CONTRACT = (
    "frames (T, H, W, 3) in BGR order (or grey (T, H, W) or (T, H, W, 1)) as integers in "
    "[0, 255] or floats in [0, 1]: a NumPy array, a torch tensor or a list of frames"
)


def _as_numpy(frames: object) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        tensor = frames.detach().cpu()
        return (
            tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
        ).numpy()
    if isinstance(frames, list | tuple):
        arrays = [_as_numpy(frame) for frame in frames]
        shapes = {array.shape for array in arrays}
        if len(shapes) > 1:
            raise InputError(
                f"the frames have different shapes {sorted(shapes)}; expected {FRAMES_CONTRACT}"
            )
        if not arrays:
            raise InputError(f"no frames were given; expected {FRAMES_CONTRACT}")
        return np.stack(arrays)
    return np.asarray(frames)


def _not_finite(array: np.ndarray) -> str | None:
    """How many values of a float ``array`` are NaN or infinite, in words; None if none."""
    counts = {"NaN": int(np.isnan(array).sum()), "infinite": int(np.isinf(array).sum())}
    parts = [f"{count} {kind}" for kind, count in counts.items() if count]
    return f"{' and '.join(parts)} of its {array.size} values" if parts else None


def checked_frames(frames: object) -> np.ndarray:
    """Frames given in memory as BGR uint8 ``(T, H, W, 3)``, converted exactly where the
    input is unambiguous, else refused with one line saying what was given and what is
    expected (:data:`FRAMES_CONTRACT`).

    Converted: floats in [0, 1] (any float dtype) to ``round(x * 255)``; any integer dtype
    (int64, uint16, ...) whose values lie in [0, 255] to the same uint8 values; grey
    ``(T, H, W)`` or ``(T, H, W, 1)`` to B = G = R = the grey value. Refused: a single frame,
    channels first, 4 channels (BGRA or RGBA: the alpha channel is not dropped silently),
    floats outside [0, 1], NaN or infinite values, integers outside [0, 255] (16-bit
    footage), booleans.

    The channel order cannot be checked: RGB frames must be flipped first (``rgb[..., ::-1]``).
    """
    array = _as_numpy(frames)
    given = f"{type(frames).__name__} of shape {tuple(array.shape)} and dtype {array.dtype}"
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise InputError(f"got one frame ({given}); expected a video: {FRAMES_CONTRACT}")
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"got channels first ({given}); expected {FRAMES_CONTRACT} (e.g. "
            "frames.transpose(0, 2, 3, 1) or tensor.permute(0, 2, 3, 1))"
        )
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[-1] not in (1, 3, 4)):
        raise InputError(f"got {given}; expected {FRAMES_CONTRACT}")
    if array.ndim == 4 and array.shape[-1] == 4:
        raise InputError(
            f"got 4 channels ({given}); the 4th (alpha) is not part of the picture and is not "
            "dropped silently: pass frames[..., :3] for BGRA or frames[..., 2::-1] for RGBA; "
            f"expected {FRAMES_CONTRACT}"
        )
    if array.shape[0] == 0:
        raise InputError(f"got no frames ({given}); expected {FRAMES_CONTRACT}")
    if array.dtype == np.uint8:
        if array.ndim == 4 and array.shape[-1] == 3:
            return array
        return np.stack([to_bgr(frame) for frame in array])  # grey
    if np.issubdtype(array.dtype, np.floating):
        not_finite = _not_finite(array)
        if not_finite:
            raise InputError(
                f"got {given} with {not_finite}; frames must be finite, float frames in "
                "[0, 1] (replace them first, e.g. np.nan_to_num(frames, nan=0.0, posinf=1.0, "
                f"neginf=0.0), if they are missing pixels); expected {FRAMES_CONTRACT}"
            )
        if array.min(initial=0) < 0 or array.max(initial=0) > 1:
            low, high = array.min(), array.max()
            raise InputError(
                f"got {given} with values in [{low:g}, {high:g}]; float frames must lie in "
                f"[0, 1] (for [0, 255] pass frames.astype(np.uint8); for [-1, 1], "
                f"(frames + 1) / 2); expected {FRAMES_CONTRACT}"
            )
        return checked_frames(np.rint(array * 255.0).astype(np.uint8))
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise InputError(
                f"got {given} with values up to {array.max()}; integer frames must lie in "
                f"[0, 255] (16-bit footage: (frames >> 8).astype(np.uint8)); expected "
                f"{FRAMES_CONTRACT}"
            )
        return checked_frames(array.astype(np.uint8))
    raise InputError(f"got {given}; expected {FRAMES_CONTRACT}")


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


def local_input(spec: str) -> Path | None:
    """The file or folder ``spec`` names on this machine; None for a camera or a stream."""
    spec = str(spec).strip()
    if "://" in spec or (spec.isdigit() and not Path(spec).exists()):
        return None
    return Path(spec)


def open_input(spec: str, what: str = "--input") -> list[FrameSource]:
    """The videos named by ``spec``, in order (see the module notes for the forms); ``what``
    is how messages name it (the Python API passes ``video``)."""
    spec = str(spec).strip()
    path = local_input(spec)
    if path is None:
        return [capture_source(int(spec) if spec.isdigit() else spec)]
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise InputError(
                f"{what} {path} is a single image; give the folder holding the video's frames"
            )
        return [capture_source(str(path))]
    if not path.is_dir():
        raise InputError(
            f"{what} {spec} does not exist; give a video file, a folder of frames, a folder "
            "of videos, a stream URL or a camera index"
        )
    images = _image_files(path)
    if images:
        check_frame_order(path, images)
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
        f"{what} folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}), videos "
        f"({', '.join(VIDEO_EXTENSIONS)}) or frame folders"
    )


def dataset_sources(dataset_dir: Path, split: str) -> list[FrameSource]:
    """Every video of one split of a benchmark frame tree, as image-folder sources."""
    videos = list_videos(find_split_dir(Path(dataset_dir), split))
    return [image_folder_source(video.name, video.frame_paths) for video in videos]
