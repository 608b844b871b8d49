"""Numerical comparison of two runs of the same computation: figures, thresholds, and capture.

Used by tools/compare_numerics.py (a model, layer by layer) and segzoo/ops/check.py (one op
against a float64 reference). The figures are the ones vendor port tools report (e.g. Ascend's
msprobe), computed here on plain tensors so any device can be compared with any other:

    cosine      cosine similarity of the flattened tensors (1.0 = same direction)
    max_abs     max |a - ref|
    max_rel     max |a - ref| / (|ref| + floor), floor = 1e-6 * max|ref| (so exact zeros of the
                reference, e.g. after a ReLU, do not turn rounding noise into infinities)
    within_1pm  share of elements with |a - ref| <= 0.001 * (|ref| + floor)
    within_5pm  the same at 0.005

A module output fails when cosine < min_cosine or the share within the dtype's tolerance (1 per
mille for float32/float64, 5 per mille for bfloat16/float16) is below min_share; a gradient
fails when its cosine < min_grad_cosine. The defaults
(THRESHOLDS) follow what one rounding of the format allows: float32 carries ~7 decimal digits,
so a faithful port agrees to 1e-3 almost everywhere; bfloat16 (8 bits of mantissa, one rounding
is up to 2e-3 relative) and float16 (11 bits) lose more with every layer, so they are judged by
the cosine alone (see THRESHOLDS). A scale error of 1% anywhere moves every element of that
tensor out of 1 per mille while leaving the cosine at 1.0, which is why float32 checks both.

Capture: `capture(model, inputs, loss_fn)` runs one forward and backward and returns, in
execution order, every module's output (forward hooks; a module called twice, e.g. CCNet's
shared recurrence, appears as `name#2`) and every parameter's gradient (in backward order: the
reverse of its owning module's first call). Outputs are detached copies taken when the hook fires, so a later
in-place op (ReLU(inplace=True) after BatchNorm) does not change what was recorded.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp64": "float64", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Threshold:
    """An output passes when cosine >= min_cosine and its share of elements within `tolerance`
    (relative) >= min_share; a gradient passes when cosine >= min_grad_cosine."""
    min_cosine: float
    tolerance: float
    min_share: float
    min_grad_cosine: float

    def describe(self) -> str:
        return (f"outputs: cosine >= {self.min_cosine:g} and >= {100 * self.min_share:g}% of elements "
                f"within {1000 * self.tolerance:g} per mille; gradients: cosine >= {self.min_grad_cosine:g}")


# float32: a float32 run checked against the same run in float64 (PSPNet-ResNet50, random init,
# crop 128, batch 2, cpu) kept >= 92.9% of every module output within 1 per mille and a gradient
# cosine >= 0.9996; the bars sit just below, so an exact float32 port passes while a 1% error in
# one layer (0% within 1 per mille there) fails. Gradients are judged by the cosine alone: each
# gradient element is a sum of terms that largely cancel, so even float32 against float64 leaves
# most of its elements beyond 5 per mille (measured: as few as 4.7% within) while the direction holds.
THRESHOLDS = {
    "float64": Threshold(0.999999, 0.001, 0.99, 0.99999),
    "float32": Threshold(0.99999, 0.001, 0.9, 0.999),
    # Low precision: the share is reported but not judged (min_share 0). Rounding the input and
    # the weights of one convolution to bfloat16 already leaves ~30% of its outputs (the small
    # ones, where products cancel) beyond 5 per mille (measured: PSPNet-ResNet50 conv1, see
    # docs/fragments/port-validation.md), so only the direction (cosine) is a usable bar.
    "float16": Threshold(0.999, 0.005, 0.0, 0.99),
    "bfloat16": Threshold(0.99, 0.005, 0.0, 0.99),
}


def dtype_name(text: str) -> str:
    """Canonical dtype name for "bf16", "bfloat16", ...; ValueError for others."""
    name = DTYPE_ALIASES.get(text, text)
    if name not in DTYPES:
        raise ValueError(f"dtype {text!r} is not known; choose one of {', '.join(DTYPES)}")
    return name


def lower_precision(a: str, b: str) -> str:
    """Of two dtype names, the one with fewer mantissa bits (its threshold applies)."""
    order = ["bfloat16", "float16", "float32", "float64"]
    return min(a, b, key=order.index)


@dataclass(frozen=True)
class Figures:
    cosine: float
    max_abs: float
    max_rel: float
    within_1pm: float
    within_5pm: float
    numel: int

    def within(self, tolerance: float) -> float:
        return self.within_1pm if tolerance <= 0.001 else self.within_5pm

    def passes(self, threshold: Threshold, gradient: bool = False) -> bool:
        if gradient:
            return self.cosine >= threshold.min_grad_cosine
        return self.cosine >= threshold.min_cosine and self.within(threshold.tolerance) >= threshold.min_share

    def as_dict(self) -> dict:
        return asdict(self)


def compare(actual: torch.Tensor, reference: torch.Tensor) -> Figures:
    """Figures of `actual` against `reference` (same shape; any dtypes/devices), in float64 on the cpu."""
    if actual.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(reference.shape)}")
    a = actual.detach().to("cpu", torch.float64).flatten()
    r = reference.detach().to("cpu", torch.float64).flatten()
    if a.numel() == 0:
        return Figures(1.0, 0.0, 0.0, 1.0, 1.0, 0)
    finite = bool(torch.isfinite(a).all() and torch.isfinite(r).all())
    diff = (a - r).abs()
    norm_a, norm_r = a.norm().item(), r.norm().item()
    if norm_a == 0.0 and norm_r == 0.0 or bool((diff == 0).all()):
        cosine = 1.0  # identical: exactly 1, not the dot product's rounding of it
    elif norm_a == 0.0 or norm_r == 0.0:
        cosine = 0.0
    else:
        cosine = float(torch.dot(a, r).item() / (norm_a * norm_r))
    scale = r.abs() + 1e-6 * r.abs().max() + torch.finfo(torch.float64).tiny
    rel = diff / scale
    if not finite:  # a NaN/inf on either side fails every figure
        return Figures(float("nan"), float("inf"), float("inf"), 0.0, 0.0, a.numel())
    return Figures(cosine=min(cosine, 1.0), max_abs=float(diff.max()), max_rel=float(rel.max()),
                   within_1pm=float((diff <= 0.001 * scale).double().mean()),
                   within_5pm=float((diff <= 0.005 * scale).double().mean()), numel=a.numel())


# ---- capture -------------------------------------------------------------------------------------
def _first_tensors(value, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Floating tensors in a module output: a tensor, or a list/tuple/dict of them (named by index/key)."""
    if isinstance(value, torch.Tensor):
        return [(prefix, value)] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [t for i, v in enumerate(value) for t in _first_tensors(v, f"{prefix}[{i}]")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _first_tensors(v, f"{prefix}[{k}]")]
    return []


