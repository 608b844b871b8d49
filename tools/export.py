"""Export a trained checkpoint to ONNX or TorchScript, verified against PyTorch in the same run.

    python tools/export.py --ckpt experiments/demo/best_pspnet_demo.pth --format onnx --out pspnet.onnx
    python tools/export.py --ckpt best_ccnet_voc.pth --format torchscript --out ccnet.pt --height 512 --width 1024

The exported graph takes `image`: (N, 3, H, W) float32 RGB in 0..255 (normalisation is inside)
and returns `logits`: (N, K, H, W) float32 (argmax over K = class ids). ONNX: opset 17, dynamic
axes N, H and W of both (the example size --height x --width only traces the graph); the
adaptive pooling of PSPNet/DeepLabV3 is exported as an exact size-generic equivalent and the
attention ops (PSANet, CCNet) through their portable versions. Verification: ONNX Runtime
(CPU) or the reloaded TorchScript module against PyTorch at the example size and a second,
different size; the max abs error is printed and above --tolerance the tool fails (exit 1).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from segzoo.datasets.transforms import normalize  # noqa: E402
from segzoo.engine.config import OneLineParser  # noqa: E402
from segzoo.runtime.config_types import positive_int  # noqa: E402
from segzoo.ops.psamask import resolve_mask_size  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402
from tools.predict import load_model  # noqa: E402

OPSET = 17
DYNAMIC_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}


def pool_matrix(size, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging rows over PyTorch's adaptive windows [floor(i*size/bins), ceil((i+1)*size/bins))."""
    i = torch.arange(bins, device=like.device).unsqueeze(1)
    pos = torch.arange(size, device=like.device).unsqueeze(0)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    mask = ((pos >= start) & (pos < end)).to(like.dtype)
    return mask / mask.sum(1, keepdim=True)


class SizeGenericAdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d as two matrix products, P_h @ x @ P_w^T, built from the input's size
    at run time: the ONNX exporter refuses adaptive pooling to more than 1x1 with dynamic H, W."""

    def __init__(self, output_size):
        super().__init__()
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        self.bins = tuple(int(v) for v in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bins == (1, 1):
            return x.mean((2, 3), keepdim=True)
        height, width = x.shape[-2:]
        return pool_matrix(height, self.bins[0], x) @ x @ pool_matrix(width, self.bins[1], x).t()


def make_size_generic(model: nn.Module) -> nn.Module:
    """Swap every nn.AdaptiveAvgPool2d (with fixed output sizes) for SizeGenericAdaptiveAvgPool2d, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and None not in (
                    child.output_size if isinstance(child.output_size, tuple) else (child.output_size,)):
                setattr(module, name, SizeGenericAdaptiveAvgPool2d(child.output_size))
    return model


def gather_psa_mask(x: torch.Tensor, mode: str = "collect", mask_size=None, impl: str = "auto") -> torch.Tensor:
    """PSANet's PSA mask (segzoo.ops.psamask semantics) as one gather with indices computed from
    the input's size at run time: (N, mH*mW, H, W) -> (N, H*W, H, W). The portable op's
    as_strided band view bakes the traced size into its strides, so exports use this instead.

    collect: out[n, th*W+tw, h*W+w] = x[n, (th-h+hH)*mW + (tw-w+hW), h, w] inside the mask, else 0;
    distribute is its (HW, HW) transpose."""
    n, channels, height, width = x.shape
    mask_h, mask_w = resolve_mask_size(mask_size, height, width)
    rows, cols = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
    # (target, pixel) grids over the flattened H*W map
    t_h, t_w = rows.repeat_interleave(width), cols.repeat(height)
    i = t_h[:, None] - t_h[None, :] + (mask_h - 1) // 2
    j = t_w[:, None] - t_w[None, :] + (mask_w - 1) // 2
    inside = (i >= 0) & (i < mask_h) & (j >= 0) & (j < mask_w)
    index = torch.where(inside, i * mask_w + j, torch.zeros_like(i))
    flat = x.reshape(n, channels, height * width)
    out = torch.gather(flat, 1, index.unsqueeze(0).expand(n, -1, -1)) * inside.to(x.dtype)
    if mode == "distribute":
        out = out.transpose(1, 2)
    return out.reshape(n, height * width, height, width)


@contextlib.contextmanager
def exportable_psa_mask():
    """PSANet calls gather_psa_mask while the graph is traced."""
    from segzoo.models import psanet
    original = psanet.psa_mask
    psanet.psa_mask = gather_psa_mask
    try:
        yield
    finally:
        psanet.psa_mask = original


