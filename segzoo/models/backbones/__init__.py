"""Backbones and their contract.

A backbone is an ``nn.Module`` whose ``forward(x)`` takes (N, 3, H, W) and returns a list of
stage features, and which describes them (as timm's ``feature_info`` does):

    feature_info: list[StageInfo]   one per returned feature: name, channels, reduction (stride)
    main_index: int                 the feature a decode head reads (usually the last)
    aux_index: int                  the feature the auxiliary FCN head reads (ResNet: layer3)

Heads take what they need from this description (``backbone.feature_info[backbone.main_index]
.channels``), never from a hard-coded index. A backbone family registers each of its names in
``BACKBONES`` with its builder ``build(name, *, output_stride, pretrained, **own options)``;
adding a family is one new module here.
"""
from __future__ import annotations

from dataclasses import dataclass

from segzoo.registry import Option, Registry

BACKBONES = Registry("backbone", "segzoo.models.backbones")


@dataclass(frozen=True)
class StageInfo:
    """What a head needs to know about one backbone feature."""

    name: str        # e.g. "layer3"
    channels: int
    reduction: int   # input size / feature size
    dilation: int = 1


def _output_stride(text) -> int:
    value = int(text)
    if value not in (8, 16, 32):
        raise ValueError(f"expected 8, 16 or 32, got {text!r}")
    return value


# Options every backbone family takes (declared once here, listed by each family).
OUTPUT_STRIDE = Option("output_stride", _output_stride, None,
                       "input size / size of the last stage: 8 or 16 dilate the last stages, 32 none "
                       "(default: 8 where the backbone can dilate; HRNet: its native 32, fused output at stride 4)",
                       choices=(8, 16, 32))
DILATED_DEFAULT_STRIDE = 8  # what a dilatable backbone does when --output_stride is not given
PRETRAINED = Option("pretrained", str, None, "local ImageNet checkpoint of the backbone (never downloaded)")


def build_backbone(name: str, **options):
    """The backbone ``name`` (``--backbone``) with its options; unknown names list the known ones."""
    entry = BACKBONES.get(name)
    return entry.obj(name, **BACKBONES.options_for(name, options))


__all__ = ["BACKBONES", "StageInfo", "OUTPUT_STRIDE", "PRETRAINED", "build_backbone"]
