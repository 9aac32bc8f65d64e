"""Scoring one whole video by the benchmark protocol: windows in order, the memory-independent
work batched, the memory read, decoding and test-time updates frame by frame."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from common.devices import autocast
from common.errors import InputError
from inference.frame_step import DeviceStep, frame_step
from model import LGNNet
from model.lgn_net import Encoded
from utils import psnr_from_mse


class VideoScores(NamedTuple):
    psnr: np.ndarray  # (T - t_length + 1,) dB
    feature_distance: np.ndarray  # (T - t_length + 1,)
    frame_score: np.ndarray  # error measure where higher = more normal (PSNR by default)
    items: torch.Tensor  # memory items after the video
    memory_updates: int = 0  # frames whose point score fell below gamma (0 without updates)


class QualityMetric:
    """Optional image-quality measures in place of PSNR (higher = more normal). With
    ``metric="psnr"`` it is never called: :func:`evaluate_video` keeps the PSNR it computes."""

    def __init__(self, metric: str, device: torch.device) -> None:
        self.metric = metric
        self._lpips = None
        if metric == "lpips":
            try:
                import lpips

                with warnings.catch_warnings():  # torchvision's notes on lpips's old API
                    warnings.simplefilter("ignore", UserWarning)
                    self._lpips = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
            except Exception as error:  # weights download on first use
                raise InputError(
                    f"--error_metric lpips needs the lpips package and its AlexNet weights "
                    f"({type(error).__name__}: {error}); install lpips with network access "
                    "once, or use --error_metric psnr"
                ) from None

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> float:
        """The score of a predicted frame ``(1, c, H, W)`` against the true one, in [-1, 1]."""
        if self.metric == "ssim":
            from skimage.metrics import structural_similarity

            pred = ((prediction[0].float().cpu().numpy() + 1) / 2).transpose(1, 2, 0)
            true = ((target[0].float().cpu().numpy() + 1) / 2).transpose(1, 2, 0)
            return float(structural_similarity(pred, true, channel_axis=2, data_range=1.0))
        with torch.no_grad():
            # lpips expects RGB in [-1, 1]; our frames are BGR.
            distance = self._lpips(prediction.float().flip(1), target.float().flip(1))
        return -float(distance)


def video_windows(frames: torch.Tensor, start: int, stop: int, t_length: int) -> torch.Tensor:
    """Stack the inputs of windows ``start..stop-1``: ``(stop-start, (t_length-1)*c, H, W)``
    from frames ``(T, c, H, W)``."""
    return torch.stack([frames[k : k + t_length - 1].flatten(0, 1) for k in range(start, stop)])


class ScoringFunctions(NamedTuple):
    """What :func:`evaluate_video` calls: the per-frame encoder, the encoder of windows from
    their frames' gates, and the per-frame step, either the model's own (eager) or compiled
    (:func:`compiled_scoring_functions`)."""

    encode_frames: Callable[[torch.Tensor], torch.Tensor]
    encode_with_gates: Callable[[torch.Tensor, Sequence[torch.Tensor]], Encoded]
    step: Callable[..., DeviceStep]
    full_batches: bool = False  # pad a video's last, shorter batch: one shape, one compilation


def eager_scoring_functions(model: LGNNet) -> ScoringFunctions:
    return ScoringFunctions(model.encode_frames, model.encode_with_gates, frame_step)


def compiled_scoring_functions(model: LGNNet) -> ScoringFunctions:
    """``torch.compile`` of the encoders and of the per-frame step, for static shapes: every
    batch of frames and of windows is padded to the full batch size (the padding's outputs
    are dropped; in eval mode each frame's and each window's encoding is independent of the
    others)."""
    return ScoringFunctions(
        torch.compile(model.encode_frames, dynamic=False),
        torch.compile(model.encode_with_gates, dynamic=False),
        torch.compile(frame_step, dynamic=False),
        True,
    )


def _padded(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``batch`` with its last row repeated up to ``size`` rows."""
    if len(batch) >= size:
        return batch
    return torch.cat([batch, batch[-1:].expand(size - len(batch), *batch.shape[1:])])


