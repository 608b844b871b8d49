"""Model registry: a plain {name: builder} dict and ``build_model``.

A builder has the signature
    builder(num_classes, *, backbone, output_stride, stem, pretrained, aux, dropout, **options)
    -> EncoderDecoder
where ``options`` are explicit keyword parameters of that model (e.g. PSPNet's ``bins``).
``build_model`` always passes the common arguments, so builders declare them without
defaults; a new model (PSANet, CCNet) adds its builder to ``MODELS``, e.g. with
``build_encoder``/``EncoderDecoder`` from ``segzoo.models.segmentor`` and ``make_aux_head`` from
``segzoo.models.heads``:

    def build_ccnet(num_classes, *, backbone, output_stride, stem, pretrained, aux, dropout,
                    recurrence=2, ops_impl="auto"):
        encoder = build_encoder(backbone, output_stride, stem, pretrained)
        head = RCCAHead(encoder.out_channels[-1], 512, num_classes, dropout, ...)
        return EncoderDecoder(encoder, head, make_aux_head(encoder.out_channels, num_classes, dropout) if aux else None)
"""
from __future__ import annotations

import inspect

from segzoo.models.ccnet import build_ccnet
from segzoo.models.deeplabv3 import build_deeplabv3
from segzoo.models.encnet import build_encnet
from segzoo.models.psanet import build_psanet
from segzoo.models.pspnet import build_pspnet
from segzoo.models.resnet import ARCHS
from segzoo.models.segmentor import EncoderDecoder
from segzoo.runtime.errors import UserError

MODELS = {
    "pspnet": build_pspnet,
    "deeplabv3": build_deeplabv3,
    "encnet": build_encnet,
    "psanet": build_psanet,
    "ccnet": build_ccnet,
}

# Model options the command line carries on every run (train.py passes them whatever the
# model): a builder receives those it declares (PSANet needs the crop size, PSPNet does not)
# and the rest are dropped. A model that adds such a flag lists it here.
CLI_MODEL_OPTIONS = frozenset({"crop_size", "ops_impl", "psa_type", "psa_compact", "recurrence"})


def build_model(name: str, num_classes: int, backbone: str = "resnet50", output_stride: int = 8,
                stem: str = "deep", pretrained: str | None = None, aux: bool = True, dropout: float = 0.1,
                **model_kwargs) -> EncoderDecoder:
    """Build segmentor ``name`` from ``MODELS``.

    Args:
        name: a key of ``MODELS`` (``--model_name``).
        num_classes: K, logits per pixel.
        backbone: "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152".
        output_stride: 8 | 16 | 32, input size / feature size of the last stage.
        stem: "deep" (semseg, 3x 3x3 convs) | "plain" (torchvision, 7x7 conv).
        pretrained: local ImageNet checkpoint for the backbone, or None for random init.
        aux: add the FCN auxiliary head on layer3 (its output "aux" in training mode).
        dropout: Dropout2d rate before every classifier.
        model_kwargs: the model's own options (see its builder), plus ``CLI_MODEL_OPTIONS``,
            which are dropped for models that do not take them. Anything else is a UserError.

    Returns:
        ``EncoderDecoder``; ``model(x)`` gives {"out": (N, K, H, W), and in training mode
        "aux" and model extras such as EncNet's "se": (N, K)}.
    """
    if name not in MODELS:
        raise UserError(f"--model_name {name!r} is not known; use one of {', '.join(MODELS)}")
    if backbone not in ARCHS:
        raise UserError(f"--backbone {backbone!r} is not known; use one of {', '.join(ARCHS)}")
    if num_classes < 1:
        raise UserError(f"--num_classes {num_classes} must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--dropout {dropout} must be in [0, 1)")
    builder = MODELS[name]
    common = dict(backbone=backbone, output_stride=output_stride, stem=stem, pretrained=pretrained,
                  aux=aux, dropout=dropout)
    own_options = {p.name for p in inspect.signature(builder).parameters.values()
                   if p.kind == p.KEYWORD_ONLY and p.name not in common}
    unknown = sorted(k for k in model_kwargs if k not in own_options and k not in CLI_MODEL_OPTIONS)
    if unknown:
        raise UserError(f"model {name!r} has no option {', '.join(unknown)}; "
                        f"its options are {sorted(own_options) or 'none'}")
    options = {k: v for k, v in model_kwargs.items() if k in own_options}
    return builder(num_classes, **common, **options)


__all__ = ["MODELS", "CLI_MODEL_OPTIONS", "EncoderDecoder", "build_model"]
