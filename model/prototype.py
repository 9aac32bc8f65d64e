"""Global-normality (prototype) branch: the memory-query encoder and the frame decoder.

Module names follow the MNAD/LGN-Net reference checkpoints (``moduleConv1`` ...).
"""

from __future__ import annotations

import torch
from torch import nn


def basic_block(cin: int, cout: int) -> nn.Sequential:
    """conv, BN, ReLU, conv, BN, ReLU (3x3, stride 1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def upsample_block(cin: int, cout: int) -> nn.Sequential:
    """Transposed conv (k3, s2, p1, output_padding 1) doubling H and W, BN, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PrototypeEncoder(nn.Module):
    """Maps ``(B, in_channels, H, W)`` stacked frames to the ``(B, fdim, H/8, W/8)`` query."""

    def __init__(self, in_channels: int = 12, fdim: int = 512) -> None:
        super().__init__()
        self.moduleConv1 = basic_block(in_channels, 64)
        self.modulePool1 = nn.MaxPool2d(2, 2)
        self.moduleConv2 = basic_block(64, 128)
        self.modulePool2 = nn.MaxPool2d(2, 2)
        self.moduleConv3 = basic_block(128, 256)
        self.modulePool3 = nn.MaxPool2d(2, 2)
        self.moduleConv4 = nn.Sequential(
            nn.Conv2d(256, fdim, 3, 1, 1),
            nn.BatchNorm2d(fdim),
            nn.ReLU(inplace=True),
            nn.Conv2d(fdim, fdim, 3, 1, 1),
        )
        # Declared but never applied by the reference; kept so its checkpoints load.
        self.moduleBatchNorm = nn.BatchNorm2d(fdim)
        self.moduleReLU = nn.ReLU(inplace=True)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.modulePool1(self.moduleConv1(frames))
        x = self.modulePool2(self.moduleConv2(x))
        x = self.modulePool3(self.moduleConv3(x))
        return self.moduleConv4(x)


class PrototypeDecoder(nn.Module):
    """Decodes the memory read ``(B, mdim, H/8, W/8)`` and the spatiotemporal map
    ``(B, 64, H, W)`` into the predicted frame ``(B, channels, H, W)`` in [-1, 1]."""

    def __init__(self, mdim: int = 512, channels: int = 3) -> None:
        super().__init__()
        self.moduleConv = basic_block(mdim, 512)
        self.moduleUpsample4 = upsample_block(512, 256)
        self.moduleDeconv3 = basic_block(256, 256)
        self.moduleUpsample3 = upsample_block(256, 128)
        self.moduleDeconv2 = basic_block(128, 128)
        self.moduleUpsample2 = upsample_block(128, 64)
        self.moduleDeconv1 = nn.Sequential(
            nn.Conv2d(128, 64, 3, 1, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, 1, 1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, channels, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, memory_read: torch.Tensor, spatiotemporal: torch.Tensor) -> torch.Tensor:
        x = self.moduleUpsample4(self.moduleConv(memory_read))
        x = self.moduleUpsample3(self.moduleDeconv3(x))
        x = self.moduleUpsample2(self.moduleDeconv2(x))
        return self.moduleDeconv1(torch.cat([x, spatiotemporal], dim=1))
