"""Criss-cross attention.

Paper: Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019.

Semantics. Given queries and keys q, k of shape (N, C', H, W) and values v of shape (N, C, H, W),
pixel (h, w) scores its column (the H positions (h2, w)) and its row (the W positions (h, w2))
with dot products q[:, h, w] . k[:, position]; the pixel itself is in both lines and is counted
once (its column entry is masked out). One softmax runs jointly over those H+W-1 positions, and
the output is the softmax-weighted sum of v over the same positions: (N, C, H, W).

Design: two line primitives instead of a fused kernel. Every step is one of
    scores(a, b)        s[p, p2] = a[p] . b[p2]            for p, p2 on one row / one column
    mix(weights, x)     out[p]   = sum_p2 weights[p, p2] x[p2]   (optionally weights transposed)
applied once along the rows and once along the columns:
    forward   attn = softmax(mask_self(scores(q, k)));  out = mix(attn, v)
    backward  dS = softmax'(scores(grad, v));  dq = mix(dS, k);  dk = mix(dS^T, q);
              dv = mix(attn^T, grad)
Each primitive is a batched matmul, one batch entry per row or per column, so both directions run
on tensor-core GEMMs. A fused kernel cannot do that: a tile of pixels along a row shares that row
of v, but every pixel in it needs a different column, so one of the two directions would fall
back to scalar FMAs and re-read v from L2 about H times. The price of the split is that the
attention map, (N, H, W, H+W) values, goes to memory and back; at CCNet's C=512 it is 2.6x
smaller than v, so that round trip adds about a third to the forward's memory traffic.

Layout. The lines are addressed through a "line-major" (H, N, W, C) layout: its rows (batch
h*N+n) and its columns (batch n*W+w, position stride N*W*C) are both plain strided batches, so
every bmm/baddbmm above runs on views with no copy, and the column pass accumulates in place
into the row pass's output. Inputs in another layout are copied into it once; the result is
returned as an (N, C, H, W)-shaped view of line-major memory (call `.contiguous()` if you need
NCHW memory). `CrissCrossAttention` computes q, k, v straight into this layout with GEMMs and
keeps its output there, so CCNet's recurrences run without layout copies.

Measured so far on CPU only: `tools/bench_ops.py --shape small --threads 1 --iters 60`, best of
three runs, on a 2-core x86-64 VM shared with other jobs (torch 2.13). N=2, C'=8, C=64, 25x25,
the op applied twice in a row (CCNet's two recurrences); milliseconds, forward /
forward+backward. The baseline is the straightforward einsum version with a -inf diagonal.
GPU figures for kernel and portable at the production shapes come from running the same tool
on an H100.

    dtype   portable        baseline
    fp32    0.976 / 3.853   1.386 / 9.167
    bf16    1.082 / 3.489   1.584 / 8.194
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from segzoo.ops._dispatch import select

__all__ = ["CrissCrossAttention", "criss_cross_attention", "criss_cross_portable"]


# ---- layout --------------------------------------------------------------------------------------
def _line_major(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (H, N, W, C) view; copied only when its strides cannot serve as row and
    column batches (channel stride 1, (h, n) and (n, w) each mergeable into one batch stride)."""
    lines = t.permute(2, 0, 3, 1)
    height, n_batch, width, channels = lines.shape
    s_h, s_n, s_w, s_c = lines.stride()
    if s_c == 1 and s_w >= channels and s_n == width * s_w and s_h == n_batch * s_n:
        return lines
    return lines.contiguous()


def _from_line_major(lines: torch.Tensor) -> torch.Tensor:
    """(H, N, W, C) -> (N, C, H, W) view."""
    return lines.permute(1, 3, 0, 2)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(H, N, W, X) line-major -> (H*N, W, X): one matrix per row."""
    height, n_batch, width, x = t.shape
    return t.view(height * n_batch, width, x)


def _cols(t: torch.Tensor) -> torch.Tensor:
    """(H, N, W, X) line-major -> (N*W, H, X): one matrix per column."""
    height, n_batch, width, x = t.shape
    return t.permute(1, 2, 0, 3).view(n_batch * width, height, x)


# ---- the two line primitives ------------------------------------------------------------------------
def _line_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products along columns and rows. a, b: (H, N, W, C) -> (H, N, W, H+W) with
    [..., :H] = a[h,n,w] . b[h2,n,w] (column) and [..., H:] = a[h,n,w] . b[h,n,w2] (row)."""
    height, n_batch, width, _ = a.shape
    rows = torch.bmm(_rows(a), _rows(b).transpose(1, 2))
    cols = torch.bmm(_cols(a), _cols(b).transpose(1, 2))
    return torch.cat((cols.view(n_batch, width, height, height).permute(2, 0, 1, 3),
                      rows.view(height, n_batch, width, width)), dim=-1)


