"""Local-normality (spatiotemporal) branch: per-frame encoder, stacked ST-LSTMs, fusion head."""

from __future__ import annotations

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

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recurrence over the input frames.

        Args:
            frames: ``(B, T*channels, H, W)``, T input frames stacked on channels in time order.

        Returns:
            ``(h, m)``: the last layer's hidden state and the final spatiotemporal memory,
            each ``(B, hidden, H/4, W/4)``.
        """
        batch, stacked, height, width = frames.shape
        steps = stacked // self.channels
        # All frames go through the per-frame encoder (and the first cell's input
        # convolution) as one batch: they do not depend on the recurrence.
        per_frame = frames.reshape(batch * steps, self.channels, height, width)
        encoded = self.encoder(per_frame)
        x_gates = self.convlstm_list[0].conv_x(encoded)
        x_gates = x_gates.reshape(batch, steps, *x_gates.shape[1:])

        zeros = encoded.new_zeros(batch, self.hidden, *encoded.shape[-2:])
        hidden = [zeros] * len(self.convlstm_list)
        cell = [zeros] * len(self.convlstm_list)
        memory = zeros
        for t in range(steps):
            for layer, lstm in enumerate(self.convlstm_list):
                if layer == 0:
                    hidden[0], cell[0], memory = lstm(
                        None, hidden[0], cell[0], memory, x_gates=x_gates[:, t]
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
