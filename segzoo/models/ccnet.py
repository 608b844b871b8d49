"""CCNet: Criss-Cross Network (Huang et al., ICCV 2019), the recurrent criss-cross attention head.

Each criss-cross attention pass lets a pixel see its row and column; two passes with shared
weights (R = 2) connect every pair of pixels, at a cost linear in H + W instead of H * W.
"""
from __future__ import annotations

import torch

from segzoo.models.heads import ConvBNReLU, DecodeHead, make_aux_head
from segzoo.models.segmentor import EncoderDecoder, build_encoder
from segzoo.ops import CrissCrossAttention


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


def build_ccnet(num_classes: int, *, backbone: str, output_stride: int, stem: str, pretrained: str | None,
                aux: bool, dropout: float, recurrence: int = 2, ops_impl: str = "auto") -> EncoderDecoder:
    """CCNet (the seed uses ResNet-101 OS8 at 769x769, R=2) with the FCN aux head on layer3."""
    encoder = build_encoder(backbone, output_stride, stem, pretrained)
    head = RCCAHead(encoder.out_channels[-1], 512, num_classes, dropout, recurrence=recurrence, ops_impl=ops_impl)
    return EncoderDecoder(encoder, head, make_aux_head(encoder.out_channels, num_classes, dropout) if aux else None)
