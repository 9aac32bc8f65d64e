"""Scoring frames as they arrive: a rolling window of ``t_length`` frames, so memory stays
bounded on streams of any length, with the same numbers as the benchmark's scorer.

Once the window holds ``t_length`` frames, the first ``t_length - 1`` predict the last, exactly
as in :func:`inference.video.evaluate_video` (same preprocessing: BGR, bilinear resize to the
trained size, x/127.5 - 1; same PSNR, feature distance and test-time memory update when a
frame's point score is below gamma). Every video starts from the trained memory, so a video's
scores never depend on which videos were scored before it.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.devices import autocast
from data.sources import FrameSource, preprocess
from inference.config import GAMMA
from inference.frame_step import frame_step, read_back
from model import LGNNet


class FrameScore(NamedTuple):
    frame: int  # 0-based position of the predicted frame in its video
    psnr: float  # dB
    feature_distance: float
    error_map: np.ndarray | None  # (h, w) float32 squared error averaged over channels
    memory_updated: bool


def convolutions_cast_to(model: LGNNet, dtype: torch.dtype | None) -> LGNNet:
    """``model`` itself for fp32; else a copy whose convolution weights and biases are
    already in ``dtype``.

    Autocast casts every convolution's fp32 weights to ``dtype`` on each call and keeps the
    casts only until its region ends; scoring frame by frame enters a region per frame, so
    all 22.7 million weights would be cast again for every frame. The copy holds exactly
    the values autocast would compute (BatchNorm stays in fp32, as under autocast), so the
    numbers are the same. Only for use under ``autocast(device, dtype)``."""
    if dtype is None:
        return model
    cast = copy.deepcopy(model)
    for module in cast.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.to(dtype)  # this module's own weight and bias, not its children's
    return cast


class StreamingScorer:
    """Scores frames one at a time with a rolling window of ``t_length`` frames.

    Per predicted frame it runs exactly the steps of :func:`inference.video.evaluate_video`
    (encode the ``t_length - 1`` input frames, each frame's per-frame part once for all the
    windows it is an input of; read the memory and decode, PSNR of the
    prediction, feature distance, test-time memory update when the point score is below
    ``gamma``), so its PSNR and distances equal the benchmark's on the same frames and memory.
    """

    def __init__(
        self,
        model: LGNNet,
        items: torch.Tensor,
        height: int,
        width: int,
        gamma: float = GAMMA,
        memory_update: bool = True,
        dtype: torch.dtype | None = None,
        keep_error_maps: bool = False,
    ) -> None:
        self.model = model.eval()
        self.network = convolutions_cast_to(self.model, dtype)  # what push runs
        self.trained_items = items
        self.height, self.width = int(height), int(width)
        self.gamma = float(gamma)
        self.memory_update = bool(memory_update)
        self.dtype = dtype
        self.keep_error_maps = keep_error_maps
        self.device = items.device
        self.window: deque[torch.Tensor] = deque(maxlen=model.t_length)
        # encode_frames of the window's input frames: each frame is encoded once, when it
        # becomes an input, and reused by the t_length - 1 windows it belongs to.
        self.gates: deque[torch.Tensor] = deque(maxlen=model.t_length - 1)
        self.start_video()

    def start_video(self) -> None:
        """Forget the window and go back to the trained memory items."""
        self.window.clear()
        self.gates.clear()
        self.items = self.trained_items
        self.frames_seen = 0

    @torch.no_grad()
    def push(self, image: np.ndarray) -> FrameScore | None:
        """Add the next BGR frame (any size); returns its score, or None while the window
        still fills (the first ``t_length - 1`` frames of a video)."""
        self.window.append(preprocess(image, self.height, self.width).to(self.device))
        self.frames_seen += 1
        if len(self.window) >= 2:  # the previous frame is now an input of the next windows
            with autocast(self.device, self.dtype):
                self.gates.append(self.network.encode_frames(self.window[-2].unsqueeze(0)))
        if len(self.window) < self.model.t_length:
            return None
        inputs = torch.cat(list(self.window)[:-1], dim=0).unsqueeze(0)
        target = self.window[-1].unsqueeze(0)
        with autocast(self.device, self.dtype):
            encoded = self.network.encode_with_gates(inputs, list(self.gates))
        step = read_back(
            frame_step(
                self.network,
                encoded,
                target,
                self.items,
                self.gamma,
                self.memory_update,
                self.dtype,
            )
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
