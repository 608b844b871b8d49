"""DeepLabV3: atrous spatial pyramid pooling (Chen et al., "Rethinking Atrous Convolution for
Semantic Image Segmentation", 2017)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from segzoo.models import MODELS
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input


def atrous_rates_for(output_stride: int) -> tuple[int, int, int]:
    """The paper's rates (6, 12, 18) at output stride 16, scaled with the feature resolution:
    (12, 24, 36) at OS8, (3, 6, 9) at OS32, so they cover the same image area."""
    scale = 16 / output_stride
    return tuple(max(1, round(r * scale)) for r in (6, 12, 18))


class ImagePooling(nn.Module):
    """Global-average-pool branch: image-level context broadcast back to every pixel."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upsampling a 1x1 map is a broadcast; expand avoids an interpolation kernel.
        return self.conv(self.pool(x)).expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """1x1 branch, one 3x3 branch per atrous rate and the image-pooling branch, each
    conv-BN-ReLU to ``channels``, concatenated and fused by a 1x1 conv-BN-ReLU.

    Shapes: (N, in_channels, h, w) -> (N, channels, h, w).
    """

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
            + [ImagePooling(in_channels, channels)]
        )
        self.project = ConvBNReLU(channels * len(self.branches), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class ASPPHead(DecodeHead):
    """DeepLabV3 head as torchvision's ``DeepLabHead``: ASPP (256 channels), 3x3 conv-BN-ReLU,
    classifier. One difference: torchvision puts Dropout(0.5) after the ASPP projection; here
    the only dropout is the shared classifier's Dropout2d, so ``dropout`` means the same thing
    in every model."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, rates: Sequence[int] = (12, 24, 36)):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.aspp = ASPP(in_channels, channels, rates)
        self.bottleneck = ConvBNReLU(channels, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.aspp(x))


@MODELS.register("deeplabv3", summary="DeepLabV3, atrous spatial pyramid pooling (Chen et al., 2017)")
def build_deeplabv3(backbone: nn.Module, num_classes: int, *, dropout: float) -> ASPPHead:
    """DeepLabV3's head (256-channel ASPP) with the paper's rates scaled to the backbone's
    reduction at the main feature (``atrous_rates_for``)."""
    in_channels, index = main_input(backbone)
    rates = atrous_rates_for(backbone.feature_info[index].reduction)
    return ASPPHead(in_channels, 256, num_classes, dropout, in_index=index, rates=rates)
