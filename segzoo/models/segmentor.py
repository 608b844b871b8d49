"""Backbone + decode head (+ auxiliary head) as one module; the loss stays outside."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from segzoo.models.heads import FCNHead, resize

AUX_CHANNELS = 256


class EncoderDecoder(nn.Module):
    """Semantic segmentor.

    Args:
        backbone: returns a list of stage features and describes them (see
            ``segzoo.models.backbones``: ``feature_info``, ``main_index``, ``aux_index``).
        decode_head: reads the features it needs; returns logits or {"out": logits, **extras}.
        aux_head: optional head on the backbone's ``aux_index`` feature (``make_aux_head``),
            run in training mode only.
        align_corners: of the final upsampling to the input size (see ``heads.resize``).

    ``forward(x)`` with x (N, 3, H, W), any H and W, returns a dict:
        "out": (N, K, H, W) logits, bilinearly upsampled (align_corners=False) to the input;
        training mode only: "aux" (N, K, H, W) the same way, and the decode head's extras
        as the head returns them (e.g. EncNet's "se": (N, K) image-level class logits).
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, aux_head: nn.Module | None = None,
                 align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        decoded = self.decode_head(features)
        extras: dict[str, torch.Tensor] = {}
        if isinstance(decoded, dict):
            extras = {k: v for k, v in decoded.items() if k != "out"}
            decoded = decoded["out"]
        result = {"out": resize(decoded, size, self.align_corners)}
        if self.training:
            if self.aux_head is not None:
                result["aux"] = resize(self.aux_head(features), size, self.align_corners)
            result.update(extras)
        return result

    def extra_losses(self, outputs: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decode head's own weighted loss terms (EncNet's SE loss), {} for most heads."""
        own = getattr(self.decode_head, "extra_losses", None)
        return own(outputs, target) if own is not None else {}

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Pretrained trunk: optimizers usually give it the base learning rate."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Everything not in the backbone (decode and aux heads), often at 10x the base lr."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return (p for p in self.parameters() if id(p) not in backbone_ids)


def make_aux_head(backbone: nn.Module, num_classes: int, dropout: float = 0.1) -> FCNHead:
    """The auxiliary FCN head every model shares (PSPNet and mmseg put it on ResNet's layer3:
    deep enough to be semantic, early enough to help); it reads the backbone's ``aux_index``
    feature. Its loss weight (e.g. 0.4) is the criterion's business."""
    index = backbone.aux_index
    return FCNHead(backbone.feature_info[index].channels, AUX_CHANNELS, num_classes, dropout, in_index=index)
