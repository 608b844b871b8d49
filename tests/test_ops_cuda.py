"""GPU checks of the Triton kernels at the production shapes. Run with SEG_TEST_DEVICE=cuda:

    SEG_TEST_DEVICE=cuda python -m pytest -q tests/test_ops_cuda.py

Otherwise every test skips and says why. Shapes: PSANet at a 1024x512 crop (feature map 64x32
after the x2 shrink, mask 127x63, batch 8); CCNet at a 769x769 crop (97x97, C=512, C'=64, batch 8).
"""
import pytest
import torch

from segzoo.ops import CrissCrossAttention, available_impls, criss_cross_attention, psa_mask
from segzoo.runtime.device import device_type
from segzoo.runtime.errors import UserError

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = ["collect", "distribute"]
# Relative error floors (max|err| / max|float64|) that either implementation may reach.
ERROR_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


@pytest.fixture(scope="module")
def cuda(device_name):
    if device_name != "cuda":
        pytest.skip("GPU kernel tests: set SEG_TEST_DEVICE=cuda to run them")
    try:
        device_type("cuda")
    except UserError as exc:
        pytest.skip(f"SEG_TEST_DEVICE=cuda but {exc}")
    impls = available_impls("cuda")
    if "kernel" not in impls["psa_mask"]:
        pytest.skip("no Triton kernels on this machine (triton missing or torch < 2.6)")
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32_matmul():
    # Compare kernels and cuBLAS in true fp32 (both follow this setting: tf32 otherwise).
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_psa_kernel_production_shape(cuda, mode, dtype):
    x = torch.randn(8, 127 * 63, 64, 32, device=cuda).to(dtype).requires_grad_()
    out = psa_mask(x, mode, (127, 63), impl="kernel")
    expected = psa_mask(x, mode, (127, 63), impl="portable")
    assert torch.equal(out, expected)  # a copy: exact
    grad = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, grad)
    (want,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(got, want)


def _portable_float64(inputs, grad):
    inputs = [t.requires_grad_() for t in inputs]
    out = criss_cross_attention(*inputs, impl="portable")
    return [out, *torch.autograd.grad(out, inputs, grad)]


def _relative_errors(outputs, reference):
    return [((o.double() - r).abs().max() / r.abs().max()).item() for o, r in zip(outputs, reference)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_criss_cross_kernel_production_shape(cuda, dtype):
    generator = torch.Generator(device=cuda).manual_seed(0)
    scale = 64 ** -0.25  # q.k ~ N(0, 1), the range trained CCNet scores live in
    q, k = (torch.randn(8, 64, 97, 97, device=cuda, generator=generator) * scale for _ in range(2))
    v = torch.randn(8, 512, 97, 97, device=cuda, generator=generator)
    grad = torch.randn(8, 512, 97, 97, device=cuda, generator=generator)

    def run(impl, tensor_dtype):
        inputs = [t.to(tensor_dtype).requires_grad_() for t in (q, k, v)]
        out = criss_cross_attention(*inputs, impl=impl)
        grads = torch.autograd.grad(out, inputs, grad.to(tensor_dtype))
        assert out.dtype == tensor_dtype and all(g.dtype == tensor_dtype for g in grads)
        return [out, *grads]

    # float64 reference: the portable version on the same rounded inputs
    rounded = [t.to(dtype).double() for t in (q, k, v)]
    reference = [t.detach() for t in _portable_float64(rounded, grad.to(dtype).double())]
    kernel_errors = _relative_errors(run("kernel", dtype), reference)
    portable_errors = _relative_errors(run("portable", dtype), reference)
    for name, kernel_err, portable_err in zip(("out", "dq", "dk", "dv"), kernel_errors, portable_errors):
        assert kernel_err <= max(2 * portable_err, ERROR_FLOOR[dtype]), (name, kernel_err, portable_err)


def test_kernels_are_deterministic(cuda):
    x = torch.randn(2, 127 * 63, 64, 32, device=cuda, requires_grad=True)
    q, k = (torch.randn(2, 64, 97, 97, device=cuda, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 512, 97, 97, device=cuda, requires_grad=True)

    def grads():
        psa = torch.autograd.grad(psa_mask(x, "distribute", impl="kernel").square().sum(), x)
        cc = torch.autograd.grad(criss_cross_attention(q, k, v, impl="kernel").square().sum(), (q, k, v))
        return (*psa, *cc)

    for first, second in zip(grads(), grads()):
        assert torch.equal(first, second)


class _SmallHead(torch.nn.Module):
    """Both ops in one small module, as a model would use them."""

    def __init__(self, channels: int, impl: str):
        super().__init__()
        self.cca = CrissCrossAttention(channels, impl=impl)
        self.impl = impl
        with torch.no_grad():
            self.cca.gamma.fill_(0.5)

    def forward(self, x, attention_windows):
        y = self.cca(self.cca(x))
        mask = psa_mask(attention_windows, "collect", impl=self.impl)
        return y.flatten(2) @ mask.flatten(2).softmax(1)


def test_torch_compile_through_the_kernels(cuda):
    torch.manual_seed(0)
    head = _SmallHead(64, impl="kernel").to(cuda)
    x = torch.randn(2, 64, 12, 10, device=cuda, requires_grad=True)
    windows = torch.randn(2, 23 * 19, 12, 10, device=cuda, requires_grad=True)
    compiled = torch.compile(head, fullgraph=True)
    out = compiled(x, windows)
    got = torch.autograd.grad(out.square().sum(), (x, windows))
    eager = head(x, windows)
    want = torch.autograd.grad(eager.square().sum(), (x, windows))
    torch.testing.assert_close(out, eager, atol=1e-4, rtol=1e-4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_through_the_kernels(cuda, amp_dtype):
    torch.manual_seed(0)
    head = _SmallHead(64, impl="kernel").to(cuda)
    x = torch.randn(2, 64, 12, 10, device=cuda, requires_grad=True)
    windows = torch.randn(2, 23 * 19, 12, 10, device=cuda, requires_grad=True)
    with torch.autocast("cuda", dtype=amp_dtype):
        out = head(x, windows)
    grads = torch.autograd.grad(out.float().square().sum(), (x, windows))
    assert all(torch.isfinite(g).all() for g in grads)
    reference = _SmallHead(64, impl="portable").to(cuda)
    reference.load_state_dict(head.state_dict())
    with torch.autocast("cuda", dtype=amp_dtype):
        expected = reference(x, windows)
    torch.testing.assert_close(out.float(), expected.float(), atol=5e-2, rtol=5e-2)
