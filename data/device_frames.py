"""Training windows built on the device from frames kept there as uint8.

On a GPU a training step takes a few milliseconds, and a DataLoader's worker processes,
pinned-memory copies and float conversion on the CPU can take longer than the step. Here the
decoded frames of a :class:`data.frames.FrameWindowDataset` live on the device once (Ped2's
2,550 training frames at 256x256: 0.5 GB), and each batch is gathered and scaled there. The
batches equal the DataLoader's bit for bit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from data.frames import FrameWindowDataset


def frames_nbytes(dataset: FrameWindowDataset) -> int:
    """Bytes the dataset's decoded frames take as uint8 (from the shapes: memory-mapped
    frames are not read)."""
    frame_bytes = dataset.height * dataset.width * 3
    return sum(len(video) for video in dataset.videos) * frame_bytes


class DeviceWindows:
    """Windows of ``t_length`` consecutive frames served from a uint8 copy of the videos'
    frames on ``device``.

    Args:
        videos: each video's frames, uint8 ``(T, H, W, 3)`` BGR.
        windows: ``(video index, first frame)`` of every window, in the dataset's order.
    """

    def __init__(
        self,
        videos: Sequence[np.ndarray],
        windows: Sequence[tuple[int, int]],
        t_length: int,
        device: torch.device,
    ) -> None:
        offsets = np.cumsum([0] + [len(video) for video in videos[:-1]])
        total = sum(len(video) for video in videos)
        self.frames = torch.empty((total, *videos[0].shape[1:]), dtype=torch.uint8, device=device)
        # Video by video, not through one concatenated host copy: frames held in memory are
        # not doubled, and memory-mapped ones go from the page cache straight to the device.
        for offset, video in zip(offsets, videos, strict=True):
            self.frames[offset : offset + len(video)].copy_(torch.from_numpy(video))
        first_frames = [int(offsets[video]) + start for video, start in windows]
        self.first_frame = torch.tensor(first_frames, device=device)
        self.steps = torch.arange(t_length, device=device)
        self.device = device

    @classmethod
    def of(cls, dataset: FrameWindowDataset, device: torch.device) -> DeviceWindows:
        """The windows of ``dataset``, in its order."""
        videos = [dataset.video_frames(i) for i in range(len(dataset.videos))]
        return cls(videos, dataset.windows, dataset.t_length, device)

    @classmethod
    def if_they_fit(cls, dataset: FrameWindowDataset, device: torch.device) -> DeviceWindows | None:
        """The windows of ``dataset`` on a CUDA ``device`` when its frames take at most a
        quarter of the free GPU memory, else None (a DataLoader then serves them)."""
        free, _ = torch.cuda.mem_get_info(device)
        if frames_nbytes(dataset) > free // 4:
            print("training frames too large for the GPU: DataLoader", file=sys.stderr)
            return None
        return cls.of(dataset, device)

    def batch(self, window_indices: Sequence[int]) -> torch.Tensor:
        """Windows ``(B, t_length*3, H, W)`` float32 in [-1, 1], as the dataset's items."""
        indices = torch.as_tensor(window_indices, device=self.device)
        frame_indices = self.first_frame[indices, None] + self.steps  # (B, t_length)
        windows = self.frames[frame_indices]  # (B, t_length, H, W, 3) uint8
        batch, steps, height, width, channels = windows.shape
        scaled = torch.empty(
            (batch, steps, channels, height, width), dtype=torch.float32, device=self.device
        )
        # The dataset's conversion (data.frames.frames_to_tensor), in the same order of ops.
        scaled.copy_(windows.permute(0, 1, 4, 2, 3))
        scaled.div_(127.5).sub_(1.0)
        return scaled.reshape(batch, steps * channels, height, width)

    def loader(self, batches: Sequence[Sequence[int]]) -> DeviceBatches:
        """One batch per entry of ``batches`` (lists of window indices), in order."""
        return DeviceBatches(self, batches)


class DeviceBatches:
    """An iterable of batches with a length, like a DataLoader with a batch sampler."""

    def __init__(self, windows: DeviceWindows, batches: Sequence[Sequence[int]]) -> None:
        self.windows, self.batches = windows, list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.windows.batch(indices) for indices in self.batches)
