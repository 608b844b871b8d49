"""Process-group set-up on top of torch.distributed (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK).

The distributed engine is PyTorch's; this module only picks the backend from the device shim
and offers the three collectives the runner needs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(backend: str, device: torch.device | None = None, timeout_min: int = 30) -> DistInfo:
    """Join the process group torchrun prepared; a plain `python train.py` run is world size 1."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    kwargs = {"backend": backend, "timeout": timedelta(minutes=timeout_min)}
    if device is not None and device.type != "cpu":
        kwargs["device_id"] = device  # binds NCCL communicators eagerly to the right device
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun --max_restarts with its static rendezvous keeps one store across restarts:
        # the workers of a restart would read the dead workers' gloo/NCCL addresses from it
        # ("Connection refused"). A key prefix per restart keeps the rounds apart.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world_size,
                              is_master=False, timeout=kwargs["timeout"])
        kwargs.update(store=dist.PrefixStore(f"segzoo/restart_{restart}", store), rank=info.rank,
                      world_size=info.world_size)
    dist.init_process_group(**kwargs)
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in a single process)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from `src` to every rank (used to agree on a decision)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# How gloo/NCCL report that another rank went away (its process exited after its own error).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker", "Broken pipe",
              "NCCL communicator was aborted", "ProcessGroup abort")


def is_peer_failure(exc: BaseException) -> bool:
    """True when `exc` only says that another rank failed first; that rank reports the cause."""
    if not is_initialized():
        return False
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _PEER_GONE)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
