"""Room for a checkpoint before writing it: a full disk is one line, not a traceback and a
half-written temporary file."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from segzoo.runtime.errors import UserError

# torch.save adds pickle framing and zip headers to the raw tensor bytes; 5% + 1 MiB covers it.
OVERHEAD = 1.05
SLACK = 1 << 20


def state_bytes(obj) -> int:
    """Bytes of every tensor in a nested dict / list (what torch.save writes, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_room(folder, state, factor: float = 1.0) -> int:
    """Raise UserError when `folder`'s file system has less free space than one checkpoint of
    `state` (times `factor`, for an estimate made before the optimizer has its state) needs;
    returns the estimate in bytes."""
    need = int(state_bytes(state) * factor * OVERHEAD) + SLACK
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"‹work_dir› {folder}: only {mib(free)} free, a checkpoint needs about {mib(need)}; "
                        f"free some space or pick another ‹work_dir› (no checkpoint was written)")
    return need
