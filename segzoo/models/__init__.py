"""Segmentation models: a registry of decode heads, one generic assembly.

A model is a backbone (``segzoo.models.backbones``), a decode head and, optionally, the FCN
auxiliary head, put together by ``build_model`` as an ``EncoderDecoder``. A model module
registers its head builder where it is defined, with the options it owns:

    @MODELS.register("ccnet", options=[Option("recurrence", positive_int, 2, "criss-cross passes")])
    def build_ccnet_head(backbone, num_classes, *, dropout, recurrence): ...

The builder reads what it needs from the backbone's contract (``feature_info``, ``main_index``)
and returns the decode head. ``dropout`` is always passed; ``crop_size`` (the training crop,
which fixes PSANet's attention-mask size) and ``align_corners`` only to builders that declare them. A head with extra
training losses (EncNet's semantic-encoding loss) defines ``extra_losses(outputs, target)``.
"""
from __future__ import annotations

import inspect

from segzoo.models.backbones import BACKBONES, build_backbone
from segzoo.models.segmentor import EncoderDecoder, make_aux_head
from segzoo.registry import Registry
from segzoo.runtime.errors import OptionError

MODELS = Registry("model", "segzoo.models", key="model_name")


def build_model(name: str, num_classes: int, backbone: str = "resnet50", aux: bool = True, dropout: float = 0.1,
                crop_size=513, align_corners: bool = False, **options) -> EncoderDecoder:
    """Build segmentor ``name``.

    Args:
        name: a registered model (``--model_name``): pspnet, deeplabv3, psanet, ccnet, encnet, ...
        num_classes: K, logits per pixel.
        backbone: a registered backbone name (``--backbone``), e.g. "resnet50".
        aux: add the FCN auxiliary head on the backbone's ``aux_index`` feature.
        dropout: Dropout2d rate before every classifier.
        crop_size: training crop (int or (h, w)), for heads whose shape depends on it (PSANet).
        align_corners: bilinear resizing inside the heads that resize (PPM, PSA) and of the final
            upsampling: False as mmseg/torchvision, True as hszhao/semseg.
        options: options of the model and of the backbone (see ``MODELS.get(name).options`` and
            ``BACKBONES.get(backbone).options``); options neither declares are refused.

    Returns:
        ``EncoderDecoder``; ``model(x)`` gives {"out": (N, K, H, W), and in training mode
        "aux" and the head's extras such as EncNet's "se": (N, K)}.
    """
    head_entry, backbone_entry = MODELS.get(name), BACKBONES.get(backbone)
    known = {o.name for o in head_entry.options} | {o.name for o in backbone_entry.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionError("model_name", name, f"with backbone {backbone!r} has no option {', '.join(unknown)}; "
                                              f"its options are {sorted(known) or 'none'}")
    if num_classes < 1:
        raise OptionError("num_classes", num_classes, "must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise OptionError("dropout", dropout, "must be in [0, 1)")
    trunk = build_backbone(backbone, **options)
    head_options = MODELS.options_for(name, options)
    accepted = inspect.signature(head_entry.obj).parameters
    for key, value in (("crop_size", crop_size), ("align_corners", align_corners)):
        if key in accepted:
            head_options[key] = value
    head = head_entry.obj(trunk, num_classes, dropout=dropout, **head_options)
    return EncoderDecoder(trunk, head, make_aux_head(trunk, num_classes, dropout) if aux else None, align_corners)


__all__ = ["MODELS", "EncoderDecoder", "build_model"]