class FrameGates:
    """The per-frame part of the windows' encoding (``LGNNet.encode_frames``) of one video,
    computed once per frame and shared by the ``t_length - 1`` windows each frame is an input
    of. Frames are encoded ``chunk`` at a time as the windows reach them, and dropped once no
    later window needs them, so at most about ``2 * chunk + t_length`` frames are held.
    """

    def __init__(
        self,
        functions: ScoringFunctions,
        frames: torch.Tensor,
        chunk: int,
        dtype: torch.dtype | None,
    ) -> None:
        self.functions, self.frames, self.chunk, self.dtype = functions, frames, chunk, dtype
        self.first = 0  # the video position of the first frame held
        self.gates: torch.Tensor | None = None  # (held, 7*hidden, H/4, W/4)

    def for_windows(self, start: int, stop: int, context: int) -> list[torch.Tensor]:
        """For windows ``start..stop-1`` (inputs ``k..k+context-1``), ``context`` tensors
        ``(stop-start, 7*hidden, H/4, W/4)``: time step t holds the gates of frames
        ``start+t..stop-1+t``, a slice of the frames held (no copy)."""
        if self.gates is None:
            self.first = start
        elif start > self.first:  # frames before start are inputs of no later window
            self.gates = self.gates[start - self.first :]
            self.first = start
        held = 0 if self.gates is None else len(self.gates)
        while self.first + held < stop + context - 1:
            begin = self.first + held
            frames = self.frames[begin : begin + self.chunk]
            count = len(frames)
            if self.functions.full_batches:
                frames = _padded(frames, self.chunk)
            with autocast(frames.device, self.dtype):
                new = self.functions.encode_frames(frames)[:count]
            self.gates = new if self.gates is None else torch.cat([self.gates, new])
            held += count
        offset = start - self.first
        return [self.gates[offset + t : offset + t + stop - start] for t in range(context)]


@torch.no_grad()
def evaluate_video(
    model: LGNNet,
    frames: torch.Tensor,
    items: torch.Tensor,
    gamma: float,
    update: bool = True,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    metric: QualityMetric | None = None,
    functions: ScoringFunctions | None = None,
    sync_each_frame: bool = False,
) -> VideoScores:
    """Score every predictable frame of one video, in order, with test-time memory updates.

    (Ten parameters, kept flat: after the model, the frames and the memory come the
    protocol's settings, each with a default, and callers set one or two of them;
    ``inference.benchmark.ScoringSettings`` bundles them for a whole split.)

    The memory-independent work (both encoders and the spatiotemporal branch) runs on
    ``batch_size`` windows at once, the spatiotemporal branch's per-frame part once per frame
    for all the windows the frame is an input of (:class:`FrameGates`); the memory read,
    decoding and updates then go frame by frame, so the scores equal the
    one-window-at-a-time protocol (within about 1e-6 relative in fp32: convolutions batched
    differently round differently). The per-frame values stay on
    the device until the video ends (``sync_each_frame`` reads each back at once instead, as
    earlier versions did; it changes no number, only speed).

    Args:
        frames: ``(T, c, H, W)`` in [-1, 1] on the model's device.
        items: memory items ``(M, D)`` at the start of the video.
        gamma: a frame updates the memory when its point score is below gamma.
        metric: a frame-error score other than PSNR (SSIM, LPIPS); None: PSNR.
        functions: the encoder and per-frame step to call (default: eager).
    """
    model.eval()
    functions = functions or eager_scoring_functions(model)
    t_length = model.t_length
    num_windows = frames.shape[0] - t_length + 1
    values, frame_scores = [], []
    device = frames.device
    gates = FrameGates(functions, frames, batch_size, dtype)
    for start in range(0, num_windows, batch_size):
        stop = min(start + batch_size, num_windows)
        windows = video_windows(frames, start, stop, t_length)
        window_gates = gates.for_windows(start, stop, t_length - 1)
        if functions.full_batches:
            windows = _padded(windows, batch_size)
            window_gates = [_padded(step, batch_size) for step in window_gates]
        with autocast(device, dtype):
            encoded = functions.encode_with_gates(windows, window_gates)
        for offset in range(stop - start):
            target = frames[start + offset + t_length - 1].unsqueeze(0)
            single = Encoded(*(part[offset : offset + 1] for part in encoded))
            step = functions.step(model, single, target, items, gamma, update, dtype)
            items = step.items
            # A copy, so that no output of a compiled step is kept past its next call.
            values.append(torch.stack([step.mse, step.feature_distance, step.updated.float()]))
            if sync_each_frame:
                values[-1] = values[-1].cpu()
            if metric is not None and metric.metric != "psnr":
                frame_scores.append(metric(step.prediction, target))
    # One read-back per video (the values are already on the host with sync_each_frame).
    table = torch.stack(values).double().cpu().numpy() if values else np.zeros((0, 3))
    psnrs = np.array([psnr_from_mse(mse) for mse in table[:, 0]])
    return VideoScores(
        psnrs,
        table[:, 1],
        np.array(frame_scores) if frame_scores else psnrs,
        items.clone(),
        int(table[:, 2].sum()),
    )
