"""Device shim: the one place that knows about cpu, cuda and sdaa.

Everything device-specific the runner needs — process-group backend, placement per local
rank, autocast dtype, GradScaler, synchronize, memory statistics, SyncBatchNorm — comes from
one table row, so the training loop never branches on the device type. Vendor plugins are
imported only when their device is asked for (timm's `utils/distributed.py` does the same).

`torch_sdaa` registers the `sdaa` device and a `torch.sdaa` namespace that mirrors
`torch.cuda`; its collective backend is `tccl`.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import platform
import resource
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from segzoo.runtime.errors import UserError


@dataclass(frozen=True)
class DeviceType:
    name: str
    backend: str                 # torch.distributed backend
    amp_dtype: torch.dtype       # autocast dtype for --autocast True (--amp_dtype auto)
    plugin: Optional[str] = None  # vendor module that registers the device


DEVICE_TYPES = {
    "cpu": DeviceType("cpu", "gloo", torch.bfloat16),
    "cuda": DeviceType("cuda", "nccl", torch.float16),
    "sdaa": DeviceType("sdaa", "tccl", torch.float16, plugin="torch_sdaa"),
}

AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _namespace(kind: DeviceType):
    """`torch.cuda` / `torch.sdaa`; None for cpu."""
    return None if kind.name == "cpu" else getattr(torch, kind.name)


def _import_plugin(kind: DeviceType) -> None:
    if kind.plugin is None or kind.plugin in sys.modules:
        return
    try:
        importlib.import_module(kind.plugin)
    except ImportError as exc:
        raise UserError(
            f"‹device› {kind.name} needs the vendor package '{kind.plugin}', which is not importable "
            f"here ({exc}); install the vendor's PyTorch plugin or use ‹device› cuda/cpu"
        ) from None


def device_type(name: str) -> DeviceType:
    """Look a device type up and load its plugin; a clear error for unknown or absent devices."""
    if name not in DEVICE_TYPES:
        raise UserError(f"‹device› {name!r} is not known; choose one of {', '.join(DEVICE_TYPES)}")
    kind = DEVICE_TYPES[name]
    _import_plugin(kind)
    ns = _namespace(kind)
    if ns is not None and not ns.is_available():
        raise UserError(f"‹device› {name} was asked for but no {name} device is available on this machine; "
                        f"use ‹device› cpu or check the driver")
    return kind


def device_count(name: str) -> int:
    """How many devices of this type the machine has (cpu: os.cpu_count, as gloo can run that many ranks)."""
    kind = device_type(name)
    ns = _namespace(kind)
    if ns is None:
        return os.cpu_count() or 1
    return ns.device_count()


class Device:
    """A device of one type, bound to one index (the local rank under DDP).

    Args:
        name: "cpu", "cuda" or "sdaa".
        index: device index for cuda/sdaa; ignored on cpu.
    """

    def __init__(self, name: str, index: int = 0):
        self.kind = device_type(name)
        self.name = name
        self._ns = _namespace(self.kind)
        if self._ns is not None:
            count = self._ns.device_count()
            if index >= count:
                raise UserError(f"{name}:{index} was asked for but only {count} {name} device(s) are present; "
                                f"lower ‹nproc_per_node› or ‹default_rank›")
            self._ns.set_device(index)
            self.torch_device = torch.device(name, index)
        else:
            self.torch_device = torch.device("cpu")
        self.index = index

    def __repr__(self) -> str:
        return f"Device({self.torch_device})"

    @property
    def description(self) -> str:
        """The accelerator's name (e.g. "NVIDIA H100 80GB HBM3"), or the CPU model and core count."""
        if self._ns is not None:
            try:
                return self._ns.get_device_name(self.index)
            except (AttributeError, RuntimeError):
                return str(self.torch_device)
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return f"{model} ({cores} cores)"

    @property
    def is_accelerator(self) -> bool:
        return self._ns is not None

    @property
    def backend(self) -> str:
        return self.kind.backend

    # ---- mixed precision -------------------------------------------------------------------
    def amp_dtype(self, requested: str = "auto") -> torch.dtype:
        """fp16 on cuda/sdaa, bf16 on cpu unless --amp_dtype says otherwise."""
        if requested in ("auto", None):
            return self.kind.amp_dtype
        if requested not in AMP_DTYPES:
            raise UserError(f"‹amp_dtype› {requested!r} is not known; choose auto, float16 or bfloat16")
        return AMP_DTYPES[requested]

    def autocast(self, enabled: bool, dtype: torch.dtype):
        """An autocast context, or a null context when disabled (the loop never branches on AMP)."""
        if not enabled:
            return contextlib.nullcontext()
        try:
            return torch.autocast(device_type=self.name, dtype=dtype)
        except RuntimeError:
            # Older vendor plugins register autocast only under their own namespace.
            return self._ns.amp.autocast(dtype=dtype)

    def grad_scaler(self, enabled: bool):
        """A GradScaler that is active only for fp16 (bf16 needs none); a disabled one is a no-op."""
        if self.name == "sdaa" and enabled:
            import torch_sdaa  # noqa: F401  (imported by device_type already)
            return torch_sdaa.amp.GradScaler()
        return torch.amp.GradScaler(self.name, enabled=enabled)

    # ---- synchronisation and memory ----------------------------------------------------------
    def synchronize(self) -> None:
        if self._ns is not None:
            self._ns.synchronize()

    def reset_peak_memory(self) -> None:
        if self._ns is not None:
            self._ns.reset_peak_memory_stats()

    def peak_memory_bytes(self) -> int:
        """Peak device memory allocated by tensors; on cpu, the process's peak resident set."""
        if self._ns is not None:
            return int(self._ns.max_memory_allocated())
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB

    @property
    def memory_label(self) -> str:
        return "peak device memory" if self._ns is not None else "peak host RSS"

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        if self._ns is not None:
            self._ns.manual_seed(seed)

    # ---- model conversion and backend tuning -------------------------------------------------
    def convert_sync_batchnorm(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.name == "cpu":
            raise UserError("‹sync_bn› True needs cuda or sdaa: PyTorch's SyncBatchNorm does not run on cpu")
        if self.name == "sdaa":
            import torch_sdaa
            return torch_sdaa.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def configure_backends(self, deterministic: bool) -> None:
        """cudnn autotuning and TF32 for speed, or, with ``deterministic``, repeatable kernels and true
        float32 arithmetic (TF32 rounds matmul/conv inputs to 10 mantissa bits, which a port check
        against another device's float32 would count as an error)."""
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.name == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic
            torch.backends.cuda.matmul.allow_tf32 = not deterministic
            torch.backends.cudnn.allow_tf32 = not deterministic
        # sdaa: torch_sdaa documents no switch of its own beyond torch.use_deterministic_algorithms.

    def supports_fused_optimizer(self) -> bool:
        return self.name == "cuda"
