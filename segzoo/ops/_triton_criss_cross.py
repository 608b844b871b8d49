"""Triton kernels for criss-cross attention (semantics and design in ops/criss_cross.py).

Imported only by ops/_dispatch.py on the first call that can use it, never at `import ops` time.
Registered as `torch.ops.segzoo.criss_cross` (q, k, v -> out, attention map) and
`torch.ops.segzoo.criss_cross_backward` with torch.library.triton_op, so torch.compile traces
into the launches and fake tensors get their shapes from the same Python with the launches
skipped. On CPU it runs only under TRITON_INTERPRET=1 (the tests).

The same two line primitives as the portable version, as three kernels:
  _line_matmul_kernel       C[line] (+)= A[line] @ B[line] for every row or column line, with
                            arbitrary strides, an fp32 accumulator and an optional accumulate
                            into C; it does the scores (q k^T, grad v^T) and the mixes (attn v,
                            dS k, dS^T q, attn^T grad) in both directions.
  _masked_softmax_kernel    joint softmax over a pixel's column and row with its own column
                            entry masked, in fp32, writing the map in the input dtype.
  _softmax_backward_kernel  dS = A * (dA - sum(A * dA)), in fp32.
Scores and their gradients are kept in fp32 (N*H*W*(H+W) values, small next to v); the
attention map and every tensor the caller sees keep the input dtype, as the portable version's.
Tensors are line-major (H, N, W, C) as ops/criss_cross.py hands them over (made contiguous
here, see `_dense`), so every tile load and store runs along the contiguous channel axis in
both directions. The column pass adds into
the row pass's output in a second launch, so nothing is accumulated concurrently: deterministic.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton


@triton.jit
def _line_matmul_kernel(a_ptr, b_ptr, c_ptr, a_offset, c_offset, M, N, K, INNER,
                        a_so, a_si, a_sm, a_sk, b_so, b_si, b_sk, b_sn, c_so, c_si, c_sm, c_sn,
                        ACCUMULATE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One program: a BLOCK_M x BLOCK_N tile of C for one line; a line is the batch entry
    # (outer, inner) = divmod(line, INNER), e.g. (h, n) for rows and (n, w) for columns.
    line = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tile_m = tl.program_id(1) // tiles_n
    tile_n = tl.program_id(1) % tiles_n
    outer = (line // INNER).to(tl.int64)
    inner = (line % INNER).to(tl.int64)
    a_ptr += a_offset + outer * a_so + inner * a_si
    b_ptr += outer * b_so + inner * b_si
    c_ptr += c_offset + outer * c_so + inner * c_si
    rm = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * a_sm + kk[None, :] * a_sk,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None] * b_sk + rn[None, :] * b_sn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    c_ptrs = c_ptr + rm[:, None] * c_sm + rn[None, :] * c_sn
    c_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if ACCUMULATE:
        acc += tl.load(c_ptrs, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _masked_softmax_kernel(scores_ptr, attn_ptr, pixels, height, length, pixels_per_h, row_stride,
                           BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr):
    # Rows are pixels in line-major order (h*N + n)*W + w; entry `h` of the row is the pixel's
    # own column entry, masked because the row part [height:] already holds the pixel.
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    col = tl.arange(0, BLOCK_L)[None, :]
    own_h = (p // pixels_per_h)[:, None]
    in_rows = p[:, None] < pixels
    live = in_rows & (col < length) & (col != own_h)
    offsets = p[:, None].to(tl.int64) * row_stride + col
    s = tl.load(scores_ptr + offsets, mask=live, other=float("-inf")).to(tl.float32)
    row_max = tl.max(s, axis=1)
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # rows past the end stay finite
    e = tl.exp(s - row_max[:, None])
    total = tl.sum(e, axis=1)
    total = tl.where(total == 0.0, 1.0, total)
    attn = e / total[:, None]
    tl.store(attn_ptr + offsets, attn.to(attn_ptr.dtype.element_ty), mask=in_rows & (col < row_stride))


@triton.jit
def _softmax_backward_kernel(attn_ptr, d_attn_ptr, d_scores_ptr, pixels, length, row_stride,
                             BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    col = tl.arange(0, BLOCK_L)[None, :]
    in_rows = p[:, None] < pixels
    live = in_rows & (col < length)
    offsets = p[:, None].to(tl.int64) * row_stride + col
    a = tl.load(attn_ptr + offsets, mask=live, other=0.0).to(tl.float32)
    da = tl.load(d_attn_ptr + offsets, mask=live, other=0.0).to(tl.float32)
    ds = a * (da - tl.sum(a * da, axis=1)[:, None])
    tl.store(d_scores_ptr + offsets, ds.to(d_scores_ptr.dtype.element_ty), mask=in_rows & (col < row_stride))


# ---- launch helpers -----------------------------------------------------------------------------
def _block(size: int, low: int, high: int) -> int:
    return max(low, min(high, triton.next_power_of_2(size)))


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 follows torch's matmul precision setting (tf32 unless "highest"), like cuBLAS does."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


class _Lines(NamedTuple):
    """How a line-major (H, N, W, X) tensor splits into lines: rows are lines (h, n) with
    positions w, columns are lines (n, w) with positions h; line = outer * inner_count + inner."""
    count: int
    inner_count: int
    outer_stride: int
    inner_stride: int
    position_stride: int


def _lines(t: torch.Tensor, axis: str) -> _Lines:
    s_h, s_n, s_w, _ = t.stride()
    height, n_batch, width, _ = t.shape
    if axis == "row":
        return _Lines(height * n_batch, n_batch, s_h, s_n, s_w)
    return _Lines(n_batch * width, width, s_n, s_w, s_h)


def _line_matmul(c: torch.Tensor, c_offset: int, c_mn: tuple[int, int],
                 a: torch.Tensor, a_offset: int, a_mk: tuple[int, int],
                 b: torch.Tensor, b_kn: tuple[int, int],
                 axis: str, m: int, n: int, k: int, accumulate: bool) -> None:
    """C[line] (+)= A[line] @ B[line] over the lines of `axis`. Each matrix is given by its base
    tensor (line strides from `_lines`), an element offset and its two in-matrix strides."""
    if max(t.numel() for t in (a, b, c)) >= 2 ** 31:  # in-line offsets are int32
        raise ValueError("criss_cross kernel: tensors this large need int64 offsets; use ‹ops_impl› portable")
    la, lb, lc = _lines(a, axis), _lines(b, axis), _lines(c, axis)
    block_m, block_n, block_k = _block(m, 16, 64), _block(n, 16, 64), _block(k, 16, 32)
    grid = (lc.count, triton.cdiv(m, block_m) * triton.cdiv(n, block_n))
    wrap_triton(_line_matmul_kernel)[grid](
        a, b, c, a_offset, c_offset, m, n, k, lc.inner_count,
        la.outer_stride, la.inner_stride, a_mk[0], a_mk[1], lb.outer_stride, lb.inner_stride, b_kn[0], b_kn[1],
        lc.outer_stride, lc.inner_stride, c_mn[0], c_mn[1],
        ACCUMULATE=accumulate, PRECISION=_dot_precision(a.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=3)


def _scores(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """out[h,n,w,:H] = a[h,n,w].b[h2,n,w]; out[h,n,w,H:H+W] = a[h,n,w].b[h,n,w2].
    a, b: (H, N, W, C); out: (H, N, W, >=H+W) scores buffer."""
    height, _, width, channels = a.shape
    for axis, offset, length in (("row", height, width), ("col", 0, height)):
        a_pos, b_pos, out_pos = (_lines(t, axis).position_stride for t in (a, b, out))
        _line_matmul(out, offset, (out_pos, out.stride(3)), a, 0, (a_pos, a.stride(3)),
                     b, (b.stride(3), b_pos), axis, length, length, channels, accumulate=False)


def _mix(weights: torch.Tensor, x: torch.Tensor, out: torch.Tensor, transpose: bool) -> None:
    """out[p] = sum_p2 weights[p, p2] x[p2] over p's column and row (weights[p2, p] if transpose).
    weights: (H, N, W, >=H+W) laid out as `_scores` writes; x, out: (H, N, W, C)."""
    height, _, width, channels = x.shape
    for axis, offset, length, accumulate in (("row", height, width, False), ("col", 0, height, True)):
        w_pos, x_pos, out_pos = (_lines(t, axis).position_stride for t in (weights, x, out))
        w_mk = (weights.stride(3), w_pos) if transpose else (w_pos, weights.stride(3))
        _line_matmul(out, 0, (out_pos, out.stride(3)), weights, offset, w_mk,
                     x, (x_pos, x.stride(3)), axis, length, channels, length, accumulate)


def _row_blocks(row_stride: int) -> tuple[int, int]:
    block_l = triton.next_power_of_2(row_stride)
    return max(1, 2048 // block_l), block_l


def _padded_length(height: int, width: int) -> int:
    """Scores rows padded to a multiple of 8 elements so each row starts 16-byte aligned."""
    return (height + width + 7) // 8 * 8


def _dense(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Contiguous copies of non-contiguous inputs. The kernels take strides as plain ints read at
    trace time, and torch.compile only promises user Triton kernels the traced stride *order*
    on some versions, which pins the strides down only for dense tensors. (Copies only the
    module's small q/k split views in practice.)"""
    return tuple(t.contiguous() for t in tensors)


