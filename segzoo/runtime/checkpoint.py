"""Checkpoints: atomic writes, prefix-tolerant loading, and clear errors on mismatches.

A checkpoint is a dict holding the unwrapped model (no `module.` / `_orig_mod.` prefixes),
optimizer, scheduler and GradScaler states, the last finished epoch, the best score and the
run's arguments, plus the facts needed to refuse loading it into the wrong model.
"""
from __future__ import annotations

import errno
import pickle
from pathlib import Path

import torch

from segzoo.runtime.atomic import atomic_write
from segzoo.runtime.diskspace import check_room
from segzoo.runtime.errors import UserError

FORMAT = "segzoo-checkpoint-v1"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_names(model_name: str, dataset: str) -> dict:
    """File names inside the work dir (the original's `best_pspnet_voc.pth` pattern)."""
    return {"latest": f"latest_{model_name}_{dataset}.pth", "best": f"best_{model_name}_{dataset}.pth"}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def strip_prefixes(state_dict: dict) -> dict:
    """Drop DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes, however nested."""
    clean = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        clean[key] = value
    return clean


def save_checkpoint(state: dict, path: Path) -> None:
    """Temporary file + rename (segzoo.runtime.atomic): a crash never leaves half a checkpoint.
    A file system without room for it (checked first, and ENOSPC while writing) or a read-only
    one is a UserError naming the folder; the previous file at `path` stays as it was."""
    path = Path(path)
    check_room(path.parent, state)
    try:
        atomic_write(path, lambda file: torch.save(state, file))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"‹work_dir› {path.parent}: the disk filled up while writing {path.name}; free some "
                            f"space and resume (the previous {path.name} is intact)") from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UserError(f"‹work_dir› {path.parent} is not writable ({exc.strerror}); pick another "
                            f"‹work_dir›") from None
        raise
    except RuntimeError as exc:  # torch.save's zip writer reports a failed write this way
        if "file write failed" in str(exc) or "No space left" in str(exc):
            raise UserError(f"‹work_dir› {path.parent}: the disk filled up while writing {path.name}; free some "
                            f"space and resume (the previous {path.name} is intact)") from None
        raise


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint (ours, or a bare state dict) onto the cpu; one-line errors for bad files."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"‹ckpt› {path}: no such file")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's own text here advises weights_only=False, which is wrong for a file that is
        # simply not a checkpoint (and unsafe for one from elsewhere).
        raise UserError(f"‹ckpt› {path} is not a PyTorch checkpoint (corrupt, another format, or pickled "
                        f"objects other than tensors); pass a .pth file saved by this runner or torch.save") from None
    except Exception as exc:  # noqa: BLE001 - on arbitrary bytes the unpickler also raises IndexError, KeyError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"‹ckpt› {path} is not a readable PyTorch checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"‹ckpt› {path} holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == FORMAT:
        return obj
    # A bare state dict (or {"state_dict": ...} / {"model": ...}) from elsewhere: weights only.
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"‹ckpt› {path} is not a model checkpoint (no tensors of a state dict in it)")
    return {"model": obj}


def check_compatible(ckpt: dict, path: str, model_name: str, num_classes: int, backbone: str) -> None:
    """Refuse a checkpoint of another model, backbone or class count before touching any weights."""
    if ckpt.get("format") != FORMAT:
        return  # foreign state dict: load_model_weights reports key/shape mismatches
    theirs = {"model_name": ckpt.get("model_name"), "num_classes": ckpt.get("num_classes"), "backbone": ckpt.get("backbone")}
    ours = {"model_name": model_name, "num_classes": num_classes, "backbone": backbone}
    diffs = [f"--{k} {ours[k]} but the checkpoint has {theirs[k]}" for k in ours if theirs[k] is not None and theirs[k] != ours[k]]
    if diffs:
        raise UserError(f"‹ckpt› {path} does not fit this run: " + "; ".join(diffs))


def check_resumable(ckpt: dict, path: str) -> None:
    """--continue_training needs the training state, not just weights."""
    if ckpt.get("format") != FORMAT:
        raise UserError(f"‹ckpt› {path} holds model weights only (no optimizer, scheduler or epoch), so it "
                        f"cannot be resumed; drop ‹continue_training› to fine-tune from these weights")


def load_model_weights(model: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Strict load of prefix-stripped weights; a mismatch lists the keys instead of a traceback."""
    state_dict = strip_prefixes(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise UserError(f"‹ckpt› {path} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def find_run_checkpoints(work_dir: Path) -> list:
    """Checkpoints a previous run left in the work dir."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    return sorted(p.name for p in work_dir.glob("*.pth") if p.name.startswith(("latest_", "best_")))


def newest_checkpoint(work_dir: Path, names: dict) -> tuple:
    """(path, checkpoint) of the resumable checkpoint of `names` (latest and best) in `work_dir`
    with the most finished iterations, or (None, None). Unreadable files are passed over (a
    checkpoint is written atomically, so that means a foreign or damaged file)."""
    found = (None, None)
    for kind in ("latest", "best"):  # on a tie the latest wins
        path = Path(work_dir) / names[kind]
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(str(path))
        except UserError:
            continue
        if ckpt.get("format") != FORMAT:
            continue
        if found[1] is None or ckpt.get("global_step", 0) > found[1].get("global_step", 0):
            found = (path, ckpt)
    return found


def check_work_dir(args, work_dir: Path) -> None:
    """Never train over another run's checkpoints unless resuming in place or told to overwrite."""
    if args.test_only or args.overwrite or getattr(args, "auto_resume", False):
        return  # --auto_resume: the checkpoints in the work dir are this run's own
    existing = find_run_checkpoints(work_dir)
    if args.continue_training and Path(args.ckpt).resolve().parent == Path(work_dir).resolve():
        return  # resuming in place: these checkpoints are the run's own
    if existing:
        raise UserError(f"‹work_dir› {work_dir} already holds checkpoints of another run ({', '.join(existing[:3])}); "
                        f"resume with ‹continue_training› True ‹ckpt› FILE, pick another ‹work_dir›, "
                        f"or pass ‹overwrite› True")
