"""PSA mask: the re-indexing step of point-wise spatial attention.

Paper: Zhao et al., "PSANet: Point-wise Spatial Attention Network for Scene Parsing", ECCV 2018
(the op is PSAMask of semseg's `lib/psa`).

Semantics. The input `x` has shape (N, mH*mW, H, W): for every pixel (h, w) a mH x mW window of
attention values centred on it. With hH = (mH-1)//2 and hW = (mW-1)//2, window offset (i, j) of
pixel (h, w) points at the target (th, tw) = (i+h-hH, j+w-hW). If the target lies inside the
H x W map, `x[n, i*mW+j, h, w]` is written to
    collect:    out[n, th*W+tw, h, w]
    distribute: out[n, h*W+w, th, tw]
and every other entry of the (N, H*W, H, W) output is 0. Viewed as (N, HW, HW) the distribute
output is the transpose of the collect output. The default mask (2H-1, 2W-1) covers the whole
map from every pixel; other sizes, odd or even, smaller or larger, are allowed.

Portable implementation. Write h' = H-1-h, w' = W-1-w. The input entry that collect writes to
out[n, th*W+tw, h, w] sits at x offset  c + th*s_i + tw*s_j + h'*(s_i - s_h) + w'*(s_j - s_w),
where s_* are x's strides as (N, mH, mW, H, W): every coefficient is positive, so the band of x
that the op reads is one `as_strided` view indexed (th, tw, h', w'). The forward is a single
pass: that view indexed with the reversed (h, w) grid, which reads exactly the needed inputs
and writes the output once. Its index is two cached H x W tensors, so the gather's index reads
stay in L1; indexing all four axes with broadcast 1-D indices instead would make CUDA's indexing
kernel materialise them at the full (H, W, H, W) size on every call (it requires equally
strided index tensors). The view is in bounds only when the mask covers the map (mH >= 2H-1
and mW >= 2W-1, PSANet's default); smaller masks first pad x with zero windows, one extra pass.
The backward is the inverse copy: a zeroed gradient of the (padded) input receives the flipped
output gradient through the same band view. Every entry is written exactly once and nothing is
accumulated (no scatter_add, no atomics), so it is deterministic. Cost: a zero fill of the
input gradient (4x the output for the default mask) plus two passes over the output gradient.

Measured so far on CPU only: `tools/bench_ops.py --shape small --threads 1 --iters 60`, best of
three runs, on a 2-core x86-64 VM shared with other jobs (torch 2.13). N=2, map 16x8, mask
31x15; milliseconds per call, forward / forward+backward. The baseline is the straightforward
single flat-index gather (backward: autograd's scatter-add). GPU figures for kernel and
portable at the production shapes come from running the same tool on an H100.

    mode        dtype   portable        baseline
    collect     fp32    0.142 / 0.288   0.080 / 0.233
    collect     bf16    0.136 / 0.276   0.075 / 0.245
    distribute  fp32    0.086 / 0.221   0.082 / 0.242
    distribute  bf16    0.082 / 0.200   0.076 / 0.252
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from segzoo.ops._dispatch import select

MODES = ("collect", "distribute")

__all__ = ["MODES", "psa_mask", "psa_mask_portable"]


def _window_padding(height: int, width: int, mask_h: int, mask_w: int) -> tuple[int, int, int, int]:
    """Zero windows to add (before, after) on the mask rows and (before, after) on the mask columns
    so that every pixel's window reaches the whole map; all 0 for a covering mask."""
    half_h, half_w = (mask_h - 1) // 2, (mask_w - 1) // 2
    return (max(0, height - 1 - half_h), max(0, half_h + height - mask_h),
            max(0, width - 1 - half_w), max(0, half_w + width - mask_w))


def _band_geometry(t: torch.Tensor, mask_h: int, mask_w: int, pad: tuple[int, int, int, int],
                   collect: bool) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(size, stride, offset) of the band view of `t`, the contiguous (N, MH, MW, H, W) input (or
    input gradient) of a mask_h x mask_w mask padded by `pad` (see `_window_padding`), with
    c_h = (mask_h-1)//2 + pad_before_h, c_w likewise:
        collect     band[n, th, tw, H-1-h, W-1-w] = t[n, th-h+c_h, tw-w+c_w, h, w]
        distribute  band[n, H-1-h, W-1-w, th, tw] = the same entry
    `offset` counts from t's first element."""
    height, width = t.shape[-2:]
    centre_h, centre_w = (mask_h - 1) // 2 + pad[0], (mask_w - 1) // 2 + pad[2]
    s_n, s_i, s_j, s_h, s_w = t.stride()
    offset = (centre_h - height + 1) * s_i + (centre_w - width + 1) * s_j + (height - 1) * s_h + (width - 1) * s_w
    target_strides, pixel_strides = (s_i, s_j), (s_i - s_h, s_j - s_w)
    strides = target_strides + pixel_strides if collect else pixel_strides + target_strides
    return (t.shape[0], height, width, height, width), (s_n, *strides), offset


