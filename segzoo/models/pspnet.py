"""PSPNet: Pyramid Scene Parsing Network (Zhao et al., CVPR 2017)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segzoo.models.heads import ConvBNReLU, DecodeHead, make_aux_head, resize
from segzoo.models.segmentor import EncoderDecoder, build_encoder


class PyramidPooling(nn.Module):
    """Average-pool the feature to each of ``bins`` x ``bins`` grids, reduce each with a 1x1
    conv-BN-ReLU to ``in_channels // len(bins)``, upsample back and concatenate with the input.

    Shapes: (N, C, h, w) -> (N, 2C, h, w) for the default 4 bins (C + 4 * C/4).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, reduced, 1)) for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(stage(x), size) for stage in self.stages], dim=1)


class PPMHead(DecodeHead):
    """PSPNet head: pyramid pooling (bins 1, 2, 3, 6), 3x3 conv-BN-ReLU to ``channels``
    (4096 -> 512 on ResNet-50), Dropout2d, 1x1 classifier. Reads the last stage."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.ppm = PyramidPooling(in_channels, bins)
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.ppm(x))


def build_pspnet(num_classes: int, *, backbone: str, output_stride: int, stem: str, pretrained: str | None,
                 aux: bool, dropout: float, bins: Sequence[int] = (1, 2, 3, 6)) -> EncoderDecoder:
    """PSPNet (512-channel head) with the FCN aux head on layer3; see ``models.build_model``."""
    encoder = build_encoder(backbone, output_stride, stem, pretrained)
    head = PPMHead(encoder.out_channels[-1], 512, num_classes, dropout, bins=bins)
    return EncoderDecoder(encoder, head, make_aux_head(encoder.out_channels, num_classes, dropout) if aux else None)
