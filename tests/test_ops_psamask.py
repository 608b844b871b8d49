"""Portable PSA mask against the explicit-loop reference (ops/reference.py)."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from segzoo.ops import psa_mask
from segzoo.ops.psamask import _reversal_index
from segzoo.ops.reference import psa_mask_reference

# (H, W) maps: odd, even, non-square and single-row/column; masks: default, smaller and larger,
# odd and even, mixed.
MAPS = [(3, 4), (5, 3), (1, 4), (4, 1)]
MASKS = [None, (3, 3), (4, 2), (9, 11), (2, 7), (8, 6), (1, 1)]
MODES = ["collect", "distribute"]


def _mask(height, width, mask):
    return (2 * height - 1, 2 * width - 1) if mask is None else mask


def _input(height, width, mask, dtype=torch.float64, batch=2, seed=0):
    mask_h, mask_w = _mask(height, width, mask)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, mask_h * mask_w, height, width, dtype=dtype, generator=generator)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hw,mask", list(itertools.product(MAPS, MASKS)))
def test_forward_and_gradient_match_reference(hw, mask, mode):
    height, width = hw
    mask_size = _mask(height, width, mask)
    x = _input(height, width, mask).requires_grad_()
    out = psa_mask(x, mode, mask_size, impl="portable")
    expected = psa_mask_reference(x, mode, mask_size)
    assert out.shape == (2, height * width, height, width)
    assert torch.equal(out, expected)  # a pure copy: bit-exact
    grad = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, grad)
    (want,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(got, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hw,mask", [((3, 4), None), ((4, 3), (3, 2)), ((2, 3), (6, 7))])
def test_gradcheck(hw, mask, mode):
    height, width = hw
    x = _input(height, width, mask, batch=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: psa_mask(t, mode, _mask(height, width, mask), impl="portable"), (x,))


def test_distribute_is_transpose_of_collect():
    x = _input(5, 4, None)
    collect = psa_mask(x, "collect", impl="portable").flatten(2)
    distribute = psa_mask(x, "distribute", impl="portable").flatten(2)
    assert torch.equal(distribute, collect.transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_is_exact(dtype, mode):
    # Tolerance 0: the op only moves values, so in any dtype it must equal the float64 result
    # of the same (already rounded) inputs.
    x = _input(4, 5, (5, 4), dtype=dtype).requires_grad_()
    out = psa_mask(x, mode, (5, 4), impl="portable")
    assert out.dtype == dtype
    assert torch.equal(out.double(), psa_mask_reference(x.detach().double(), mode, (5, 4)))
    grad = torch.randn(out.shape, dtype=torch.float64)
    (got,) = torch.autograd.grad(out, x, grad.to(dtype))
    x64 = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(psa_mask_reference(x64, mode, (5, 4)), x64, grad.to(dtype).double())
    assert torch.equal(got.double(), want)


def test_non_contiguous_input():
    x = _input(3, 4, None)
    strided = torch.stack([x, x], dim=-1)[..., 0]  # same values, non-contiguous
    assert not strided.is_contiguous()
    assert torch.equal(psa_mask(strided, impl="portable"), psa_mask(x, impl="portable"))


@pytest.mark.parametrize("mode", MODES)
def test_default_mask_forward_is_one_gather(mode):
    # The covering-mask forward must be a single gather: no pad, no copy, contiguous result.
    x = _input(6, 5, None, dtype=torch.float32)
    psa_mask(x, mode, impl="portable")  # build and cache the index plan outside the profile
    with profile() as prof:
        out = psa_mask(x, mode, impl="portable")
    names = [e.name for e in prof.events() if e.name.startswith("aten::")]
    assert names.count("aten::index") == 1
    assert not {"aten::copy_", "aten::clone", "aten::constant_pad_nd"} & set(names)
    assert out.is_contiguous()


def test_reversal_index_cached_per_shape_and_device():
    cpu = torch.device("cpu")
    first = _reversal_index(4, 3, cpu)
    assert _reversal_index(4, 3, cpu) is first
    assert _reversal_index(3, 4, cpu) is not first
    # two H x W grids with equal strides, not one index per output element
    assert [t.shape for t in first] == [(4, 3), (4, 3)] and first[0].stride() == first[1].stride()


def test_bad_arguments():
    x = _input(3, 3, None)
    with pytest.raises(ValueError, match="channels"):
        psa_mask(x, mask_size=(3, 3))
    with pytest.raises(ValueError, match="mode"):
        psa_mask(x, "gather")
    with pytest.raises(ValueError, match="expects"):
        psa_mask(x[0])


def test_square_int_mask_size():
    x = _input(3, 3, (3, 3))
    assert torch.equal(psa_mask(x, mask_size=3, impl="portable"), psa_mask_reference(x, "collect", (3, 3)))


def test_compiles_with_fullgraph():
    # aot_eager: Dynamo, fake tensors and AOTAutograd without Inductor's slow C++ build.
    x = torch.randn(2, 3 * 4, 4, 5, requires_grad=True)
    fn = torch.compile(lambda t: F.relu(psa_mask(t, "distribute", (3, 4))), backend="aot_eager", fullgraph=True)
    out = fn(x)
    (got,) = torch.autograd.grad(out.sum(), x)
    eager = F.relu(psa_mask(x, "distribute", (3, 4)))
    (want,) = torch.autograd.grad(eager.sum(), x)
    assert torch.equal(out, eager) and torch.equal(got, want)