_REVERSALS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _build_reversal_index(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(height - 1, -1, -1, device=device)
    cols = torch.arange(width - 1, -1, -1, device=device)
    return rows[:, None].expand(height, width).contiguous(), cols[None, :].expand(height, width).contiguous()


def _reversal_index(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(H-1-h, W-1-w) over the H x W grid as two contiguous int64 tensors, cached per shape and
    device. Full-size and equally strided, because CUDA's indexing kernel would otherwise make
    them so on every call."""
    if torch.compiler.is_compiling():  # traced into the graph instead of a Python-side cache
        return _build_reversal_index(height, width, device)
    key = (height, width, device)
    if key not in _REVERSALS:
        _REVERSALS[key] = _build_reversal_index(height, width, device)
    return _REVERSALS[key]


def _psa_forward(x: torch.Tensor, mask_h: int, mask_w: int, collect: bool) -> torch.Tensor:
    n, _, height, width = x.shape
    pad = _window_padding(height, width, mask_h, mask_w)
    src = x.contiguous().view(n, mask_h, mask_w, height, width)
    if any(pad):
        src = F.pad(src, (0, 0, 0, 0, pad[2], pad[3], pad[0], pad[1]))
    size, stride, offset = _band_geometry(src, mask_h, mask_w, pad, collect)
    # Slicing the flat view moves the start relative to src's own storage offset (which
    # torch.compile cannot read); as_strided keeps that start.
    band = src.view(-1)[offset:].as_strided(size, stride)
    rev_h, rev_w = _reversal_index(height, width, x.device)
    out = band[:, :, :, rev_h, rev_w] if collect else band[:, rev_h, rev_w]
    return out.reshape(n, height * width, height, width)


def _psa_backward(grad: torch.Tensor, mask_h: int, mask_w: int, collect: bool) -> torch.Tensor:
    n, _, height, width = grad.shape
    pad = _window_padding(height, width, mask_h, mask_w)
    grad_src = grad.new_zeros(n, mask_h + pad[0] + pad[1], mask_w + pad[2] + pad[3], height, width)
    size, stride, offset = _band_geometry(grad_src, mask_h, mask_w, pad, collect)
    # One as_strided straight off the fresh buffer (storage offset 0): torch.compile can write an
    # in-place update back through that, not through longer view chains.
    band = grad_src.as_strided(size, stride, offset)
    grad5 = grad.reshape(n, height, width, height, width)
    band.copy_(grad5.flip(3, 4) if collect else grad5.flip(1, 2))  # undo the forward's reversal
    grad_x = grad_src[:, pad[0]:pad[0] + mask_h, pad[2]:pad[2] + mask_w]
    return grad_x.reshape(n, mask_h * mask_w, height, width)


class _PSAMaskPortable(torch.autograd.Function):
    """Band gather forward, band copy backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, mask_h: int, mask_w: int, collect: bool):
        ctx.geometry = (mask_h, mask_w, collect)
        return _psa_forward(x, mask_h, mask_w, collect)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _psa_backward(grad, *ctx.geometry), None, None, None


def psa_mask_portable(x: torch.Tensor, mask_h: int, mask_w: int, collect: bool) -> torch.Tensor:
    """The portable PSA mask on any device and dtype; arguments as in `psa_mask`, checked there."""
    return _PSAMaskPortable.apply(x, mask_h, mask_w, collect)


def resolve_mask_size(mask_size, height: int, width: int) -> tuple[int, int]:
    """(mask_h, mask_w) of ``mask_size``: None -> the full (2H-1, 2W-1) window, an int -> square."""
    if mask_size is None:
        return 2 * height - 1, 2 * width - 1
    if isinstance(mask_size, int):
        return mask_size, mask_size
    mask_h, mask_w = (int(s) for s in mask_size)
    return mask_h, mask_w


def psa_mask(x: torch.Tensor, mode: str = "collect",
             mask_size: Optional[Union[int, Sequence[int]]] = None, impl: str = "auto") -> torch.Tensor:
    """PSANet's PSA mask (see the module docstring for the exact indexing).

    Args:
        x: (N, mH*mW, H, W) attention windows, any float dtype.
        mode: "collect" or "distribute".
        mask_size: (mH, mW), or one int for a square mask; default (2H-1, 2W-1).
        impl: "auto" | "kernel" | "portable" (`--ops_impl`); see `ops/_dispatch.py`.
    Returns:
        (N, H*W, H, W) tensor of x's dtype and device; differentiable with respect to x.
    Raises:
        ValueError: bad mode or shapes. UserError: `impl` unknown, or "kernel" with no kernel here.
    """
    if mode not in MODES:
        raise ValueError(f"psa_mask mode must be one of {MODES}, got {mode!r}")
    if x.dim() != 4:
        raise ValueError(f"psa_mask expects (N, mH*mW, H, W), got shape {tuple(x.shape)}")
    _, channels, height, width = x.shape
    mask_h, mask_w = resolve_mask_size(mask_size, height, width)
    if mask_h < 1 or mask_w < 1 or channels != mask_h * mask_w:
        raise ValueError(f"psa_mask: input has {channels} channels but mask {mask_h}x{mask_w} "
                         f"needs {mask_h * mask_w}")
    run = select("psa_mask", x.device, impl, portable=psa_mask_portable)
    return run(x, mask_h, mask_w, mode == "collect")
