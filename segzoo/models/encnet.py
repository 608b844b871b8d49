"""EncNet: Context Encoding for Semantic Segmentation (Zhang et al., CVPR 2018)."""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.models import MODELS
from segzoo.models.heads import ConvBNReLU, DecodeHead, main_input, presence_loss
from segzoo.registry import Option
from segzoo.runtime.config_types import non_negative_float, positive_int


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A region that runs in the tensors' own dtype even inside an autocast block."""
    is_available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if is_available is not None and not is_available(device_type):
        return contextlib.nullcontext()  # no autocast on this device, so none to switch off
    return torch.autocast(device_type=device_type, enabled=False)


class Encoding(nn.Module):
    """Encoding layer (paper Sec. 3.1): K learnable codewords c_k and smoothing factors s_k;
    each pixel's feature x_i is soft-assigned to the codewords,
    a_ik = softmax_k(s_k ||x_i - c_k||^2), and the residuals are aggregated per codeword,
    e_k = sum_i a_ik (x_i - c_k). As in the authors' code, s_k carries the paper's minus sign
    (it starts in (-1, 0)), so near codewords get the larger weights.

    The paper's formula, written literally, materialises an (N, HW, K, C) tensor (4 GiB for a
    1024x512 crop at batch 8). Both steps are instead expanded into matrix products,
    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 and sum_i a_ik (x_i - c_k) = (A^T X)_k - (sum_i a_ik) c_k,
    which need only (N, HW, K). They run in at least float32 even under autocast because the expanded
    distance cancels large terms, which half precision would not survive.

    Shapes: (N, C, H, W) -> (N, K, C).
    """

    def __init__(self, channels: int, num_codes: int):
        super().__init__()
        self.channels, self.num_codes = channels, num_codes
        bound = 1.0 / math.sqrt(num_codes * channels)
        self.codewords = nn.Parameter(torch.empty(num_codes, channels).uniform_(-bound, bound))
        self.scale = nn.Parameter(torch.empty(num_codes).uniform_(-1.0, 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
        with _autocast_off(x.device.type):
            features = x.to(dtype).flatten(2).transpose(1, 2)  # (N, HW, C)
            codewords, scale = self.codewords.to(dtype), self.scale.to(dtype)
            sq_dist = ((features * features).sum(-1, keepdim=True)
                       - 2.0 * features @ codewords.t()
                       + (codewords * codewords).sum(-1))  # (N, HW, K)
            assign = F.softmax(scale * sq_dist, dim=-1)
            encoded = assign.transpose(1, 2) @ features - assign.sum(1).unsqueeze(-1) * codewords
        return encoded.to(x.dtype)


class EncModule(nn.Module):
    """Context encoding module: 1x1 conv-BN-ReLU, Encoding, BN1d over the codes + ReLU,
    mean over codes -> encoded context e (N, C); channel attention gamma = sigmoid(fc(e))
    rescales the input, y = relu(x + x * gamma) (as the authors' and mmseg's code).

    Shapes: (N, C, h, w) -> (e: (N, C), y: (N, C, h, w)).
    """

    def __init__(self, channels: int, num_codes: int = 32):
        super().__init__()
        self.project = ConvBNReLU(channels, channels, 1)
        self.encoding = Encoding(channels, num_codes)
        self.code_norm = nn.BatchNorm1d(num_codes)
        self.attention = nn.Sequential(nn.Linear(channels, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = F.relu(self.code_norm(self.encoding(self.project(x)))).mean(dim=1)
        gamma = self.attention(encoded)[:, :, None, None]
        return encoded, F.relu(x + x * gamma)


class EncHead(DecodeHead):
    """EncNet head: 3x3 conv-BN-ReLU (2048 -> 512 on ResNet-50), context encoding module,
    classifier; plus the semantic-encoding branch, a linear layer on the encoded context that
    predicts which classes occur in the image (its loss is binary cross-entropy, computed by
    the trainer).

    Returns {"out": (N, K, h, w) logits, "se": (N, K) logits} ("se" only with ``se_weight`` > 0);
    ``extra_losses`` turns "se" into the weighted semantic-encoding loss,
    se_weight * BCE(se, classes present in the label).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1,
                 in_index: int = -1, num_codes: int = 32, se_weight: float = 0.2):
        super().__init__(in_channels, channels, num_classes, dropout, in_index)
        self.num_classes, self.se_weight = num_classes, se_weight
        self.bottleneck = ConvBNReLU(in_channels, channels, 3)
        self.enc = EncModule(channels, num_codes)
        self.se_classifier = nn.Linear(channels, num_classes) if se_weight > 0 else None

    def extra_losses(self, outputs: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if "se" not in outputs:
            return {}
        return {"se": self.se_weight * presence_loss(outputs["se"], target, self.num_classes)}

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        # Overrides DecodeHead.forward: the encoded context feeds a second output.
        encoded, x = self.enc(self.bottleneck(features[self.in_index]))
        result = {"out": self.classifier(x)}
        if self.se_classifier is not None:
            result["se"] = self.se_classifier(encoded)
        return result


@MODELS.register("encnet", options=[
    Option("se_weight", non_negative_float, 0.2, "EncNet semantic-encoding loss weight (0 = no SE branch)"),
    Option("num_codes", positive_int, 32, "EncNet codewords"),
], summary="EncNet, context encoding + SE loss (Zhang et al., CVPR 2018)")
def build_encnet(backbone: nn.Module, num_classes: int, *, dropout: float, num_codes: int = 32,
                 se_weight: float = 0.2) -> EncHead:
    """EncNet's head (512 channels, 32 codewords); its training-mode output adds "se" (N, K)."""
    in_channels, index = main_input(backbone)
    return EncHead(in_channels, 512, num_classes, dropout, in_index=index, num_codes=num_codes, se_weight=se_weight)
