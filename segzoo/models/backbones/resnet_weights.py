"""ImageNet weights for the ResNet backbone from a local file (``--pretrained``); never downloads.

Two layouts are understood, both with torchvision's parameter names for the residual stages
(``layerX.Y.{conv1,bn1,...,downsample.0/1}.*``):
  * torchvision: plain 7x7 stem ``conv1``/``bn1``, e.g. ``resnet50-0676ba61.pth``;
  * hszhao/semseg: deep stem ``conv1..3``/``bn1..3`` (3x3 convs), e.g. ``resnet50_v2.pth``.
The state dict may sit under "state_dict" or "model" and carry ``module.`` (DDP/DataParallel),
``_orig_mod.`` (torch.compile) or ``backbone.`` (a whole segmentor's checkpoint, whose head
weights are then ignored) prefixes. The classifier ``fc.*`` is dropped. Everything else must
match the backbone exactly: anything missing, extra or of another shape is a ``UserError``.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from segzoo.runtime.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BACKBONE_PREFIX = "backbone."
_DROPPED_PREFIXES = ("fc.",)
_LAYOUT_OF_STEM = {"plain": "torchvision layout", "deep": "semseg layout"}
_SHOWN = 4  # how many offending keys a message lists before counting the rest


def _read(path: Path) -> object:
    if not path.exists():
        raise UserError(f"‹pretrained› {path}: no such file; give the path of a local ImageNet checkpoint")
    if not path.is_file():
        raise UserError(f"‹pretrained› {path}: not a file; give the path of a checkpoint file (.pth)")
    try:
        with warnings.catch_warnings():
            # Plain pickles (not torch.save) warn about their protocol before failing below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any failure to read means "not a usable checkpoint"
        needs_pickle = re.search(r"GLOBAL\s+([\w.]+)", str(err))
        if needs_pickle:
            # Unpickling arbitrary objects can run arbitrary code: never done silently.
            raise UserError(
                f"‹pretrained› {path}: the file stores Python objects ({needs_pickle.group(1)}) that only "
                "torch.load(weights_only=False) can read, which may run arbitrary code; if you trust the "
                "file, load it that way once, torch.save only its state dict and pass that file"
            ) from None
        raise UserError(
            f"‹pretrained› {path}: not a PyTorch checkpoint ({_short_reason(err)}); "
            "give a .pth file written by torch.save"
        ) from None


def _short_reason(err: Exception) -> str:
    """The informative part of a torch.load failure, without torch's multi-line advice."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    detail = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {detail[:100]}" if detail else type(err).__name__


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint, with DDP/compile prefixes removed."""
    while isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in _WRAPPER_KEYS):
        obj = next(obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping))
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"‹pretrained› {path}: holds no state dict (found {type(obj).__name__}); "
                        "give a checkpoint of ResNet weights")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"‹pretrained› {path}: entries {not_tensors[:_SHOWN]} are not tensors; give a state "
                        "dict, or a checkpoint with it under 'state_dict' or 'model'")
    state = {}
    for key, value in obj.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    if any(k.startswith(_BACKBONE_PREFIX) for k in state):
        # A whole segmentor: its backbone is what we want, its heads are for another task.
        state = {k[len(_BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(_BACKBONE_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}


def _stem_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """'deep' (3x3 conv1 + conv2/conv3), 'plain' (7x7 conv1) or None when there is no stem."""
    conv1 = state.get("conv1.weight")
    if "conv2.weight" in state or (conv1 is not None and conv1.shape[-1] == 3):
        return "deep"
    if conv1 is not None:
        return "plain"
    return None


def _listed(keys: list[str], describe: Callable[[str], str] = str) -> str:
    shown = ", ".join(describe(k) for k in keys[:_SHOWN])
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} ({shown}{more})"


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> str:
    """Load ImageNet weights from the local file ``path`` into ``backbone`` (a ``ResNet``).

    Raises ``UserError`` naming the file and ``--pretrained`` when the file is missing, is
    not a checkpoint, needs unsafe unpickling, has the other stem type (pointing at
    ``--stem``) or does not match key for key and shape for shape.

    Returns a one-line summary, e.g. "loaded 318 tensors from r50.pth (torchvision layout)".
    """
    path = Path(path)
    state = _unwrap(_read(path), path)

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

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        problems = []
        if missing:
            problems.append(f"missing {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected {_listed(unexpected)}")
        if reshaped:
            problems.append("other shape " + _listed(
                reshaped, lambda k: f"{k} file {list(state[k].shape)} vs model {list(own[k].shape)}"))
        raise UserError(f"‹pretrained› {path} does not fit the backbone: {'; '.join(problems)}; "
                        "check that ‹backbone› and ‹stem› match the checkpoint")

    backbone.load_state_dict(state, strict=True)
    return f"loaded {loaded} tensors from {path} ({_LAYOUT_OF_STEM[backbone.stem]})"