@dataclass
class Capture:
    """outputs: (name, tensor) in execution order; grads: (parameter name, gradient) in backward
    order (the reverse of the owning modules' first calls); loss: the scalar loss."""
    outputs: list
    grads: list
    loss: float


def capture(model: torch.nn.Module, inputs: torch.Tensor, loss_fn: Callable[[object], torch.Tensor]) -> Capture:
    """One forward + backward of `model(inputs)` with `loss_fn(output)` as the loss; see the module
    docstring. The model's parameter .grad are overwritten (set to None first)."""
    outputs: list = []
    calls: dict[str, int] = {}
    first_call: dict[str, int] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module, _inputs, output):
        name = names[module] or "<model>"
        calls[name] = calls.get(name, 0) + 1
        first_call.setdefault(name, len(first_call))
        label = name if calls[name] == 1 else f"{name}#{calls[name]}"
        for suffix, tensor in _first_tensors(output):
            outputs.append((label + suffix, tensor.detach().to("cpu", copy=True)))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs))
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    # Hooks fire at the end of a module's forward, so children come before their parents; the
    # parameter order uses the first call of the module that owns the parameter directly
    # (parameters of modules that never ran go last).
    owners = []
    for name, param in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else "<model>"
        order = first_call.get(owner, -math.inf)
        if param.grad is not None:
            owners.append((order, len(owners), name, param.grad.detach().to("cpu", copy=True)))
    # Backward runs the modules in reverse: the gradient of the last module comes first, so the
    # first gradient that fails is where the backward pass first goes wrong.
    grads = [(name, grad) for _, _, name, grad in sorted(owners, key=lambda t: (-t[0], t[1]))]
    return Capture(outputs=outputs, grads=grads, loss=float(loss.detach()))


def tensor_hash(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of the tensors' float32 bytes in order (the same values hash alike on any device)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu")
        t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def state_hash(state_dict: dict) -> str:
    """tensor_hash of a state dict in sorted key order (names included)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(tensor_hash([state_dict[key]]).encode())
    return digest.hexdigest()[:16]


def first_failure(rows: list[dict]) -> Optional[dict]:
    """The first row whose `passed` is False, None when all pass."""
    return next((row for row in rows if not row["passed"]), None)
