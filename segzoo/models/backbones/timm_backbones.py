"""Backbone families built through timm (``timm.create_model(name, features_only=True)``):

* ResNeXt (Xie et al., CVPR 2017): ``resnext50_32x4d``, ``resnext101_32x8d``, ``resnext101_64x4d``;
* HRNet (Wang et al., TPAMI 2020), HRNetV2 output: ``hrnet_w18``, ``hrnet_w32``, ``hrnet_w48``;
* EfficientNet (Tan & Le, ICML 2019): ``efficientnet_b0``..``b7`` and ``tf_efficientnet_b0``..``b7``.

timm is optional: the names always register, and building one without timm installed raises one
line saying ``pip install timm``; ``import segzoo`` never needs it. Weights are never downloaded
(``pretrained=False`` always); ``--pretrained FILE`` loads a local timm (or torchvision-layout,
same names for ResNeXt) ImageNet checkpoint, whose classifier keys are dropped.

Contract (see ``segzoo.models.backbones``): the stride-2 stem feature timm offers is not
returned; ResNeXt and EfficientNet return their four stages at strides 4, 8, 16, 32, the last two
dilated instead at ``output_stride`` 8 or 16 (timm's own dilation); main = last stage,
aux = the one before. HRNet cannot dilate: it returns its four branches (strides 4, 8, 16, 32)
plus the HRNetV2 fusion of all of them (each upsampled to stride 4 and concatenated: 270
channels for W18, 720 for W48), which is the main feature, so heads run at stride 4; it accepts
only ``output_stride`` 32 (its deepest branch), and says so for 8 or 16.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from segzoo.models.backbones.weights import mismatches, read_state_dict
from segzoo.models.backbones import BACKBONES, DILATED_DEFAULT_STRIDE, OUTPUT_STRIDE, PRETRAINED, StageInfo
from segzoo.models.heads import resize
from segzoo.runtime.errors import OptionError, UserError

log = logging.getLogger(__name__)

RESNEXT = ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")
HRNET = ("hrnet_w18", "hrnet_w32", "hrnet_w48")
EFFICIENTNET = tuple(f"{prefix}efficientnet_b{i}" for prefix in ("", "tf_") for i in range(8))
FAMILIES = "ResNet (resnet18..152), ResNeXt (resnext*), HRNet (hrnet_w*), EfficientNet ([tf_]efficientnet_b0..b7)"
_BODY_PREFIX = "body."


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("the ResNeXt, HRNet and EfficientNet backbones are built by timm, which is not "
                        "installed: pip install timm") from None
    return timm


class TimmBackbone(nn.Module):
    """A timm ``features_only`` network meeting the backbone contract.

    Args:
        name: the timm model name (one of RESNEXT, HRNET, EFFICIENTNET).
        output_stride: 8, 16 or 32; None: 8 (HRNet: 32 only, its native stride, see the module docstring).

    Shapes: input (N, 3, H, W); feature i is (N, feature_info[i].channels, ~H / r, ~W / r) with
    r = feature_info[i].reduction. HRNet adds a last feature (N, sum of branch channels, ~H/4, ~W/4).
    """

    def __init__(self, name: str, output_stride: int | None = None):
        super().__init__()
        timm = _timm()
        self.name, self.is_hrnet = name, name in HRNET
        if self.is_hrnet:
            if output_stride not in (None, 32):
                raise OptionError("output_stride", output_stride,
                                  f"is not possible for {name}: HRNet has no dilation; its branches end at "
                                  "stride 32 and its output (HRNetV2 fusion) is at stride 4; use ‹output_stride› 32")
            # feature_location="" returns the raw branch outputs (not timm's classification
            # "incre" blocks), which is what HRNetV2 concatenates.
            self.body = timm.create_model(name, features_only=True, pretrained=False, feature_location="",
                                          out_indices=(1, 2, 3, 4))
        else:
            self.body = timm.create_model(name, features_only=True, pretrained=False,
                                          output_stride=output_stride or DILATED_DEFAULT_STRIDE, out_indices=(1, 2, 3, 4))
        info = self.body.feature_info
        self.feature_info = [StageInfo(n, c, r) for n, c, r in zip(info.module_name(), info.channels(),
                                                                   info.reduction())]
        if self.is_hrnet:
            self.feature_info.append(StageInfo("hrnetv2_fusion", sum(info.channels()), info.reduction()[0]))
            # main: the fusion (stride 4); aux: the stride-16 branch, the counterpart of ResNet's layer3.
            self.main_index, self.aux_index = 4, 2
        else:
            self.main_index, self.aux_index = 3, 2
        self.output_stride = self.feature_info[self.main_index].reduction

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = list(self.body(x))
        if self.is_hrnet:
            # HRNetV2 (Sun et al. 2019): bilinear upsampling of every branch to the
            # highest-resolution one, then concatenation; no parameters.
            size = features[0].shape[-2:]
            features.append(torch.cat([resize(f, size) for f in features], dim=1))
        return features


def load_timm_weights(backbone: TimmBackbone, path: str | Path) -> str:
    """Load a local ImageNet checkpoint of ``backbone.name`` into ``backbone`` (never downloads).

    The file may be a timm/torchvision classification state dict (its classifier and other
    keys the feature network lacks are dropped when the full timm model has them), possibly
    under "state_dict"/"model" and with ``module.``/``backbone.``/``body.`` prefixes. A file of
    another network (keys missing, unknown or of another shape) is a ``UserError`` naming
    ``--pretrained`` with the counts.
    """
    path = Path(path)
    state = read_state_dict(path)
    state = {k[len(_BODY_PREFIX):] if k.startswith(_BODY_PREFIX) else k: v for k, v in state.items()}
    own = backbone.body.state_dict()
    with torch.device("meta"):  # only the key names of the full classifier network are needed
        classifier_only = set(_timm().create_model(backbone.name, pretrained=False).state_dict()) - set(own)
    problems = mismatches(own, state, ignored=classifier_only)
    if problems:
        raise UserError(f"‹pretrained› {path} does not fit backbone {backbone.name}: {'; '.join(problems)}; "
                        "give an ImageNet checkpoint of this ‹backbone›")
    backbone.body.load_state_dict({k: state[k] for k in own}, strict=True)
    return f"loaded {len(own)} tensors from {path} into {backbone.name} ({len(state) - len(own)} dropped)"


def build_timm_backbone(name: str, output_stride: int | None = None, pretrained: str | None = None) -> TimmBackbone:
    """The timm backbone ``name`` (see the module docstring); ``pretrained``: a local file."""
    if name not in RESNEXT + HRNET + EFFICIENTNET:
        raise OptionError("backbone", name, f"is not a timm backbone we support; families: {FAMILIES}")
    model = TimmBackbone(name, output_stride=output_stride)
    if pretrained:
        log.info("%s", load_timm_weights(model, pretrained))
    return model


_SUMMARIES = (
    (RESNEXT, "ResNeXt via timm, dilated (Xie et al., CVPR 2017)"),
    (HRNET, "HRNetV2 via timm, stride-4 fused output, --output_stride 32 only (Wang et al., TPAMI 2020)"),
    (EFFICIENTNET, "EfficientNet via timm, dilated (Tan & Le, ICML 2019)"),
)
for _names, _summary in _SUMMARIES:
    for _name in _names:
        BACKBONES.register(_name, options=(OUTPUT_STRIDE, PRETRAINED), summary=_summary)(build_timm_backbone)
