"""Op checks: every implementation of the attention ops on a device against a float64 CPU reference.

Shared by tools/check_ops.py and tests/test_check_ops.py, so the tool and the tests cannot drift.

Cases (forward and backward, each input gradient compared):
  psa_mask collect / distribute   PSANet's PSA mask; production: 1024x512 crop -> feature 64x32,
                                  mask 127x63, batch 8
  criss_cross_attention           CCNet's aggregate; production: 769 crop -> 97x97, C=512,
                                  C'=64, batch 8
Reference: at the small shapes the explicit-loop definitions of segzoo/ops/reference.py in
float64 on the cpu; at the production shapes those loops would take hours, so the reference is
the portable implementation in float64 on the cpu, which the small rows (impl "portable",
dtype float64) show equal to the loop definitions to rounding.

Inputs are drawn in float64 (seeded), rounded to the checked dtype, and the reference runs on
the rounded values, so the error measured is the implementation's own, not the input rounding.
Error = max |out - ref| / max |ref| over the output and every input gradient (worst of them).
Tolerances (TOLERANCES) are per dtype: PSA mask only copies values, so any dtype must be exact
(0); criss-cross attention sums H+W-1 products and a softmax, so it may lose a few roundings of
its compute dtype.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from segzoo.ops import available_impls, criss_cross_attention, psa_mask
from segzoo.ops.criss_cross import _from_line_major, _line_major, criss_cross_portable
from segzoo.ops.psamask import psa_mask_portable
from segzoo.ops.reference import criss_cross_reference, psa_mask_reference
from segzoo.runtime import numerics

DTYPES = ("float64", "float32", "bfloat16", "float16")
SHAPES = {
    # psa: (batch, map H, map W, mask H, mask W); cc: (batch, C', C, H, W)
    "small": {"psa": [(2, 6, 5, 11, 9), (1, 6, 5, 5, 4)], "cc": [(2, 4, 8, 6, 7)]},
    "production": {"psa": [(8, 64, 32, 127, 63)], "cc": [(8, 64, 512, 97, 97)]},
}
# Relative error bars (max |out - ref| / max |ref|) per op family and dtype.
TOLERANCES = {
    "psa_mask": {"float64": 0.0, "float32": 0.0, "bfloat16": 0.0, "float16": 0.0},
    "criss_cross_attention": {"float64": 1e-12, "float32": 1e-5, "bfloat16": 3e-2, "float16": 4e-3},
}


@dataclass(frozen=True)
class Case:
    op: str            # "psa_mask" (family), "criss_cross_attention"
    variant: str       # "collect", "distribute" or ""
    shape: tuple
    size: str          # "small" or "production"

    @property
    def label(self) -> str:
        return f"{self.op}{' ' + self.variant if self.variant else ''}"

    def shape_text(self) -> str:
        if self.op == "psa_mask":
            n, h, w, mh, mw = self.shape
            return f"N={n} {h}x{w} mask {mh}x{mw}"
        n, c_qk, c, h, w = self.shape
        return f"N={n} C'={c_qk} C={c} {h}x{w}"

    def inputs(self) -> list[torch.Tensor]:
        """float64 cpu inputs, seeded by the shape."""
        generator = torch.Generator().manual_seed(hash(self.shape) % 2**31)
        if self.op == "psa_mask":
            n, h, w, mh, mw = self.shape
            return [torch.randn(n, mh * mw, h, w, generator=generator, dtype=torch.float64)]
        n, c_qk, c, h, w = self.shape
        scale = c_qk ** -0.25  # scores ~ N(0, 1), as in a trained model
        return [torch.randn(n, c_qk, h, w, generator=generator, dtype=torch.float64) * scale,
                torch.randn(n, c_qk, h, w, generator=generator, dtype=torch.float64) * scale,
                torch.randn(n, c, h, w, generator=generator, dtype=torch.float64)]

    def run(self, impl: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The op under `impl` ("kernel", "portable", or "reference")."""
        if self.op == "psa_mask":
            mask = tuple(self.shape[3:])
            if impl == "reference":
                return (psa_mask_reference(tensors[0], self.variant, mask) if self.size == "small"
                        else psa_mask_portable(tensors[0], *mask, self.variant == "collect"))
            return psa_mask(tensors[0], self.variant, mask, impl=impl)
        if impl == "reference":
            if self.size == "small":
                return criss_cross_reference(*tensors)
            return _from_line_major(criss_cross_portable(*(_line_major(t) for t in tensors)))
        return criss_cross_attention(*tensors, impl=impl)
    # The production reference calls the portable functions directly, not through the dispatch,
    # so an implementation injected there (tests/test_check_ops.py) cannot change the reference.