def _line_mix(weights: torch.Tensor, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """out[p] = sum over p2 on p's column and row of weights[p, p2] x[p2] (weights[p2, p] if
    `transpose`). weights: (H, N, W, H+W) as from `_line_scores`; x: (H, N, W, C) -> (H, N, W, C)."""
    height, n_batch, width, channels = x.shape
    row_w, col_w = _rows(weights[..., height:]), _cols(weights[..., :height])
    if transpose:
        row_w, col_w = row_w.transpose(1, 2), col_w.transpose(1, 2)
    out = torch.bmm(row_w, _rows(x))  # (H*N, W, C): line-major memory
    # The column pass accumulates in place. The column view is taken straight from the bmm
    # result with as_strided (not via view/permute) so torch.compile's functionalization can
    # write the update back: the inverse of view((H, N, W, C)) does not exist in column layout.
    out.as_strided((n_batch * width, height, channels), (channels, n_batch * width * channels, 1)).baddbmm_(
        col_w, _cols(x))
    return out.view(height, n_batch, width, channels)


class _CrissCrossPortable(torch.autograd.Function):
    """Criss-cross attention on line-major (H, N, W, C) tensors, with the explicit backward of
    the module docstring (it reuses the two primitives and saves only the attention map)."""

    @staticmethod
    def forward(ctx, q, k, v):
        height = q.shape[0]
        scores = _line_scores(q, k)
        scores[..., :height].diagonal(dim1=0, dim2=3).fill_(float("-inf"))  # self: counted in the row
        attn = torch.softmax(scores, dim=-1, dtype=scores.dtype)  # explicit dtype: autocast keeps it
        ctx.save_for_backward(q, k, v, attn)
        return _line_mix(attn, v)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, v, attn = ctx.saved_tensors
        grad = grad.contiguous()
        need_q, need_k, need_v = ctx.needs_input_grad
        dq = dk = dv = None
        if need_q or need_k:
            compute = torch.promote_types(attn.dtype, torch.float32)
            a, da = attn.to(compute), _line_scores(grad, v).to(compute)
            d_scores = (a * (da - (a * da).sum(-1, keepdim=True))).to(attn.dtype)
            dq = _line_mix(d_scores, k) if need_q else None
            dk = _line_mix(d_scores, q, transpose=True) if need_k else None
        if need_v:
            dv = _line_mix(attn, grad, transpose=True)
        return dq, dk, dv


def criss_cross_portable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The portable implementation on line-major (H, N, W, C) tensors; any device and dtype."""
    return _CrissCrossPortable.apply(q, k, v)


# ---- public API ----------------------------------------------------------------------------------
def _matching_dtypes(q, k, v):
    """Under autocast, run in the autocast dtype (as torch.matmul would); otherwise insist on one dtype."""
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"criss_cross_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    return q, k, v


def _attend_lines(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str) -> torch.Tensor:
    q, k, v = _matching_dtypes(q, k, v)
    run = select("criss_cross_attention", q.device, impl, portable=criss_cross_portable)
    return run(q, k, v)


def criss_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Criss-cross attention aggregate (module docstring), without the residual.

    Args:
        q, k: (N, C', H, W) queries and keys. v: (N, C, H, W) values. Same device and dtype
            (under autocast they are cast to the autocast dtype).
        impl: "auto" | "kernel" | "portable" (`--ops_impl`); see `ops/_dispatch.py`.
    Returns:
        (N, C, H, W) tensor, a view of line-major (H, N, W, C) memory.
    Raises:
        ValueError: shapes, devices or dtypes disagree. UserError: bad `impl` (see `select`).
    """
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:]:
        raise ValueError(f"criss_cross_attention expects q, k (N, C', H, W) and v (N, C, H, W); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.device == k.device == v.device:
        raise ValueError(f"criss_cross_attention: q, k, v are on different devices "
                         f"({q.device}, {k.device}, {v.device})")
    out = _attend_lines(_line_major(q), _line_major(k), _line_major(v), impl)
    return _from_line_major(out)


class CrissCrossAttention(nn.Module):
    """CCNet's criss-cross attention block: `gamma * attend(query(x), key(x), value(x)) + x`.

    The query and key 1x1 convolutions reduce to in_channels // reduction channels, the value
    convolution keeps in_channels, and `gamma` starts at 0 so the block starts as the identity.
    The convolutions run as GEMMs on line-major memory (see the module docstring); the
    parameters keep the usual Conv2d shapes and names (query_conv, key_conv, value_conv, gamma).
    CCNet applies the block R times (R=2 in the paper) with shared weights.

    Args:
        in_channels: channels C of the input.
        impl: "auto" | "kernel" | "portable" (`--ops_impl`).
        reduction: channel reduction of query and key (8 in CCNet).
    Shapes: x (N, C, H, W) -> (N, C, H, W), a view of line-major memory.
    """

    def __init__(self, in_channels: int, impl: str = "auto", reduction: int = 8):
        super().__init__()
        inner = max(1, in_channels // reduction)
        self.query_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_lines = _line_major(x)
        # Query and key share one GEMM (their split views are fine for bmm); the value gets its
        # own so that v, the big operand, is a dense tensor that no implementation has to copy.
        qk_convs = (self.query_conv, self.key_conv)
        qk = F.linear(x_lines, torch.cat([c.weight.flatten(1) for c in qk_convs]),
                      torch.cat([c.bias for c in qk_convs]))
        q, k = qk.split([c.out_channels for c in qk_convs], dim=-1)
        v = F.linear(x_lines, self.value_conv.weight.flatten(1), self.value_conv.bias)
        attended = _attend_lines(q, k, v, self.impl)
        return _from_line_major(torch.addcmul(x_lines, self.gamma, attended))

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"
