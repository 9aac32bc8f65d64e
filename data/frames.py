"""Windows of consecutive frames for training and evaluation, from decoded frames.

The frames come from a :class:`FrameSource`: :class:`data.frame_cache.FrameCache` (decoded
into memory) or ``data.frame_store.FrameStore`` (decoded once to disk, memory-mapped). Where
the videos are is :mod:`data.frame_folders`' business, how a frame is decoded
:mod:`data.decoding`'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from data.frame_cache import FrameCache
from data.frame_folders import Video, find_split_dir, list_videos


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1] (x / 127.5 - 1)."""
    tensor = torch.as_tensor(frames)
    if tensor.ndim < 3 or tensor.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (..., H, W, 3), got {tuple(tensor.shape)}")
    channels_first = tensor.movedim(-1, -3)
    # One strided copy into a contiguous float buffer, then in-place scaling: about twice as
    # fast as chaining out-of-place ops on the permuted view.
    scaled = torch.empty(channels_first.shape, dtype=torch.float32, device=tensor.device)
    scaled.copy_(channels_first)
    return scaled.div_(127.5).sub_(1.0)


class FrameSource(Protocol):
    """Where a :class:`FrameWindowDataset` gets decoded frames: :class:`FrameCache` (in
    memory) or ``data.frame_store.FrameStore`` (memory-mapped files on disk)."""

    height: int
    width: int

    def get_all(self, videos: Sequence[Video]) -> list[np.ndarray]:
        """Every video's frames, uint8 ``(T, H, W, 3)``, in order, for the dataset to keep."""
        ...

    def prepare(self, videos: Sequence[Video]) -> None:
        """Whatever makes :meth:`load` of these videos cheap later."""
        ...

    def load(self, video: Video) -> np.ndarray:
        """One video's frames, not held by the source afterwards."""
        ...


def open_video_file(path: str | os.PathLike) -> np.memmap:
    """A stored video's frames (``.npy``), memory-mapped copy-on-write: uint8 ``(T, H, W, 3)``
    that numpy and torch can wrap as writable, although nothing is ever written back."""
    return np.load(path, mmap_mode="c")


def _mapped_file(frames: np.ndarray) -> str | os.PathLike | None:
    """The file ``frames`` are memory-mapped from, or None for frames held in memory."""
    return frames.filename if isinstance(frames, np.memmap) else None


def skipped_video_line(name: str, num_frames: int, t_length: int) -> str:
    """The one line that says a video is too short to give a window and is left out."""
    frames = f"{num_frames} frame{'' if num_frames == 1 else 's'}"
    return f"skipping video {name}: {frames}, fewer than the {t_length} of one window (--t_length)"


class FrameWindowDataset(torch.utils.data.Dataset):
    """Every run of ``t_length`` consecutive frames (stride 1) of every video.

    Item ``i`` is float32 ``(t_length * 3, H, W)`` in [-1, 1]: frames stacked on channels in
    time order, so the first ``(t_length - 1) * 3`` channels are the input and the last 3 the
    frame to predict.

    ``cache`` says where the decoded frames live: a :class:`FrameCache` decodes them all up
    front into memory, which DataLoader worker processes then share instead of decoding
    again; a ``data.frame_store.FrameStore`` writes them to disk once and maps the files, so
    the process holds none of them. With ``preload`` False nothing is held:
    :meth:`video_frames` loads one video per call, for sequential use (evaluation).
    """

    def __init__(
        self,
        videos: list[Video],
        height: int,
        width: int,
        t_length: int = 5,
        cache: FrameSource | None = None,
        preload: bool = True,
    ):
        if t_length < 1:
            raise ValueError(f"t_length must be at least 1, got {t_length}")
        self.height = int(height)
        self.width = int(width)
        self.t_length = int(t_length)
        self.cache = cache if cache is not None else FrameCache(height, width)
        if (self.cache.height, self.cache.width) != (self.height, self.width):
            raise ValueError(
                f"cache holds {self.cache.height}x{self.cache.width} frames, "
                f"dataset wants {self.height}x{self.width}"
            )
        self.videos: list[Video] = []
        self.skipped: list[str] = []
        for video in videos:
            if len(video) < self.t_length:
                print(skipped_video_line(video.name, len(video), self.t_length), file=sys.stderr)
                self.skipped.append(video.name)
            else:
                self.videos.append(video)
        self.preload = bool(preload)
        self._frames: list[np.ndarray | None] | None = None
        # The file behind each memory-mapped video (None: frames held in memory).
        self._files: list[str | os.PathLike | None] = []
        if self.preload:
            loaded = self.cache.get_all(self.videos)
            self._files = [_mapped_file(frames) for frames in loaded]
            # Plain views of the maps: slicing an np.memmap subclass costs about a microsecond
            # more per window.
            self._frames = [np.asarray(frames) for frames in loaded]
        else:
            self.cache.prepare(self.videos)
        self.windows: list[tuple[int, int]] = [
            (video_index, start)
            for video_index, video in enumerate(self.videos)
            for start in range(len(video) - self.t_length + 1)
        ]
        # Items are found from these offsets rather than from the list of tuples above: a
        # forked DataLoader worker reading Python objects writes their reference counts and
        # so copies their pages, which for a large split would add up in every worker.
        counts = [len(video) - self.t_length + 1 for video in self.videos]
        self._first_window = np.cumsum([0] + counts[:-1], dtype=np.int64)

    def __getstate__(self) -> dict:
        # Memory-mapped frames travel as their file names (numpy would pickle a memmap as a
        # full in-memory copy); the receiving process maps the files again when it reads.
        state = self.__dict__.copy()
        if self._frames is not None:
            state["_frames"] = [
                None if file is not None else frames
                for frames, file in zip(self._frames, self._files, strict=True)
            ]
        return state

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} of {len(self)}")
        video_index = int(np.searchsorted(self._first_window, index, side="right")) - 1
        start = index - int(self._first_window[video_index])
        window = self.video_frames(video_index)[start : start + self.t_length]
        return frames_to_tensor(window).reshape(-1, self.height, self.width)

    def video_frames(self, video_index: int) -> np.ndarray:
        """All frames of ``self.videos[video_index]``: uint8 ``(T, H, W, 3)`` BGR (a view of
        a file mapped copy-on-write when the frames come from a frame store)."""
        if self._frames is None:
            return self.cache.load(self.videos[video_index])
        frames = self._frames[video_index]
        if frames is None:  # unpickled in another process: map the file again
            frames = self._frames[video_index] = np.asarray(
                open_video_file(self._files[video_index])
            )
        return frames


def open_split(
    dataset_dir: Path,
    split: str,
    height: int,
    width: int,
    t_length: int = 5,
    cache_dir: Path | None = None,
) -> FrameWindowDataset:
    """Windows of one split ("training" or "testing") of the dataset in ``dataset_dir``."""
    videos = list_videos(find_split_dir(dataset_dir, split))
    return FrameWindowDataset(videos, height, width, t_length, FrameCache(height, width, cache_dir))