# ---- custom ops ---------------------------------------------------------------------------------
@triton_op("segzoo::criss_cross", mutates_args=())
def criss_cross_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Line-major q, k (H, N, W, C'), v (H, N, W, C) -> (out (H, N, W, C), attention map
    (H, N, W, L) with L >= H+W: [..., :H] column weights, [..., H:H+W] row weights)."""
    q, k, v = _dense(q, k, v)
    height, n_batch, width, channels = v.shape
    row_stride = _padded_length(height, width)
    scores = torch.empty((height, n_batch, width, row_stride), dtype=torch.float32, device=q.device)
    _scores(q, k, scores)
    attn = torch.empty((height, n_batch, width, row_stride), dtype=q.dtype, device=q.device)
    pixels = height * n_batch * width
    block_p, block_l = _row_blocks(row_stride)
    wrap_triton(_masked_softmax_kernel)[(triton.cdiv(pixels, block_p),)](
        scores, attn, pixels, height, height + width, n_batch * width, row_stride,
        BLOCK_P=block_p, BLOCK_L=block_l, num_warps=4)
    out = torch.empty((height, n_batch, width, channels), dtype=v.dtype, device=v.device)
    _mix(attn, v, out, transpose=False)
    return out, attn


@triton_op("segzoo::criss_cross_backward", mutates_args=())
def criss_cross_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv), line-major, for the output gradient `grad` (H, N, W, C)."""
    grad, q, k, v = _dense(grad, q, k, v)
    height, n_batch, width, channels = v.shape
    row_stride = attn.shape[-1]
    d_attn = torch.empty(attn.shape, dtype=torch.float32, device=attn.device)
    _scores(grad, v, d_attn)
    d_scores = torch.empty(attn.shape, dtype=attn.dtype, device=attn.device)
    pixels = height * n_batch * width
    block_p, block_l = _row_blocks(row_stride)
    wrap_triton(_softmax_backward_kernel)[(triton.cdiv(pixels, block_p),)](
        attn, d_attn, d_scores, pixels, height + width, row_stride,
        BLOCK_P=block_p, BLOCK_L=block_l, num_warps=4)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _mix(d_scores, k, dq, transpose=False)
    _mix(d_scores, q, dk, transpose=True)
    _mix(attn, grad, dv, transpose=True)
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v = inputs
    _, attn = output
    ctx.save_for_backward(q, k, v, attn)
    ctx.mark_non_differentiable(attn)


def _backward(ctx, grad_out, _grad_attn):
    q, k, v, attn = ctx.saved_tensors
    return criss_cross_backward_op(grad_out, q, k, v, attn)


criss_cross_op.register_autograd(_backward, setup_context=_setup_context)


def kernel_entry(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What ops/_dispatch.py calls: line-major (q, k, v) -> out."""
    return criss_cross_op(q, k, v)[0]
