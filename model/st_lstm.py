"""The spatiotemporal LSTM cell of PredRNN (Wang et al., TPAMI 2022), as used by LGN-Net."""

from __future__ import annotations

import torch
from torch import nn


class SpatioTemporalLSTMCell(nn.Module):
    """One ST-LSTM cell: temporal state (h, c) plus a spatiotemporal memory m.

    All convolutions are bias-free; forget gates get a +1.0 bias so that a freshly
    initialised cell starts by remembering. Attribute names follow the reference
    checkpoint layout (``conv_x.0``, ``conv_h.0``, ``conv_m.0``, ``conv_o.0``, ``conv_last``).
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.hidden_channels = hidden_channels
        self.forget_bias = 1.0

        def conv(cin: int, cout: int, k: int = kernel_size, p: int = padding) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, k, stride=1, padding=p, bias=False)

        self.conv_x = nn.Sequential(conv(in_channels, 7 * hidden_channels))
        self.conv_h = nn.Sequential(conv(hidden_channels, 4 * hidden_channels))
        self.conv_m = nn.Sequential(conv(hidden_channels, 3 * hidden_channels))
        self.conv_o = nn.Sequential(conv(2 * hidden_channels, hidden_channels))
        self.conv_last = conv(2 * hidden_channels, hidden_channels, k=1, p=0)

    def forward(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        m: torch.Tensor,
        x_gates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance the cell one step.

        Args:
            x: input ``(B, in_channels, H, W)``; ignored when ``x_gates`` is given.
            h, c, m: states ``(B, hidden, H, W)``.
            x_gates: optional precomputed ``conv_x(x)`` ``(B, 7*hidden, H, W)``, so that the
                input convolution of several time steps can run as one batched call.

        Returns:
            ``(h_new, c_new, m_new)``, each ``(B, hidden, H, W)``.
        """
        if x_gates is None:
            x_gates = self.conv_x(x)
        i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = torch.split(x_gates, self.hidden_channels, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.hidden_channels, dim=1)
        i_m, f_m, g_m = torch.split(self.conv_m(m), self.hidden_channels, dim=1)

        c_new = torch.sigmoid(f_x + f_h + self.forget_bias) * c + torch.sigmoid(
            i_x + i_h
        ) * torch.tanh(g_x + g_h)
        m_new = torch.sigmoid(f_xm + f_m + self.forget_bias) * m + torch.sigmoid(
            i_xm + i_m
        ) * torch.tanh(g_xm + g_m)

        cm = torch.cat([c_new, m_new], dim=1)
        o = torch.sigmoid(o_x + o_h + self.conv_o(cm))
        h_new = o * torch.tanh(self.conv_last(cm))
        return h_new, c_new, m_new