class Deployable(nn.Module):
    """(N, 3, H, W) float RGB 0..255 -> (N, K, H, W) logits: normalisation + the segmentor's "out"."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(image))["out"]


def example_inputs(height: int, width: int) -> list:
    """The tracing size and a second size (other aspect) to prove H and W are really dynamic."""
    generator = torch.Generator().manual_seed(0)
    second = (height + height // 4 + 8, max(8, width - width // 4))
    return [torch.rand(1, 3, h, w, generator=generator) * 255 for h, w in ((height, width), second)]


def export_onnx(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise UserError("--format onnx needs onnx and onnxruntime: pip install onnx onnxruntime "
                        "(or pip install -e \".[onnx]\")") from None
    torch.onnx.export(module, (example,), str(out), dynamo=False, opset_version=OPSET, input_names=["image"],
                      output_names=["logits"], dynamic_axes=DYNAMIC_AXES)


def onnx_runner(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("verifying --format onnx needs onnxruntime: pip install onnxruntime") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])


class _NoBackward:
    """A stand-in autograd context: inference needs nothing saved."""

    def save_for_backward(self, *tensors) -> None:
        pass

    def mark_non_differentiable(self, *tensors) -> None:
        pass


@contextlib.contextmanager
def forward_only_ops():
    """The portable attention ops (autograd.Functions with an explicit backward) run their
    forward as plain tensor ops while tracing: TorchScript cannot save a Python Function call."""
    from segzoo.ops import criss_cross, psamask
    functions = [obj for m in (criss_cross, psamask) for obj in vars(m).values()
                 if isinstance(obj, type) and issubclass(obj, torch.autograd.Function)]
    saved = {f: f.__dict__["apply"] if "apply" in f.__dict__ else None for f in functions}
    try:
        for f in functions:
            f.apply = staticmethod(lambda *inputs, _f=f: _f.forward(_NoBackward(), *inputs))
        yield
    finally:
        for f, original in saved.items():
            if original is None:
                del f.apply
            else:
                f.apply = original


def export_torchscript(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    with forward_only_ops():
        traced = torch.jit.trace(module, (example,), check_trace=False)
    torch.jit.save(traced, str(out))


def torchscript_runner(path: Path):
    loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda x: loaded(x)


@torch.inference_mode()
def max_abs_errors(module: nn.Module, runner, inputs: list) -> list:
    """[(shape, max |exported - PyTorch|)] per input."""
    return [(tuple(x.shape), (runner(x).float() - module(x).float()).abs().max().item()) for x in inputs]


def build_parser() -> OneLineParser:
    return OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv=None) -> int:
    p = build_parser()
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="file to write (e.g. model.onnx, model.pt)")
    p.add_argument("--height", type=positive_int, default=None, help="example height (default: training crop)")
    p.add_argument("--width", type=positive_int, default=None, help="example width (default: training crop)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest max abs logit error accepted")
    try:
        args = p.parse_args(argv)
        out = Path(args.out)
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: folder {out.parent} does not exist")
        model, run_args, _ = load_model(args.ckpt, Device("cpu"), ops_impl="portable")
        crop = run_args.crop_size if isinstance(run_args.crop_size, (list, tuple)) else (run_args.crop_size,) * 2
        height, width = args.height or int(crop[0]), args.width or int(crop[1])
        module = Deployable(make_size_generic(model)).eval()
        inputs = example_inputs(height, width)
        # Written beside --out and moved there only once verified: a failed export overwrites nothing.
        fd, temp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                # Tracer warnings about shapes read as Python values (and torch.jit's deprecation
                # notice): the check at a second, different size below is what proves the graph
                # generalises, so they are noise for the user.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                with exportable_psa_mask():
                    if args.format == "onnx":
                        export_onnx(module, inputs[0], Path(temp))
                        runner = onnx_runner(Path(temp))
                    else:
                        export_torchscript(module, inputs[0], Path(temp))
                        runner = torchscript_runner(Path(temp))
            errors = max_abs_errors(module, runner, inputs)
            worst = max(error for _, error in errors)
            if worst <= args.tolerance:  # NaN fails too
                os.replace(temp, out)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
    except UserError as err:
        exit_with(err)
    engine = "ONNX Runtime (CPU)" if args.format == "onnx" else "TorchScript"
    for shape, error in errors:
        print(f"{engine} vs PyTorch at {shape[2]}x{shape[3]}: max abs error {error:.3g}")
    if not worst <= args.tolerance:
        print(f"error: the exported model disagrees with PyTorch (max abs error {worst:.3g} > --tolerance "
              f"{args.tolerance}); {out} not written", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.format}{f', opset {OPSET}' if args.format == 'onnx' else ''}, "
          f"{run_args.model_name} {run_args.backbone}, {run_args.num_classes} classes, dynamic N, H, W)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
