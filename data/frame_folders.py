"""Frame trees on disk: where a split's videos are and which frames each holds, in order.

A dataset folder holds ``training/`` and ``testing/`` (``train/`` and ``test/`` also work),
each with one folder per video, either under ``frames/`` or directly. Frames are ordered by
file name within a video and videos by folder name; digit runs compare as numbers, so
``2.jpg`` comes before ``10.jpg`` and zero-padded names sort as usual. Frames are addressed by
position, never by the number in their name, so trees that start at ``001`` work; the names
must still carry a frame number each, once, in name order (:func:`check_frame_order`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLIT_FOLDER_NAMES = {"training": ("training", "train"), "testing": ("testing", "test")}


@dataclass(frozen=True)
class Video:
    """One video: its folder name and its frame files in playback order."""

    name: str
    frame_paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.frame_paths)


def natural_sort_key(name: str) -> tuple:
    """Sort key that compares digit runs as numbers (``2`` < ``10``), then the plain name."""
    parts = re.split(r"(\d+)", name)
    return (tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), name)


def find_split_dir(dataset_dir: Path, split: str) -> Path:
    """The folder whose subfolders are the videos of ``split`` ("training" or "testing").

    Accepts ``training``/``train`` and ``testing``/``test``; returns ``<split>/frames`` when
    it exists, else the split folder itself.
    """
    if split not in SPLIT_FOLDER_NAMES:
        raise ValueError(f"split must be 'training' or 'testing', got {split!r}")
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise InputError(
            f"dataset folder {dataset_dir} does not exist; it should contain "
            f"'training/' and 'testing/' folders of videos (check --dataset_path/--dataset_type)"
        )
    for folder_name in SPLIT_FOLDER_NAMES[split]:
        split_dir = dataset_dir / folder_name
        if split_dir.is_dir():
            frames_dir = split_dir / "frames"
            return frames_dir if frames_dir.is_dir() else split_dir
    raise InputError(
        f"no '{split}' folder in {dataset_dir}; expected {dataset_dir / split} "
        f"(or {dataset_dir / SPLIT_FOLDER_NAMES[split][1]}) holding one folder per video"
    )


def _is_image(path: Path) -> bool:
    # Dot-files (e.g. macOS "._001.jpg" resource forks) carry image extensions but no image.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


_LAST_NUMBER = re.compile(r"(\d+)\D*$")


def check_frame_order(folder: Path, frames: list[Path]) -> None:
    """Frames sorted by name must be numbered, once each, in increasing order: the number is
    the last digit run of the name without its extension (``001`` in ``img_001.jpg``).

    Raises InputError naming the files when a name carries no number, when two files carry
    the same one (``100.png`` beside ``100.jpg`` would shift every later frame and label),
    or when the name order disagrees with the numbers.
    """
    previous: tuple[int, Path] | None = None
    seen: dict[int, Path] = {}
    for path in frames:
        match = _LAST_NUMBER.search(path.stem)
        if match is None:
            raise InputError(
                f"frame {path} has no frame number in its name, so the order of the frames in "
                f"{folder} is unknown; name them by number (000.jpg, 001.jpg, ...)"
            )
        number = int(match.group(1))
        if number in seen:
            raise InputError(
                f"{seen[number].name} and {path.name} in {folder} carry the same frame number "
                f"{number}; keep one of them"
            )
        if previous is not None and number < previous[0]:
            raise InputError(
                f"in {folder}, {path.name} sorts after {previous[1].name} by name but carries a "
                "smaller frame number; rename the frames so that name and number order agree"
            )
        seen[number] = path
        previous = (number, path)


def list_videos(split_dir: Path) -> list[Video]:
    """Videos under ``split_dir`` (one subfolder each), sorted by name; see module notes."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise InputError(f"video folder {split_dir} does not exist")
    video_dirs = sorted(
        (entry for entry in split_dir.iterdir() if entry.is_dir() and entry.name[0] != "."),
        key=lambda entry: natural_sort_key(entry.name),
    )
    if not video_dirs:
        raise InputError(
            f"no video folders in {split_dir}; put each video's frames in its own subfolder "
            f"(e.g. {split_dir / '01' / '000.jpg'})"
        )
    videos = []
    for video_dir in video_dirs:
        frames = sorted(
            (entry for entry in video_dir.iterdir() if _is_image(entry)),
            key=lambda entry: natural_sort_key(entry.name),
        )
        if not frames:
            raise InputError(
                f"video folder {video_dir} has no image files "
                f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add its frames"
            )
        check_frame_order(video_dir, frames)
        videos.append(Video(video_dir.name, tuple(frames)))
    return videos
