"""What every decode head shares: the conv-BN-ReLU block, the dropout + 1x1 classifier, the
head contract, and the FCN head used as auxiliary head on layer3.

Head contract (as mmsegmentation's ``BaseDecodeHead``): ``__init__(in_channels, channels,
num_classes, dropout=0.1, in_index=-1, ...)``; ``forward(features)`` takes the backbone's list
of stage outputs and returns logits (N, num_classes, h, w) at the resolution of the feature it
reads, or a dict with those logits under "out" plus head-specific extras (EncNet's "se").
A new head subclasses ``DecodeHead`` and implements ``forward_features`` (feature of stage
``in_index`` -> (N, channels, h, w)); the classifier is applied by the base class.
``main_input(backbone)`` gives the (in_channels, in_index) a head reads from a backbone.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` (H, W). align_corners=False (mmseg's and
    torchvision's choice) samples a pixel's logit at its centre at every scale; True is
    hszhao/semseg's choice, offered so its checkpoints give the same outputs here."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def main_input(backbone: nn.Module) -> tuple[int, int]:
    """(channels, index) of the feature a decode head reads, from the backbone's contract."""
    index = backbone.main_index
    return backbone.feature_info[index].channels, index


class ConvBNReLU(nn.Sequential):
    """Conv (no bias: BN follows) + BatchNorm + ReLU, 'same' padding for odd kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SegClassifier(nn.Sequential):
    """Dropout2d (whole channels, as PSPNet and mmseg) then a 1x1 conv to class logits."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1):
        conv = nn.Conv2d(channels, num_classes, 1)
        # Small logits at start (mmseg's normal(0, 0.01)) so the first losses are ~log(K).
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), conv)


class DecodeHead(nn.Module):
    """Base of every head: picks stage ``in_index`` from the backbone's feature list, runs
    ``forward_features`` and the shared classifier.

    Args:
        in_channels: channels of the stage the head reads.
        channels: width of the head's last feature map (the classifier's input).
        num_classes: K, number of output logits per pixel.
        dropout: Dropout2d rate before the classifier (0 disables it).
        in_index: which stage of the backbone's list to read (-1: last, 2: layer3).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1):
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        self.in_index = in_index
        self.classifier = SegClassifier(channels, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, h, w) -> (N, channels, h, w)."""
        raise NotImplementedError

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.classifier(self.forward_features(features[self.in_index]))


class FCNHead(DecodeHead):
    """FCN head (Long et al., CVPR 2015) as used for the auxiliary loss in PSPNet: 3x3
    conv-BN-ReLU (1024 -> 256 on ResNet-50 layer3), Dropout2d, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.conv = ConvBNReLU(in_channels, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def class_presence(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K) float: 1 where class k occurs in image n (ignored pixels do not count)."""
    n = target.shape[0]
    flat = target.reshape(n, -1).long()
    valid = flat < num_classes
    # one scatter per batch, no Python loop over images
    presence = torch.zeros(n, num_classes + 1, device=target.device)
    presence.scatter_(1, torch.where(valid, flat, num_classes), 1.0)
    return presence[:, :num_classes]


def presence_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Binary cross-entropy of (N, K) image-level class logits against the classes present in the
    (N, H, W) label: EncNet's semantic-encoding loss and GINet's semantic-context loss."""
    return F.binary_cross_entropy_with_logits(logits.float(), class_presence(target, num_classes))
