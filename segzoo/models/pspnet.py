"""PSPNet: Pyramid Scene Parsing Network (Zhao et al., CVPR 2017)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segzoo.models import MODELS
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input, resize
from segzoo.registry import Option
from segzoo.runtime.config_types import int_list


class PyramidPooling(nn.Module):
    """Average-pool the feature to each of ``bins`` x ``bins`` grids, reduce each with a 1x1
    conv-BN-ReLU to ``in_channels // len(bins)``, upsample back and concatenate with the input.

    Shapes: (N, C, h, w) -> (N, 2C, h, w) for the default 4 bins (C + 4 * C/4).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, reduced, 1)) for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [resize(stage(x), size, self.align_corners) for stage in self.stages], dim=1)


class PPMHead(DecodeHead):
    """PSPNet head: pyramid pooling (bins 1, 2, 3, 6), 3x3 conv-BN-ReLU to ``channels``
    (4096 -> 512 on ResNet-50), Dropout2d, 1x1 classifier. Reads the last stage."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, bins: Sequence[int] = (1, 2, 3, 6), align_corners: bool = False):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.ppm = PyramidPooling(in_channels, bins, align_corners)
        self.bottleneck = ConvBNReLU(self.ppm.out_channels, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.ppm(x))


@MODELS.register("pspnet", options=[Option("bins", int_list, (1, 2, 3, 6), "PSPNet pyramid pooling bins")],
                 summary="PSPNet, pyramid pooling (Zhao et al., CVPR 2017)")
def build_pspnet(backbone: nn.Module, num_classes: int, *, dropout: float, bins: Sequence[int] = (1, 2, 3, 6),
                 align_corners: bool = False) -> PPMHead:
    """PSPNet's head (512 channels) on the backbone's main feature."""
    in_channels, index = main_input(backbone)
    return PPMHead(in_channels, 512, num_classes, dropout, in_index=index, bins=tuple(bins),
                   align_corners=align_corners)
