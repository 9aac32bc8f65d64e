"""Local-normality (spatiotemporal) branch: per-frame encoder, stacked ST-LSTMs, fusion head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.st_lstm import SpatioTemporalLSTMCell


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SpatioTemporalBranch(nn.Module):
    """Encodes each input frame to H/4 and runs 4 stacked ST-LSTM cells with zigzag memory.

    Checkpoint names follow the reference (``encoder.{0,3,6,9}``, ``convlstm_list.{0..3}``).
    """

    def __init__(self, channels: int = 3, hidden: int = 128, num_layers: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = hidden
        self.encoder = nn.Sequential(
            *_conv_bn_relu(channels, 64, stride=2),
            *_conv_bn_relu(64, 64),
            *_conv_bn_relu(64, 128, stride=2),
            *_conv_bn_relu(128, hidden),
        )
        self.convlstm_list = nn.ModuleList(
            SpatioTemporalLSTMCell(hidden, hidden) for _ in range(num_layers)
        )

    def frame_gates(self, frames: torch.Tensor) -> torch.Tensor:
        """The first cell's input convolution of each encoded frame, frame by frame.

        Args:
            frames: ``(N, channels, H, W)``, single frames (of one or several windows).

        Returns:
            ``(N, 7*hidden, H/4, W/4)``.

        In eval mode BatchNorm uses its running statistics, so a frame's result does not
        depend on the other frames of the batch, nor on the window it belongs to: evaluation
        computes it once per frame and reuses it in every window (``LGNNet.encode_frames``).
        """
        return self.convlstm_list[0].conv_x(self.encoder(frames))

    def input_gates(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`frame_gates` of every input frame of each window, in time order.

        Args:
            frames: ``(B, T*channels, H, W)``, T input frames stacked on channels.

        Returns:
            T tensors ``(B, 7*hidden, H/4, W/4)``.

        In training the frames of each time step go through the per-frame encoder as one
        batch of B, step after step, as the reference does: every BatchNorm then normalises
        a step's frames with that step's own statistics and updates its running statistics
        once per step. Pooling all B*T frames would mix the steps' statistics and update the
        running statistics once. In eval mode BatchNorm uses its running statistics, so all
        frames can go through as one batch of B*T with the same result.
        """
        batch, stacked, height, width = frames.shape
        steps = stacked // self.channels
        if self.training:
            return [
                self.frame_gates(frames[:, t * self.channels : (t + 1) * self.channels])
                for t in range(steps)
            ]
        gates = self.frame_gates(frames.reshape(batch * steps, self.channels, height, width))
        return list(gates.reshape(batch, steps, *gates.shape[1:]).unbind(1))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recurrence over the input frames.

        Args:
            frames: ``(B, T*channels, H, W)``, T input frames stacked on channels in time order.

        Returns:
            ``(h, m)``: the last layer's hidden state and the final spatiotemporal memory,
            each ``(B, hidden, H/4, W/4)``.
        """
        return self.recurrence(self.input_gates(frames))

    def recurrence(self, gates: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked ST-LSTMs over precomputed input gates, from zero states.

        Args:
            gates: T tensors ``(B, 7*hidden, H/4, W/4)``, :meth:`frame_gates` of each
                window's input frames in time order.

        Returns:
            ``(h, m)`` as :meth:`forward`.
        """
        zeros = gates[0].new_zeros(gates[0].shape[0], self.hidden, *gates[0].shape[-2:])
        hidden = [zeros] * len(self.convlstm_list)
        cell = [zeros] * len(self.convlstm_list)
        memory = zeros
        for x_gates in gates:
            for layer, lstm in enumerate(self.convlstm_list):
                if layer == 0:
                    hidden[0], cell[0], memory = lstm(
                        None, hidden[0], cell[0], memory, x_gates=x_gates
                    )
                else:
                    hidden[layer], cell[layer], memory = lstm(
                        hidden[layer - 1], hidden[layer], cell[layer], memory
                    )
        return hidden[-1], memory


def make_fusion_head(hidden: int = 128) -> nn.Sequential:
    """Fuses concat(h, m) ``(B, 2*hidden, H/4, W/4)`` into a ``(B, 64, H, W)`` map."""
    return nn.Sequential(
        nn.ConvTranspose2d(2 * hidden, 128, 3, 2, 1, output_padding=1),
        nn.BatchNorm2d(128),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(128, 64, 3, 2, 1, output_padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    )
