"""Portable criss-cross attention against the explicit-loop reference (ops/reference.py), and
the CrissCrossAttention module."""
import pytest
import torch

from segzoo.ops import CrissCrossAttention, criss_cross_attention
from segzoo.ops.reference import criss_cross_reference

# (N, C', C, H, W): odd and non-square maps, single row / column / pixel.
SHAPES = [(2, 3, 4, 5, 7), (1, 2, 3, 6, 4), (2, 2, 3, 1, 5), (1, 2, 2, 4, 1), (1, 1, 1, 1, 1)]

# Stated tolerances for low precision against float64 on the same rounded inputs (q, k ~ N(0, 1)
# with C' = 8, so scores reach ~10 and are rounded to the dtype before the softmax, as in any
# bmm-based version): forward |err| <= atol + rtol * |ref|; gradients max|err| <= grad_tol * max|ref|.
LOW_PRECISION = {
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2, grad_tol=6e-2),
    torch.float16: dict(atol=1e-2, rtol=1e-2, grad_tol=1e-2),
}


def _qkv(n, c_qk, c, height, width, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(n, c_qk, height, width, generator=generator)
    k = torch.randn(n, c_qk, height, width, generator=generator)
    v = torch.randn(n, c, height, width, generator=generator)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_reference(shape):
    q, k, v = _qkv(*shape)
    out = criss_cross_attention(q, k, v, impl="portable")
    expected = criss_cross_reference(q, k, v)
    assert out.shape == v.shape and out.dtype == v.dtype
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 2, 3, 3, 4), (2, 1, 2, 4, 3)])
def test_gradcheck(shape):
    assert torch.autograd.gradcheck(lambda *t: criss_cross_attention(*t, impl="portable"), tuple(_qkv(*shape)))


@pytest.mark.parametrize("dtype", list(LOW_PRECISION))
def test_low_precision_against_float64(dtype):
    tol = LOW_PRECISION[dtype]
    q, k, v = _qkv(2, 8, 5, 6, 9, dtype=dtype)
    try:
        out = criss_cross_attention(q, k, v, impl="portable")
    except RuntimeError as exc:  # some CPU builds lack half-precision matmul
        pytest.skip(f"{dtype} matmul unsupported on this CPU build: {exc}")
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = criss_cross_reference(q64, k64, v64)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, atol=tol["atol"], rtol=tol["rtol"])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q64, k64, v64), grad.double())
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert (g.double() - w).abs().max() <= tol["grad_tol"] * w.abs().max()


def test_self_counted_once():
    # With constant keys every position scores the same, so the output is the plain mean of v
    # over the H+W-1 cross positions; counting the pixel twice would change it.
    q, _, v = _qkv(1, 2, 3, 4, 5)
    k = torch.ones_like(q)
    out = criss_cross_attention(q.detach(), k, v.detach(), impl="portable")
    column_sum = v.detach().sum(2, keepdim=True)
    row_sum = v.detach().sum(3, keepdim=True)
    expected = (column_sum + row_sum - v.detach()) / (4 + 5 - 1)
    torch.testing.assert_close(out, expected)


def test_output_layout_and_input_layouts():
    q, k, v = _qkv(2, 3, 4, 5, 6)
    out = criss_cross_attention(q, k, v, impl="portable")
    assert out.permute(2, 0, 3, 1).is_contiguous()  # line-major memory, as documented
    # any input layout gives the same values
    cl = [t.detach().contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
    torch.testing.assert_close(criss_cross_attention(*cl, impl="portable"), out.detach())


def test_bad_arguments():
    q, k, v = _qkv(1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="expects"):
        criss_cross_attention(q, k[:, :, :3], v)
    with pytest.raises(ValueError, match="dtypes"):
        criss_cross_attention(q, k, v.float())


# ---- module ----------------------------------------------------------------------------------
def _conv_reference(module, x):
    """The block written the obvious way: Conv2d projections, loop attention, residual."""
    q, k, v = (conv(x) for conv in (module.query_conv, module.key_conv, module.value_conv))
    return module.gamma * criss_cross_reference(q, k, v) + x


def test_module_starts_as_identity_and_has_conv_parameters():
    module = CrissCrossAttention(16)
    x = torch.randn(2, 16, 5, 6)
    assert torch.equal(module(x), x)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == {"gamma": (1,), "query_conv.weight": (2, 16, 1, 1), "query_conv.bias": (2,),
                      "key_conv.weight": (2, 16, 1, 1), "key_conv.bias": (2,),
                      "value_conv.weight": (16, 16, 1, 1), "value_conv.bias": (16,)}


def test_module_two_recurrences_match_reference():
    torch.manual_seed(0)
    module = CrissCrossAttention(16, impl="portable").double()
    with torch.no_grad():
        module.gamma.fill_(0.8)
    x = torch.randn(2, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    out = module(module(x))
    expected = _conv_reference(module, _conv_reference(module, x))
    torch.testing.assert_close(out, expected)
    params = [x, module.gamma, module.value_conv.weight, module.query_conv.weight]
    got = torch.autograd.grad(out.square().sum(), params)
    want = torch.autograd.grad(expected.square().sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_module_second_recurrence_needs_no_layout_copy():
    module = CrissCrossAttention(8, impl="portable")
    y = module(torch.randn(1, 8, 4, 5))
    lines = y.permute(2, 0, 3, 1)
    assert lines.is_contiguous()  # the next recurrence reads it as it is


def test_module_under_cpu_autocast():
    module = CrissCrossAttention(16, impl="portable")
    with torch.no_grad():
        module.gamma.fill_(0.5)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and module.gamma.grad is not None
    torch.testing.assert_close(out.float(), module(x).detach(), atol=0.1, rtol=0.05)


def test_compiles_with_fullgraph():
    # aot_eager runs Dynamo, fake tensors and AOTAutograd's functionalisation (the parts that
    # break on in-place updates through views) without Inductor's slow C++ build.
    module = CrissCrossAttention(8, impl="portable")
    with torch.no_grad():
        module.gamma.fill_(0.7)
    x = torch.randn(1, 8, 4, 5, requires_grad=True)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out = compiled(compiled(x))
    (got,) = torch.autograd.grad(out.sum(), x)
    eager = module(module(x))
    (want,) = torch.autograd.grad(eager.sum(), x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(got, want)

