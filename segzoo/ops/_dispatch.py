"""The one place that decides which implementation of an op runs (`--ops_impl`).

`auto` takes a native kernel where the tensor's device has one and the portable tensor-op
version otherwise; `kernel` insists on a kernel; `portable` never uses one.

Kernels per device type:
  cuda  the Triton kernels in `ops/_triton_*.py`, registered as `torch.ops.segzoo.*` custom ops.
        They need `triton` and a torch with `torch.library.triton_op` / `wrap_triton` (2.6+);
        without either, `auto` falls back to the portable version and says so once.
  sdaa  a kernel that the `torch_sdaa` plugin registers as `torch.ops.sdaa.<op name>` with the
        schema of our `segzoo` op (see `ops/psamask.py`, `ops/criss_cross.py`); looked up by
        name, so a plugin build without it simply falls back.
  cpu   none in production. With TRITON_INTERPRET=1, `kernel` (never `auto`) runs the Triton
        kernels through Triton's interpreter, which is how the tests check them without a GPU.

Nothing here imports triton or a vendor package at `import ops` time: the first call that can
use a kernel imports the kernel module, and the result is cached.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Callable, Optional

import torch

from segzoo.runtime.errors import UserError

IMPLS = ("auto", "kernel", "portable")

logger = logging.getLogger("segzoo.ops")

# op name -> module whose import registers the Triton custom op and exposes `kernel_entry`.
_TRITON_MODULES = {
    "psa_mask": "segzoo.ops._triton_psamask",
    "criss_cross_attention": "segzoo.ops._triton_criss_cross",
}
_SDAA_NAMESPACE = "sdaa"

# Filled lazily; plain dicts (not lru_cache) so torch.compile can trace the lookups.
_triton_entries: dict[str, Optional[Callable]] = {}
_triton_failures: dict[str, str] = {}
_announced: set[tuple[str, str, str]] = set()


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_entry(op: str) -> Optional[Callable]:
    """The Triton-backed entry point of `op`, importing its module on first use; None (and a
    remembered reason) when triton or the torch.library APIs are missing."""
    if op not in _triton_entries:
        entry = None
        if not (hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")):
            _triton_failures[op] = f"torch {torch.__version__} lacks torch.library.triton_op (needs 2.6+)"
        else:
            try:
                entry = importlib.import_module(_TRITON_MODULES[op]).kernel_entry
            except (ImportError, RuntimeError) as exc:  # no triton, or one that cannot load
                _triton_failures[op] = f"triton is not importable ({exc})"
        _triton_entries[op] = entry
    return _triton_entries[op]


def _sdaa_entry(op: str) -> Optional[Callable]:
    """`torch.ops.sdaa.<op>` when the loaded torch_sdaa plugin registers one, else None."""
    try:
        return getattr(getattr(torch.ops, _SDAA_NAMESPACE), op)
    except (AttributeError, RuntimeError):
        return None


def _kernel_for(op: str, device_type: str, allow_interpreter: bool) -> tuple[Optional[Callable], str]:
    """(kernel entry or None, why there is none)."""
    if device_type == "cuda" or (device_type == "cpu" and allow_interpreter and _triton_interpreter_on()):
        entry = _triton_entry(op)
        return entry, _triton_failures.get(op, "")
    if device_type == _SDAA_NAMESPACE:
        entry = _sdaa_entry(op)
        return entry, "" if entry is not None else f"torch_sdaa registers no torch.ops.sdaa.{op}"
    return None, f"no kernel is written for {device_type} (kernels exist for cuda, and sdaa via torch_sdaa)"


def _constant_under_compile(fn: Callable) -> Callable:
    """What torch.compiler.assume_constant_result does (it only sets this marker): torch.compile
    calls `fn` eagerly and keeps its result as a constant instead of tracing into it. Not the
    decorator itself, because importing it imports torch._dynamo, which imports triton."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def _missing_kernel_reason(op: str, device_type: str, allow_interpreter: bool) -> str:
    """"" when `op` has a kernel on `device_type`, else why not. Constant under torch.compile, so
    the first lookup can import the kernel module even when it happens inside a compiled model."""
    entry, why = _kernel_for(op, device_type, allow_interpreter)
    return "" if entry is not None else why or "unknown reason"


def _announce(op: str, device_type: str, requested: str, chosen: str, why: str) -> None:
    """Log the choice once per (op, device type, choice); never from inside torch.compile."""
    key = (op, device_type, chosen)
    if key in _announced or torch.compiler.is_compiling():
        return
    _announced.add(key)
    if requested == "auto" and chosen == "portable" and device_type in ("cuda", _SDAA_NAMESPACE):
        logger.warning("%s on %s: no kernel (%s); using the portable version", op, device_type, why)
    else:
        logger.info("%s on %s: using the %s version (--ops_impl %s)", op, device_type, chosen, requested)


def _device_type(device) -> str:
    """"cuda" for torch.device("cuda", 0) or "cuda:0"; strings are split by hand so that asking
    about "sdaa" works before (or without) the plugin that teaches torch.device that name."""
    if isinstance(device, str):
        return device.split(":", 1)[0]
    return device.type


def select(op: str, device: torch.device, impl: str, portable: Callable) -> Callable:
    """The callable that runs `op` for tensors on `device` under `--ops_impl impl`.

    Args:
        op: "psa_mask" or "criss_cross_attention".
        device: device of the op's input tensors.
        impl: "auto", "kernel" or "portable".
        portable: the portable implementation, returned when no kernel is used.
    Raises:
        UserError: unknown `impl`, or `impl="kernel"` where no kernel exists.
    """
    if impl not in IMPLS:
        raise UserError(f"‹ops_impl› {impl!r} is not known; choose one of {', '.join(IMPLS)}")
    device_type = _device_type(device)
    if impl == "portable":
        _announce(op, device_type, impl, "portable", "")
        return portable
    why = _missing_kernel_reason(op, device_type, impl == "kernel")
    if why:
        if impl == "kernel":
            raise UserError(f"‹ops_impl› kernel: no {op} kernel on device '{device_type}': {why}; "
                            f"use ‹ops_impl› auto or portable")
        _announce(op, device_type, impl, "portable", why)
        return portable
    _announce(op, device_type, impl, "kernel", "")
    return _triton_entries[op] if device_type != _SDAA_NAMESPACE else _sdaa_entry(op)


def available_impls(device) -> dict[str, tuple[str, ...]]:
    """For each op, the `--ops_impl` values other than `auto` that work on `device`
    (a torch.device or a string such as "cuda:0"). Importing the kernel modules is the test,
    so this may import triton (never at `import ops` time)."""
    device_type = _device_type(device)
    result = {}
    for op in _TRITON_MODULES:
        kernel, _ = _kernel_for(op, device_type, allow_interpreter=True)
        result[op] = ("kernel", "portable") if kernel is not None else ("portable",)
    return result
