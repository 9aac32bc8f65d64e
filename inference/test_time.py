"""One step of the test-time protocol: score a predicted frame, then let normal-looking
frames update the memory. Every scorer (the benchmark's :func:`inference.video.evaluate_video`,
the streaming :class:`inference.streaming.StreamingScorer`) goes through it, so all produce
the same numbers."""

from __future__ import annotations

from typing import NamedTuple

import torch

from model.lgn_net import Encoded, LGNNet
from model.memory import update_memory
from utils import autocast, frame_errors, point_score, psnr_from_mse

# The reference's Evaluate.py defaults: the memory-update gate and the fusion weight of PSNR.
DEFAULT_GAMMA = 0.009
DEFAULT_LAMBDA = 0.6


class FrameStep(NamedTuple):
    prediction: torch.Tensor  # (1, c, H, W) in [-1, 1]
    errors: torch.Tensor  # (1, c, H, W) squared error of the prediction, images in [0, 1]
    psnr: float  # dB
    feature_distance: float  # squared query-to-nearest-item distance, averaged
    items: torch.Tensor  # (M, D) memory after this frame
    updated: bool  # whether this frame updated the memory


def score_next_frame(
    model: LGNNet,
    encoded: Encoded,
    target: torch.Tensor,
    items: torch.Tensor,
    gamma: float,
    update: bool = True,
    dtype: torch.dtype | None = None,
) -> FrameStep:
    """Read the memory for one encoded window, predict its next frame and score it.

    Args:
        encoded: ``model.encode`` of one window (batch of 1).
        target: the true next frame ``(1, c, H, W)`` in [-1, 1].
        items: memory items ``(M, D)`` before this frame.
        gamma: the memory is updated when the frame's point score is below gamma.
    """
    with autocast(target.device, dtype):
        out = model.infer_from_encoded(encoded, items)
    errors = frame_errors(out.prediction, target)
    updated = update and point_score(errors) < gamma
    if updated:
        items = update_memory(out.queries, items)
    return FrameStep(
        out.prediction,
        errors,
        psnr_from_mse(float(errors.mean())),
        float(out.feature_distance),
        items,
        updated,
    )
