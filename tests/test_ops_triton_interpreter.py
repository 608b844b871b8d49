"""The Triton kernels, run on CPU by Triton's interpreter, against the portable versions.

TRITON_INTERPRET=1 has to be set before the kernels are decorated, so the cases below run in a
child pytest process that `test_kernels_under_interpreter` starts with it set; in the parent
process they skip and say so. What the interpreter cannot check: bf16 `tl.dot` (Triton's
interpreter multiplies the raw bf16 bit patterns, triton-lang/triton#11584, unsupported
upstream), fake-tensor tracing and torch.compile (wrap_triton returns the interpreted kernel
as is, so fake tensors would reach it); tests/test_ops_cuda.py covers those on a GPU.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None
REPO = Path(__file__).resolve().parents[1]

interpreted_only = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child process that test_kernels_under_interpreter starts")


def test_kernels_under_interpreter():
    if INTERPRETED:
        pytest.skip("this is the child process; the driver runs in the parent")
    if not HAVE_TRITON:
        pytest.skip("triton is not installed, so its interpreter is not available")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary


# ---- cases (child process only) -----------------------------------------------------------------
PSA_CASES = [((3, 4), None), ((5, 3), (3, 3)), ((4, 5), (4, 2)), ((3, 3), (9, 11)), ((9, 9), None)]


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["collect", "distribute"])
@pytest.mark.parametrize("hw,mask", PSA_CASES)
def test_psa_kernel_matches_portable(hw, mask, mode, dtype):
    from segzoo.ops import psa_mask
    height, width = hw
    mask_h, mask_w = mask or (2 * height - 1, 2 * width - 1)
    x = torch.randn(2, mask_h * mask_w, height, width).to(dtype).requires_grad_()
    out = psa_mask(x, mode, (mask_h, mask_w), impl="kernel")
    expected = psa_mask(x, mode, (mask_h, mask_w), impl="portable")
    assert torch.equal(out, expected)  # a copy: exact in every dtype
    grad = torch.randn(out.shape).to(dtype)
    (got,) = torch.autograd.grad(out, x, grad)
    (want,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(got, want)


# (N, C', C, H, W); the last two cross block boundaries: several K steps (C' = 40, W = 37 > 32),
# several N tiles (C = 80 > 64) and several M tiles (W = 70 > 64).
CC_SHAPES = [(2, 3, 4, 5, 7), (1, 2, 3, 1, 5), (1, 16, 20, 17, 18), (1, 40, 80, 6, 37), (1, 8, 8, 3, 70)]
CC_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}  # max|err| <= tol * max|portable|


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CC_SHAPES)
def test_criss_cross_kernel_matches_portable(shape, dtype):
    if dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter computes bf16 tl.dot on raw bit patterns (triton-lang/triton#11584); "
                    "bf16 is checked on CUDA by tests/test_ops_cuda.py")
    from segzoo.ops import criss_cross_attention
    n, c_qk, c, height, width = shape
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(n, c_qk, height, width, generator=generator) for _ in range(2))
    v = torch.randn(n, c, height, width, generator=generator)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = criss_cross_attention(q, k, v, impl="kernel")
    expected = criss_cross_attention(q, k, v, impl="portable")
    tol = CC_TOLERANCE[dtype]
    assert out.dtype == dtype
    assert (out - expected).abs().max() <= tol * expected.abs().max()
    grad = torch.randn(out.shape, generator=generator).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert (g - w).abs().max() <= tol * w.abs().max()


@interpreted_only
def test_module_with_kernel_on_split_qkv_views():
    # The module hands the kernel non-contiguous q, k, v (views into one projection).
    from segzoo.ops import CrissCrossAttention
    torch.manual_seed(0)
    module = CrissCrossAttention(16, impl="kernel")
    with torch.no_grad():
        module.gamma.fill_(0.6)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    out = module(module(x))
    (got,) = torch.autograd.grad(out.sum(), x)
    module.impl = "portable"
    expected = module(module(x))
    (want,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@interpreted_only
def test_custom_op_registration():
    from segzoo.ops._triton_criss_cross import criss_cross_backward_op, criss_cross_op
    from segzoo.ops._triton_psamask import psa_mask_backward_op, psa_mask_op
    checks = ("test_schema", "test_autograd_registration")
    lines = [torch.randn(5, 2, 7, c, requires_grad=True) for c in (3, 3, 4)]  # line-major (H, N, W, C)
    out, attn = criss_cross_op(*lines)
    assert not attn.requires_grad  # the attention map is an auxiliary, non-differentiable output
    torch.library.opcheck(criss_cross_op, tuple(lines), test_utils=checks)
    torch.library.opcheck(criss_cross_backward_op, (torch.randn_like(out), *[t.detach() for t in lines], attn),
                          test_utils=checks)
    torch.library.opcheck(psa_mask_op, (torch.randn(2, 35, 4, 3, requires_grad=True), 7, 5, True), test_utils=checks)
    torch.library.opcheck(psa_mask_backward_op, (torch.randn(2, 12, 4, 3), 3, 2, False), test_utils=checks)
