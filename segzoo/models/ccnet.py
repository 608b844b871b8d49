"""CCNet: Criss-Cross Network (Huang et al., ICCV 2019), the recurrent criss-cross attention head.

Each criss-cross attention pass lets a pixel see its row and column; two passes with shared
weights (R = 2) connect every pair of pixels, at a cost linear in H + W instead of H * W.
"""
from __future__ import annotations

import torch

from torch import nn

from segzoo.models import MODELS
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input
from segzoo.ops import CrissCrossAttention
from segzoo.ops.options import OPS_IMPL
from segzoo.registry import Option
from segzoo.runtime.config_types import positive_int


class RCCAHead(DecodeHead):
    """Recurrent criss-cross attention head.

    3x3 conv-BN-ReLU reduce (2048 -> 512), `recurrence` passes of one CrissCrossAttention block,
    3x3 conv-BN-ReLU, concatenation with the backbone feature, 3x3 conv-BN-ReLU bottleneck to
    `channels`, classifier. Shapes: (N, in_channels, h, w) -> (N, channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, recurrence: int = 2, ops_impl: str = "auto"):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        inner = in_channels // 4
        self.recurrence = recurrence
        self.reduce = ConvBNReLU(in_channels, inner, 3)
        self.attention = CrissCrossAttention(inner, impl=ops_impl)
        self.expand = ConvBNReLU(inner, inner, 3)
        self.bottleneck = ConvBNReLU(in_channels + inner, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.reduce(x)
        for _ in range(self.recurrence):
            out = self.attention(out)
        out = self.expand(out)
        return self.bottleneck(torch.cat([x, out], dim=1))


@MODELS.register("ccnet", options=[Option("recurrence", positive_int, 2, "CCNet criss-cross recurrences"), OPS_IMPL],
                 summary="CCNet, recurrent criss-cross attention (Huang et al., ICCV 2019)")
def build_ccnet(backbone: nn.Module, num_classes: int, *, dropout: float, recurrence: int = 2,
                ops_impl: str = "auto") -> RCCAHead:
    """CCNet's head (the seed uses ResNet-101 OS8 at 769x769, R=2)."""
    in_channels, index = main_input(backbone)
    return RCCAHead(in_channels, 512, num_classes, dropout, in_index=index, recurrence=recurrence, ops_impl=ops_impl)
