"""PSANet: Point-wise Spatial Attention Network (Zhao et al., ECCV 2018), following semseg's model.

Each pixel of a shrunk feature map predicts an attention window of mask_h x mask_w weights
centred on itself; the PSA mask op (ops.psa_mask) places those windows into a dense
(h*w) x (h*w) attention map, either "collect" (pixel i gathers from j) or "distribute"
(pixel j sends to i), and a batched matmul aggregates the features. "bi" runs both branches.
The "compact" variant predicts the h*w map directly (no PSA mask op), which fixes the feature
size and therefore needs inputs of the training crop size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.models import MODELS
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input, resize
from segzoo.ops import psa_mask
from segzoo.ops.options import OPS_IMPL
from segzoo.registry import Option
from segzoo.runtime.config_types import str2bool
from segzoo.runtime.errors import OptionError, UserError

PSA_TYPES = ("collect", "distribute", "bi")


def shrunk_size(size: int, output_stride: int, shrink_factor: int) -> int:
    """Feature side of an input side `size`: stride-2 convs with padding give ceil(size / 2) per
    stage, then the attention branch shrinks by `shrink_factor` the same way."""
    feature = math.ceil(size / output_stride)
    return (feature - 1) // shrink_factor + 1


class PSABranch(nn.Module):
    """One attention direction: reduce -> shrink -> predict windows -> PSA mask -> aggregate.

    Args:
        in_channels: backbone channels (2048).
        channels: reduced channels (512).
        mode: "collect" or "distribute".
        mask: (mask_h, mask_w) window size predicted per pixel (compact: the shrunk (h, w)).
        compact: predict the dense (h*w) map directly instead of windows.
        shrink_factor: attention runs on a map shrunk by this factor (2 in the paper).
        ops_impl: PSA mask implementation ("auto" | "kernel" | "portable").
    Shapes: (N, in_channels, H, W) -> (N, channels, H, W).
    """

    def __init__(self, in_channels: int, channels: int, mode: str, mask: tuple, compact: bool,
                 shrink_factor: int, ops_impl: str, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.mode, self.mask, self.compact = mode, tuple(mask), compact
        self.shrink_factor, self.ops_impl = shrink_factor, ops_impl
        self.reduce = ConvBNReLU(in_channels, channels, 1)
        self.attention = nn.Sequential(ConvBNReLU(channels, channels, 1),
                                       nn.Conv2d(channels, self.mask[0] * self.mask[1], 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        full = x.shape[-2:]
        h, w = ((s - 1) // self.shrink_factor + 1 for s in full)
        x = resize(x, (h, w), self.align_corners)
        n, c = x.shape[:2]
        windows = self.attention(x)
        if self.compact:
            if (h, w) != self.mask:
                raise UserError(f"PSANet ‹psa_compact› True was built for {self.mask[0]}x{self.mask[1]} attention "
                                f"maps but got {h}x{w}: evaluate on crops of the training size (‹crop_val› True)")
            dense = windows.view(n, h * w, h * w)
            if self.mode == "distribute":
                dense = dense.transpose(1, 2)
        else:
            dense = psa_mask(windows, self.mode, self.mask, impl=self.ops_impl).view(n, h * w, h * w)
        attention = F.softmax(dense, dim=1)  # over source positions, as semseg (psa_softmax=True)
        out = torch.bmm(x.reshape(n, c, h * w), attention).view(n, c, h, w)
        return resize(out, full, self.align_corners)


class PSAHead(DecodeHead):
    """PSANet head: PSA branch(es) on layer4, a 1x1 projection back to `in_channels`,
    concatenation with the input (2 x 2048), 3x3 conv-BN-ReLU to `channels`, classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, psa_type: str = "bi", mask: tuple = (59, 59), compact: bool = False,
                 shrink_factor: int = 2, ops_impl: str = "auto", align_corners: bool = False):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        if psa_type not in PSA_TYPES:
            raise OptionError("psa_type", psa_type, f"is not known; use one of {', '.join(PSA_TYPES)}")
        modes = ("collect", "distribute") if psa_type == "bi" else (psa_type,)
        self.branches = nn.ModuleList(PSABranch(in_channels, channels, m, mask, compact, shrink_factor, ops_impl,
                                                align_corners) for m in modes)
        self.project = ConvBNReLU(channels * len(modes), in_channels, 1)
        self.bottleneck = ConvBNReLU(in_channels * 2, channels, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        attended = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.bottleneck(torch.cat([x, self.project(attended)], dim=1))


@MODELS.register("psanet", options=[
    Option("psa_type", str, "bi", "PSANet attention: collect, distribute or bi", choices=PSA_TYPES),
    Option("psa_compact", str2bool, False, "PSANet compact variant (no psamask op; fixed input size)"),
    OPS_IMPL,
], summary="PSANet, point-wise spatial attention (Zhao et al., ECCV 2018)")
def build_psanet(backbone: nn.Module, num_classes: int, *, dropout: float, crop_size=513, psa_type: str = "bi",
                 psa_compact: bool = False, shrink_factor: int = 2, ops_impl: str = "auto",
                 align_corners: bool = False) -> PSAHead:
    """PSANet's head with the mask size derived from the training crop: (2h-1, 2w-1) for the
    shrunk feature map h x w (127x63 for a 1024x512 crop at OS8), or (h, w) for the compact variant."""
    in_channels, index = main_input(backbone)
    reduction = backbone.feature_info[index].reduction
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    h, w = shrunk_size(crop_h, reduction, shrink_factor), shrunk_size(crop_w, reduction, shrink_factor)
    mask = (h, w) if psa_compact else (2 * h - 1, 2 * w - 1)
    return PSAHead(in_channels, 512, num_classes, dropout, in_index=index, psa_type=psa_type, mask=mask,
                   compact=psa_compact, shrink_factor=shrink_factor, ops_impl=ops_impl, align_corners=align_corners)
