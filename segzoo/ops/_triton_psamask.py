"""Triton kernel for the PSA mask (semantics in ops/psamask.py), forward and backward.

Imported only by ops/_dispatch.py on the first call that can use it, never at `import ops` time.
Registered as `torch.ops.segzoo.psa_mask` and `torch.ops.segzoo.psa_mask_backward` with
torch.library.triton_op: torch.compile traces into the kernel launch, fake tensors get their
shapes by running the same Python with the launch skipped, and autograd goes through
register_autograd. On CPU it runs only under TRITON_INTERPRET=1 (the tests).

One kernel covers collect/distribute x forward/backward. Each program owns a BLOCK_R x BLOCK_C
tile of the destination viewed as (N, rows, H*W) and computes, for every entry, the single
source entry it copies or 0. So the destination is written exactly once, zeros included (the
portable backward pads first), nothing is written twice and nothing is accumulated: the result is
deterministic with no atomics. Stores are contiguous along the tile's columns. Loads move by
+-H*W elements per column step but are contiguous along a tile diagonal, so the sectors one
tile loads are reused by its own neighbouring entries from L1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

_BLOCK_R, _BLOCK_C = 16, 64


@triton.jit
def _psa_mask_kernel(src_ptr, dst_ptr, rows, height, width, mask_h, mask_w,
                     src_batch_stride, dst_batch_stride,
                     COLLECT: tl.constexpr, BACKWARD: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    plane = height * width
    r = (tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
    c = (tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    n = tl.program_id(2).to(tl.int64)
    half_h = (mask_h - 1) // 2
    half_w = (mask_w - 1) // 2
    inside = (r < rows) & (c < plane)
    if BACKWARD:
        # destination: grad of x, rows = window index i*mW+j, columns = pixel h*W+w.
        i = r // mask_w
        j = r % mask_w
        h = c // width
        w = c % width
        th = i + h - half_h
        tw = j + w - half_w
        target = th * width + tw
        if COLLECT:
            src = target * plane + c
        else:
            src = c * plane + target
    else:
        # destination: out; collect rows = target th*W+tw, columns = pixel; distribute swapped.
        if COLLECT:
            target = r
            pixel = c
        else:
            target = c
            pixel = r
        th = target // width
        tw = target % width
        h = pixel // width
        w = pixel % width
        i = th - h + half_h
        j = tw - w + half_w
        src = (i * mask_w + j) * plane + pixel
    valid = inside & (i >= 0) & (i < mask_h) & (j >= 0) & (j < mask_w)
    valid = valid & (th >= 0) & (th < height) & (tw >= 0) & (tw < width)
    value = tl.load(src_ptr + n * src_batch_stride + src, mask=valid, other=0.0)
    tl.store(dst_ptr + n * dst_batch_stride + r * plane + c, value, mask=inside)


def _launch(src: torch.Tensor, dst: torch.Tensor, mask_h: int, mask_w: int, collect: bool, backward: bool) -> None:
    n_batch, rows, height, width = dst.shape
    if max(src[0].numel(), dst[0].numel()) >= 2 ** 31:  # offsets inside one sample are int32
        raise ValueError(f"psa_mask kernel: one sample of {tuple(src.shape)} is too large for int32 "
                         f"offsets; use ‹ops_impl› portable")
    grid = (triton.cdiv(height * width, _BLOCK_C), triton.cdiv(rows, _BLOCK_R), n_batch)
    wrap_triton(_psa_mask_kernel)[grid](
        src, dst, rows, height, width, mask_h, mask_w, src.stride(0), dst.stride(0),
        COLLECT=collect, BACKWARD=backward, BLOCK_R=_BLOCK_R, BLOCK_C=_BLOCK_C, num_warps=4)


@triton_op("segzoo::psa_mask", mutates_args=())
def psa_mask_op(x: torch.Tensor, mask_h: int, mask_w: int, collect: bool) -> torch.Tensor:
    """(N, mH*mW, H, W) -> (N, H*W, H, W); arguments as in segzoo.ops.psamask.psa_mask."""
    x = x.contiguous()
    n_batch, _, height, width = x.shape
    out = torch.empty((n_batch, height * width, height, width), dtype=x.dtype, device=x.device)
    _launch(x, out, mask_h, mask_w, collect, backward=False)
    return out


@triton_op("segzoo::psa_mask_backward", mutates_args=())
def psa_mask_backward_op(grad: torch.Tensor, mask_h: int, mask_w: int, collect: bool) -> torch.Tensor:
    """Gradient of psa_mask_op: (N, H*W, H, W) -> (N, mH*mW, H, W)."""
    grad = grad.contiguous()
    n_batch, _, height, width = grad.shape
    grad_x = torch.empty((n_batch, mask_h * mask_w, height, width), dtype=grad.dtype, device=grad.device)
    _launch(grad, grad_x, mask_h, mask_w, collect, backward=True)
    return grad_x


def _setup_context(ctx, inputs, output):
    _, ctx.mask_h, ctx.mask_w, ctx.collect = inputs


def _backward(ctx, grad):
    return psa_mask_backward_op(grad, ctx.mask_h, ctx.mask_w, ctx.collect), None, None, None


psa_mask_op.register_autograd(_backward, setup_context=_setup_context)

# What ops/_dispatch.py calls: (x, mask_h, mask_w, collect) -> out.
kernel_entry = psa_mask_op
