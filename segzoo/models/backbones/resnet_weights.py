"""ImageNet weights for the ResNet backbone from a local file (``--pretrained``); never downloads.

Two layouts are understood, both with torchvision's parameter names for the residual stages
(``layerX.Y.{conv1,bn1,...,downsample.0/1}.*``):
  * torchvision: plain 7x7 stem ``conv1``/``bn1``, e.g. ``resnet50-0676ba61.pth``;
  * hszhao/semseg: deep stem ``conv1..3``/``bn1..3`` (3x3 convs), e.g. ``resnet50_v2.pth``.
The file is read by ``weights.read_state_dict`` (wrappers, prefixes and the classifier handled
there). Everything else must match the backbone exactly: anything missing, extra or of another
shape is a ``UserError``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from segzoo.models.backbones.weights import mismatches, read_state_dict
from segzoo.runtime.errors import UserError

_LAYOUT_OF_STEM = {"plain": "torchvision layout", "deep": "semseg layout"}


def _stem_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """'deep' (3x3 conv1 + conv2/conv3), 'plain' (7x7 conv1) or None when there is no stem."""
    conv1 = state.get("conv1.weight")
    if "conv2.weight" in state or (conv1 is not None and conv1.shape[-1] == 3):
        return "deep"
    if conv1 is not None:
        return "plain"
    return None


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> str:
    """Load ImageNet weights from the local file ``path`` into ``backbone`` (a ``ResNet``).

    Raises ``UserError`` naming the file and ``--pretrained`` when the file is missing, is
    not a checkpoint, needs unsafe unpickling, has the other stem type (pointing at
    ``--stem``) or does not match key for key and shape for shape.

    Returns a one-line summary, e.g. "loaded 318 tensors from r50.pth (torchvision layout)".
    """
    path = Path(path)
    state = read_state_dict(path)

    stem = _stem_of(state)
    if stem is not None and stem != backbone.stem:
        raise UserError(
            f"‹pretrained› {path} has a {stem} stem ({_LAYOUT_OF_STEM[stem]}) but the backbone was built "
            f"with ‹stem› {backbone.stem}; use ‹stem› {stem} or a checkpoint with a {backbone.stem} stem"
        )

    own = backbone.state_dict()
    loaded = len(state)
    # Checkpoints from before BN counters existed (e.g. torchvision's first ResNet files)
    # lack num_batches_tracked; the counter only matters for momentum=None, so keep ours.
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value

    problems = mismatches(own, state)
    if problems:
        raise UserError(f"‹pretrained› {path} does not fit the backbone: {'; '.join(problems)}; "
                        "check that ‹backbone› and ‹stem› match the checkpoint")

    backbone.load_state_dict(state, strict=True)
    return f"loaded {loaded} tensors from {path} ({_LAYOUT_OF_STEM[backbone.stem]})"
