"""Backbone + decode head (+ auxiliary head) as one module; the loss stays outside."""
from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch import nn

from segzoo.models.heads import resize
from segzoo.models.pretrained import load_backbone_weights
from segzoo.models.resnet import ResNet, build_resnet

log = logging.getLogger(__name__)


class EncoderDecoder(nn.Module):
    """Semantic segmentor.

    Args:
        backbone: returns a list of stage features (``ResNet``).
        decode_head: ``DecodeHead``-like; returns logits or a dict {"out": logits, **extras}.
        aux_head: optional head on an intermediate stage (layer3 by default, see
            ``segzoo.models.heads.make_aux_head``), run in training mode only.

    ``forward(x)`` with x (N, 3, H, W), any H and W, returns a dict:
        "out": (N, K, H, W) logits, bilinearly upsampled (align_corners=False) to the input;
        training mode only: "aux" (N, K, H, W) the same way, and the decode head's extras
        as the head returns them (e.g. EncNet's "se": (N, K) image-level class logits).
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, aux_head: nn.Module | None = None):
        super().__init__()
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
        result = {"out": resize(decoded, size)}
        if self.training:
            if self.aux_head is not None:
                result["aux"] = resize(self.aux_head(features), size)
            result.update(extras)
        return result

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Pretrained trunk: optimizers usually give it the base learning rate."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Everything not in the backbone (decode and aux heads), often at 10x the base lr."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return (p for p in self.parameters() if id(p) not in backbone_ids)


def build_encoder(backbone: str, output_stride: int, stem: str, pretrained: str | None) -> ResNet:
    """The backbone every model builder starts from, with ImageNet weights from the local file
    ``pretrained`` (``--pretrained``) when given."""
    encoder = build_resnet(backbone, output_stride=output_stride, stem=stem)
    if pretrained:
        log.info("%s", load_backbone_weights(encoder, pretrained))
    return encoder
