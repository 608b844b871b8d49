#!/usr/bin/env python
"""Time the attention ops: kernel vs portable (vs the straightforward baseline), per dtype.

    python tools/bench_ops.py                     # production shapes on cuda if present, else cpu
    python tools/bench_ops.py --shape small       # a CPU smoke run
    python tools/bench_ops.py --ops psa --dtypes bf16 --iters 50

Cases (production): PSANet at a 1024x512 crop, feature map 128x64 at output stride 8, shrunk x2
to 64x32, mask 127x63, batch 8, both modes; CCNet at a 769x769 crop, 97x97, C=512, C'=64,
batch 8, the op applied twice in a row with the second taking the first's output as values, as
CCNet's two recurrences do. `--shape small` scales both down for a CPU.

Per row: median forward and forward+backward time over --iters runs after --warmup runs, each
run bracketed by device synchronisation; the bandwidth of the compulsory traffic (every input
read once, every output written once; the attention map in between does not count) against
--peak_bandwidth; and the peak memory of the run (device allocator on accelerators, the
process's peak RSS on cpu). Prints a table, then one JSON line per row.

Implementations: `kernel` (where ops.available_impls offers one), `portable`, and `baseline`:
the straightforward versions the project's speed targets refer to (an einsum criss-cross, a
single flat-index PSA gather), written here only for comparison.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Callable, Optional, Sequence  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from segzoo.ops import available_impls, criss_cross_attention, psa_mask  # noqa: E402
from segzoo.runtime.device import Device, device_type  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
H100_PEAK_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3

SHAPES = {
    # PSA: (batch, map H, map W, mask H, mask W); CCNet: (batch, C', C, H, W)
    "production": {"psa": (8, 64, 32, 127, 63), "cc": (8, 64, 512, 97, 97)},
    "small": {"psa": (2, 16, 8, 31, 15), "cc": (2, 8, 64, 25, 25)},
}


# ---- straightforward baselines (for comparison only) ----------------------------------------------
@functools.lru_cache(maxsize=8)
def _flat_psa_index(height: int, width: int, mask_h: int, mask_w: int, collect: bool,
                    device: torch.device) -> tuple[torch.Tensor, bool]:
    """One flat source index per output entry (N-independent), and whether any entry must read
    a padded zero."""
    plane = height * width
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    th = torch.arange(height, device=device).view(height, 1, 1, 1)
    tw = torch.arange(width, device=device).view(1, width, 1, 1)
    h = torch.arange(height, device=device).view(1, 1, height, 1)
    w = torch.arange(width, device=device).view(1, 1, 1, width)
    i, j = th - h + half_h, tw - w + half_w                     # (th, tw, h, w) layout
    valid = (i >= 0) & (i < mask_h) & (j >= 0) & (j < mask_w)
    index = torch.where(valid, (i * mask_w + j) * plane + h * width + w, mask_h * mask_w * plane)
    if not collect:
        index = index.permute(2, 3, 0, 1)
    return index.reshape(-1).contiguous(), not bool(valid.all())


def psa_single_gather(x: torch.Tensor, mask_h: int, mask_w: int, collect: bool) -> torch.Tensor:
    """PSA mask as one flat-index gather (index cached; the input is zero-padded only when some
    entry needs it); autograd's backward of the indexing is a scatter-add."""
    n, _, height, width = x.shape
    index, needs_pad = _flat_psa_index(height, width, mask_h, mask_w, collect, x.device)
    flat = x.reshape(n, -1)
    if needs_pad:
        flat = F.pad(flat, (0, 1))
    return flat[:, index].view(n, height * width, height, width)