def cases(sizes: Sequence[str]) -> list[Case]:
    result = []
    for size in sizes:
        for shape in SHAPES[size]["psa"]:
            result += [Case("psa_mask", mode, shape, size) for mode in ("collect", "distribute")]
        result += [Case("criss_cross_attention", "", shape, size) for shape in SHAPES[size]["cc"]]
    return result


@dataclass
class Row:
    op: str
    impl: str
    dtype: str
    shape: str
    error_forward: float     # max |out - ref| / max |ref|
    error_backward: float    # worst over the input gradients
    max_abs: float           # max |out - ref| of the forward
    tolerance: float
    passed: bool
    ms: float                # one forward + backward, after a warm-up call


def _forward_backward(case: Case, impl: str, tensors: list[torch.Tensor], grad_dtype: torch.dtype,
                      sync: Callable[[], None]) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    start = time.perf_counter()
    out = case.run(impl, leaves)
    # The same output gradient on both sides: drawn in float64, rounded to the checked dtype.
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(grad_dtype).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, leaves, grad)
    sync()
    return out.detach(), [g.detach() for g in grads], 1000 * (time.perf_counter() - start)


def _relative(actual: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max |a - ref| / max |ref|, max |a - ref|), in float64 on the cpu."""
    fig = numerics.compare(actual, reference)
    scale = reference.detach().abs().max().item() or 1.0
    return fig.max_abs / scale, fig.max_abs


def check_case(case: Case, device: torch.device, dtype_name: str, impls: Sequence[str],
               sync: Callable[[], None] = lambda: None) -> list[Row]:
    """Rows for every impl of one case in one dtype."""
    dtype = numerics.DTYPES[dtype_name]
    rounded = [t.to(dtype).to(torch.float64) for t in case.inputs()]
    ref_out, ref_grads, _ = _forward_backward(case, "reference", rounded, dtype, lambda: None)
    rows = []
    tolerance = TOLERANCES[case.op][dtype_name]
    for impl in impls:
        tensors = [t.to(device, dtype) for t in rounded]
        _forward_backward(case, impl, tensors, dtype, sync)  # warm-up: kernel compilation, caches
        out, grads, ms = _forward_backward(case, impl, tensors, dtype, sync)
        err_f, max_abs = _relative(out, ref_out)
        err_b = max(_relative(g, r)[0] for g, r in zip(grads, ref_grads))
        rows.append(Row(case.label, impl, dtype_name, case.shape_text(), err_f, err_b, max_abs, tolerance,
                        err_f <= tolerance and err_b <= tolerance, ms))
    return rows


def impl_names(device: torch.device, op: str) -> list[str]:
    """"kernel" and/or "portable" as ops.available_impls offers them on `device`."""
    key = "psa_mask" if op == "psa_mask" else "criss_cross_attention"
    return list(available_impls(device)[key])


def run_checks(device: torch.device, dtypes: Sequence[str], sizes: Sequence[str],
               sync: Callable[[], None] = lambda: None, impls: Optional[Sequence[str]] = None,
               on_row: Callable[[Row], None] = lambda row: None) -> list[Row]:
    """All cases x dtypes x implementations; `on_row` sees each row as it is made."""
    rows = []
    for case in cases(sizes):
        for dtype_name in dtypes:
            for row in check_case(case, device, dtype_name, impls or impl_names(device, case.op), sync):
                on_row(row)
                rows.append(row)
    return rows


HEADER = (f"{'op':26} {'impl':8} {'dtype':8} {'shape':28} {'fwd err':>9} {'bwd err':>9} {'max abs':>9} "
          f"{'tol':>7} {'ok':>4} {'ms':>9}")


def format_row(row: Row) -> str:
    return (f"{row.op:26} {row.impl:8} {row.dtype:8} {row.shape:28} {row.error_forward:9.2e} "
            f"{row.error_backward:9.2e} {row.max_abs:9.2e} {row.tolerance:7.0e} {'yes' if row.passed else 'NO':>4} "
            f"{row.ms:9.2f}")
