"""One step of the test-time protocol: score a predicted frame, then let normal-looking
frames update the memory. Every scorer (the benchmark's :func:`inference.video.evaluate_video`,
the streaming :class:`inference.streaming.StreamingScorer`) goes through it, so all produce
the same numbers."""

from __future__ import annotations

from typing import NamedTuple

import torch

from common.devices import autocast
from model.lgn_net import Encoded, LGNNet
from model.memory import update_memory
from utils import frame_errors, point_score_tensor, psnr_from_mse


class FrameStep(NamedTuple):
    prediction: torch.Tensor  # (1, c, H, W) in [-1, 1]
    errors: torch.Tensor  # (1, c, H, W) squared error of the prediction, images in [0, 1]
    psnr: float  # dB
    feature_distance: float  # squared query-to-nearest-item distance, averaged
    items: torch.Tensor  # (M, D) memory after this frame
    updated: bool  # whether this frame updated the memory


class DeviceStep(NamedTuple):
    """One frame's step, every value still a tensor on the model's device (no host sync)."""

    prediction: torch.Tensor  # (1, c, H, W) in [-1, 1]
    errors: torch.Tensor  # (1, c, H, W) fp32 squared errors, images in [0, 1]
    mse: torch.Tensor  # () fp32 mean of errors: PSNR = 10·log10(1 / mse)
    feature_distance: torch.Tensor  # () fp32
    items: torch.Tensor  # (M, D) memory after this frame
    updated: torch.Tensor  # () bool


def frame_step(
    model: LGNNet,
    encoded: Encoded,
    target: torch.Tensor,
    items: torch.Tensor,
    gamma: float,
    update: bool = True,
    dtype: torch.dtype | None = None,
) -> DeviceStep:
    """Read the memory for one encoded window, predict its next frame, score it, and update
    the memory when the frame's point score is below ``gamma`` (and ``update``).

    Nothing here waits for the device: the gate is applied with ``torch.where`` (the update
    is computed either way, a small N x M product), so frames can be queued back to back and
    their values fetched once per video. The numbers equal a step that reads the point score
    on the host first.

    Args:
        encoded: ``model.encode`` of one window (batch of 1).
        target: the true next frame ``(1, c, H, W)`` in [-1, 1].
        items: memory items ``(M, D)`` before this frame.
    """
    with autocast(target.device, dtype):
        out = model.infer_from_encoded(encoded, items)
    errors = frame_errors(out.prediction, target)
    if update:
        # In float64, as a host comparison of the fp32 point score with gamma would be.
        updated = point_score_tensor(errors).double() < gamma
        items = torch.where(updated, update_memory(out.queries, items), items)
    else:
        updated = torch.zeros((), dtype=torch.bool, device=target.device)
    return DeviceStep(out.prediction, errors, errors.mean(), out.feature_distance, items, updated)


def read_back(step: DeviceStep) -> FrameStep:
    """A :func:`frame_step`'s values on the host: PSNR (dB), feature distance, whether the
    memory was updated. For frames scored one at a time as they arrive."""
    return FrameStep(
        step.prediction,
        step.errors,
        psnr_from_mse(float(step.mse)),
        float(step.feature_distance),
        step.items,
        bool(step.updated),
    )