def criss_cross_einsum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention in einsums with a -inf diagonal on the column energies."""
    height = q.shape[2]
    self_mask = torch.eye(height, dtype=torch.bool, device=q.device).view(height, 1, height)
    energy_col = torch.einsum("nchw,ncgw->nhwg", q, k).masked_fill(self_mask, float("-inf"))
    energy_row = torch.einsum("nchw,nchu->nhwu", q, k)
    attn = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
    return (torch.einsum("nhwg,ncgw->nchw", attn[..., :height], v)
            + torch.einsum("nhwu,nchu->nchw", attn[..., height:], v))


# ---- cases ----------------------------------------------------------------------------------------
@dataclass
class Case:
    op: str
    variant: str
    make_inputs: Callable[[torch.dtype], list]     # dtype -> tensors that get gradients
    forward: Callable[[str, list], torch.Tensor]   # (impl, inputs) -> output
    bytes_forward: Callable[[int], int]            # itemsize -> compulsory bytes
    bytes_backward: Callable[[int], int]


def psa_cases(shape, device) -> list[Case]:
    n, height, width, mask_h, mask_w = shape
    plane = height * width
    # Entries that receive a value: window positions whose target lies on the map.
    rows = sum(1 for h in range(height) for i in range(mask_h) if 0 <= i + h - (mask_h - 1) // 2 < height)
    cols = sum(1 for w in range(width) for j in range(mask_w) if 0 <= j + w - (mask_w - 1) // 2 < width)
    valid = n * rows * cols
    out_elems, in_elems = n * plane * plane, n * mask_h * mask_w * plane

    def make(dtype):
        return [torch.randn(n, mask_h * mask_w, height, width, device=device, dtype=dtype)]

    def case(mode):
        collect = mode == "collect"

        def forward(impl, inputs):
            if impl == "baseline":
                return psa_single_gather(inputs[0], mask_h, mask_w, collect)
            return psa_mask(inputs[0], mode, (mask_h, mask_w), impl=impl)

        return Case("psa_mask", f"{mode} N={n} {height}x{width} mask {mask_h}x{mask_w}", make, forward,
                    lambda size: (valid + out_elems) * size,   # read what is used, write out
                    lambda size: (valid + in_elems) * size)    # read grad used, write grad x
    return [case("collect"), case("distribute")]


def cc_cases(shape, device) -> list[Case]:
    n, c_qk, c, height, width = shape
    qk_elems, v_elems = n * c_qk * height * width, n * c * height * width

    def make(dtype):
        scale = c_qk ** -0.25  # scores ~ N(0, 1)
        q, k = (torch.randn(n, c_qk, height, width, device=device, dtype=dtype) * scale for _ in range(2))
        return [q, k, torch.randn(n, c, height, width, device=device, dtype=dtype)]

    def forward(impl, inputs):
        q, k, v = inputs
        attend = criss_cross_einsum if impl == "baseline" else (
            lambda a, b, c_: criss_cross_attention(a, b, c_, impl=impl))
        return attend(q, k, attend(q, k, v))  # two recurrences: values chain through

    return [Case("criss_cross_attention", f"x2 N={n} C'={c_qk} C={c} {height}x{width}", make, forward,
                 lambda size: 2 * (2 * qk_elems + 2 * v_elems) * size,   # q, k, v in; out
                 lambda size: 2 * (2 * qk_elems + 2 * v_elems + 2 * qk_elems + v_elems) * size)]


# ---- timing ---------------------------------------------------------------------------------------
def median_seconds(fn: Callable[[], object], device: Device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        device.synchronize()
        start = time.perf_counter()
        fn()
        device.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(case: Case, impl: str, dtype: torch.dtype, device: Device, args) -> dict:
    inputs = case.make_inputs(dtype)
    differentiable = [t.requires_grad_() for t in inputs]
    with torch.no_grad():
        grad = torch.randn_like(case.forward(impl, inputs))
    device.reset_peak_memory()

    def forward_only():
        with torch.no_grad():
            case.forward(impl, inputs)

    def forward_backward():
        torch.autograd.grad(case.forward(impl, inputs), differentiable, grad)

    fwd = median_seconds(forward_only, device, args.warmup, args.iters)
    fwd_bwd = median_seconds(forward_backward, device, args.warmup, args.iters)
    size = torch.finfo(dtype).bits // 8
    bytes_fwd, bytes_total = case.bytes_forward(size), case.bytes_forward(size) + case.bytes_backward(size)
    return {
        "op": case.op, "case": case.variant, "dtype": str(dtype).replace("torch.", ""), "impl": impl,
        "device": str(device.torch_device), "fwd_ms": fwd * 1e3, "fwd_bwd_ms": fwd_bwd * 1e3,
        "fwd_GBps": bytes_fwd / fwd / 1e9, "fwd_bwd_GBps": bytes_total / fwd_bwd / 1e9,
        "fwd_peak_frac": bytes_fwd / fwd / args.peak_bandwidth,
        "fwd_bwd_peak_frac": bytes_total / fwd_bwd / args.peak_bandwidth,
        "peak_mem_MiB": device.peak_memory_bytes() / 2 ** 20, "memory": device.memory_label,
    }


def print_table(rows: Sequence[dict]) -> None:
    header = (f"{'op':<22} {'case':<36} {'dtype':<9} {'impl':<9} {'fwd ms':>9} {'f+b ms':>9} "
              f"{'fwd GB/s':>9} {'f+b GB/s':>9} {'%peak f/f+b':>12} {'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['op']:<22} {r['case']:<36} {r['dtype']:<9} {r['impl']:<9} {r['fwd_ms']:>9.3f} "
              f"{r['fwd_bwd_ms']:>9.3f} {r['fwd_GBps']:>9.1f} {r['fwd_bwd_GBps']:>9.1f} "
              f"{100 * r['fwd_peak_frac']:>5.1f}/{100 * r['fwd_bwd_peak_frac']:<5.1f} {r['peak_mem_MiB']:>9.0f}")


def default_device() -> str:
    try:
        device_type("cuda")
        return "cuda"
    except UserError:
        return "cpu"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda or sdaa (default: cuda if present, else cpu)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="production")
    parser.add_argument("--ops", default="psa,cc", help="comma list of psa, cc")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16", help=f"comma list of {', '.join(DTYPES)}")
    parser.add_argument("--impls", default="kernel,portable,baseline",
                        help="comma list of kernel, portable, baseline (kernel is skipped where there is none)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for cpu runs")
    parser.add_argument("--tf32", action="store_true",
                        help="fp32 matmuls (cuBLAS and the kernels alike) in tf32, as the training runner sets")
    parser.add_argument("--peak_bandwidth", type=float, default=H100_PEAK_BANDWIDTH,
                        help="device peak memory bandwidth in bytes/s (default: H100 SXM, 3.35e12)")
    return parser.parse_args(argv)


def _choices(value: str, allowed, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise UserError(f"{flag} {value!r}: choose from {', '.join(allowed)}")
    return items


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    ops = _choices(args.ops, ("psa", "cc"), "--ops")
    dtypes = [DTYPES[d] for d in _choices(args.dtypes, DTYPES, "--dtypes")]
    impls = _choices(args.impls, ("kernel", "portable", "baseline"), "--impls")
    if args.iters < 1 or args.warmup < 0:
        raise UserError("--iters must be >= 1 and --warmup >= 0")
    device = Device(args.device or default_device())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    shapes = SHAPES[args.shape]
    cases = (psa_cases(shapes["psa"], device.torch_device) if "psa" in ops else []) + \
            (cc_cases(shapes["cc"], device.torch_device) if "cc" in ops else [])
    offered = available_impls(device.torch_device)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1, so the kernels run in Triton's interpreter: their times are not kernel speed")
    print(f"device {device.torch_device}, torch {torch.__version__}, {torch.get_num_threads()} cpu threads, "
          f"fp32 matmul precision {torch.get_float32_matmul_precision()!r}, shape set {args.shape}, "
          f"median of {args.iters} after {args.warmup} warm-up runs")
    rows = []
    for case in cases:
        for impl in impls:
            if impl == "kernel" and "kernel" not in offered[case.op]:
                print(f"note: {case.op} kernel not timed: none for {device.torch_device.type} "
                      f"(ops.available_impls offers {offered[case.op]})")
                continue
            for dtype in dtypes:
                try:
                    rows.append(measure(case, impl, dtype, device, args))
                except (RuntimeError, NotImplementedError) as exc:  # e.g. a dtype the device lacks
                    print(f"note: {case.op} {impl} {dtype} skipped: {str(exc).splitlines()[0]}")
    print()
    print_table(rows)
    print()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        exit_with(err)
