"""Backbone weights from a local file (``--pretrained``), shared by every backbone family; never downloads.

``read_state_dict(path)`` reads a torch.save file safely (weights_only; a file that needs
unpickling of arbitrary objects is refused, never silently loaded), finds the state dict under
"state_dict" or "model", strips ``module.`` / ``_orig_mod.`` prefixes, keeps only the
``backbone.`` part of a whole segmentor's checkpoint and drops a ResNet classifier (``fc.*``).
``mismatches(own, state)`` lists what does not fit, for a one-line error.
Every failure is a ``UserError`` naming ``‹pretrained›`` and the file.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from segzoo.runtime.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BACKBONE_PREFIX = "backbone."
_DROPPED_PREFIXES = ("fc.",)
_SHOWN = 4  # how many offending keys a message lists before counting the rest


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone state dict in the file ``path`` (see the module doc)."""
    path = Path(path)
    return _unwrap(_read(path), path)


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
                        "give a checkpoint of backbone weights")
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


def listed(keys: list[str], describe: Callable[[str], str] = str) -> str:
    shown = ", ".join(describe(k) for k in keys[:_SHOWN])
    more = f", ... {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} ({shown}{more})"




def mismatches(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
               ignored: set = frozenset()) -> list[str]:
    """What keeps ``state`` from loading into a module whose state dict is ``own``: missing keys,
    unexpected keys (other than ``ignored``) and keys of another shape, each counted and a few named."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and k not in ignored]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {listed(unexpected)}")
    if reshaped:
        problems.append("other shape " + listed(
            reshaped, lambda k: f"{k} file {list(state[k].shape)} vs model {list(own[k].shape)}"))
    return problems
