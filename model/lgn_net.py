"""LGN-Net: the local (spatiotemporal) and global (prototype memory) branches assembled."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from model.config import ModelConfig
from model.memory import (
    feature_distance,
    flatten_query,
    memory_losses,
    read_memory,
    update_memory,
)
from model.prototype import PrototypeDecoder, PrototypeEncoder
from model.spatiotemporal import SpatioTemporalBranch, make_fusion_head


class TrainOutput(NamedTuple):
    prediction: torch.Tensor  # (B, c, H, W) in [-1, 1]
    items: torch.Tensor  # (M, D) updated memory items, detached
    compactness: torch.Tensor  # scalar
    separateness: torch.Tensor  # scalar


class InferOutput(NamedTuple):
    prediction: torch.Tensor  # (B, c, H, W) in [-1, 1]
    queries: torch.Tensor  # (B*h*w, D) unit-norm, fp32
    feature_distance: torch.Tensor  # scalar, mean over all queries of the batch


class Encoded(NamedTuple):
    """The memory-independent part of a forward pass."""

    features: torch.Tensor  # (B, D, H/8, W/8) prototype-encoder output
    spatiotemporal: torch.Tensor  # (B, 64, H, W) fused local-normality map


class LGNNet(nn.Module):
    """LGN-Net at the paper's sizes by default (22,753,667 parameters with the reference's
    unused BatchNorm(512); 22,752,643 without it).

    Attribute names match the reference release, so its state_dicts load unchanged.
    The memory items are not part of the module: they are passed in and returned, as in
    the reference, so training, evaluation and distributed code own that state explicitly.
    """

    def __init__(
        self,
        channels: int = ModelConfig.channels,
        t_length: int = ModelConfig.t_length,
        msize: int = ModelConfig.msize,
        fdim: int = ModelConfig.fdim,
        mdim: int = ModelConfig.mdim,
        hidden: int = ModelConfig.hidden,
        num_layers: int = ModelConfig.num_layers,
    ) -> None:
        super().__init__()
        if fdim != mdim:
            raise ValueError(f"fdim ({fdim}) must equal mdim ({mdim}): queries are read as items")
        if t_length < 2:
            raise ValueError(f"t_length must be at least 2, got {t_length}")
        self.channels = channels
        self.t_length = t_length
        self.msize = msize
        self.fdim = fdim
        self.mdim = mdim
        self.hidden = hidden
        self.num_layers = num_layers
        self.encoder = PrototypeEncoder((t_length - 1) * channels, fdim)
        self.decoder = PrototypeDecoder(mdim, channels)
        self.pred = SpatioTemporalBranch(channels, hidden, num_layers)
        self.st_decoder = make_fusion_head(hidden)
        # The training step's item update; distributed training swaps in a version that
        # combines the queries of all processes (model.memory.update_memory_distributed).
        self.memory_update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = update_memory

    @classmethod
    def from_config(cls, config: ModelConfig) -> LGNNet:
        """The network of ``config`` (``LGNNet(**config.as_dict())``)."""
        return cls(**config.as_dict())

    @property
    def config(self) -> ModelConfig:
        """The sizes this network was built with: what checkpoints store as ``model_args``."""
        return ModelConfig(
            self.channels, self.t_length, self.msize, self.fdim, self.mdim,
            self.hidden, self.num_layers,
        )  # fmt: skip

    def check_input(self, frames: torch.Tensor) -> None:
        """Raise ``ValueError`` unless frames are ``(B, (t_length-1)*c, H, W)``, H, W % 8 == 0."""
        expected = (self.t_length - 1) * self.channels
        if frames.dim() != 4 or frames.shape[1] != expected:
            raise ValueError(
                f"expected input frames of shape (B, {expected}, H, W), got {tuple(frames.shape)}"
            )
        height, width = frames.shape[-2:]
        if height % 8 or width % 8:
            raise ValueError(f"frame height and width must be multiples of 8, got {height}x{width}")

    def encode(self, frames: torch.Tensor) -> Encoded:
        """Memory-independent work: prototype features and the spatiotemporal map.

        Args:
            frames: ``(B, (t_length-1)*c, H, W)`` in [-1, 1], input frames in time order.
        """
        self.check_input(frames)
        return self._encoded(self.encoder(frames), self.pred(frames))

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The per-frame part of :meth:`encode` (eval mode only): the spatiotemporal branch's
        frame encoder and its first cell's input convolution, ``(N, c, H, W)`` single frames
        in [-1, 1] to ``(N, 7*hidden, H/4, W/4)``. A frame's result is the same in every
        window it belongs to (BatchNorm uses its running statistics), so scorers compute it
        once per frame and pass it to :meth:`encode_with_gates` for each window."""
        if self.training:
            raise RuntimeError(
                "encode_frames is for eval mode: in training BatchNorm normalises each time "
                "step's frames with that step's batch statistics (use encode)"
            )
        return self.pred.frame_gates(frames)

    def encode_with_gates(self, frames: torch.Tensor, gates: Sequence[torch.Tensor]) -> Encoded:
        """:meth:`encode` of windows whose per-frame part is already computed.

        Args:
            frames: ``(B, (t_length-1)*c, H, W)`` in [-1, 1], the windows' input frames.
            gates: ``t_length - 1`` tensors ``(B, 7*hidden, H/4, W/4)``: :meth:`encode_frames`
                of each window's input frames, in time order.

        Equals ``encode(frames)`` up to the rounding of convolutions batched differently.
        """
        self.check_input(frames)
        if len(gates) != self.t_length - 1:
            raise ValueError(f"expected {self.t_length - 1} gate tensors, got {len(gates)}")
        return self._encoded(self.encoder(frames), self.pred.recurrence(gates))

    def _encoded(self, features: torch.Tensor, local: tuple[torch.Tensor, torch.Tensor]) -> Encoded:
        hidden, memory = local
        return Encoded(features, self.st_decoder(torch.cat([hidden, memory], dim=1)))

    def decode(self, memory_read: torch.Tensor, spatiotemporal: torch.Tensor) -> torch.Tensor:
        """Predicted next frame ``(B, c, H, W)`` in [-1, 1] from the memory read
        ``(B, mdim, H/8, W/8)`` and the spatiotemporal map ``(B, 64, H, W)``.

        The decoder consumes the read alone, not MNAD's concatenation of the query with the
        read: in LGN-Net the query reaches the prediction only through the memory, and the
        local branch's map joins at full resolution instead."""
        return self.decoder(memory_read.to(spatiotemporal.dtype), spatiotemporal)

    def forward_train(self, frames: torch.Tensor, items: torch.Tensor) -> TrainOutput:
        """Training step forward: losses and the read use ``items`` before the update."""
        encoded = self.encode(frames)
        queries = flatten_query(encoded.features)
        read = read_memory(queries, items, encoded.features.shape)
        prediction = self.decode(read, encoded.spatiotemporal)
        losses = memory_losses(queries, items)
        new_items = self.memory_update(queries.detach(), items)
        return TrainOutput(prediction, new_items, losses.compactness, losses.separateness)

    def forward_infer(self, frames: torch.Tensor, items: torch.Tensor) -> InferOutput:
        """Inference forward; the memory is not updated (use :func:`update_memory`)."""
        encoded = self.encode(frames)
        return self.infer_from_encoded(encoded, items)

    def infer_from_encoded(self, encoded: Encoded, items: torch.Tensor) -> InferOutput:
        """Memory read, decoding and feature distance for already-encoded windows."""
        queries = flatten_query(encoded.features)
        read = read_memory(queries, items, encoded.features.shape)
        prediction = self.decode(read, encoded.spatiotemporal)
        return InferOutput(prediction, queries, feature_distance(queries, items))

    def forward(
        self, frames: torch.Tensor, items: torch.Tensor, train: bool = True
    ) -> TrainOutput | InferOutput:
        """``forward_train`` when ``train`` else ``forward_infer`` (the reference's signature)."""
        return self.forward_train(frames, items) if train else self.forward_infer(frames, items)
