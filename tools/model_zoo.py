"""Model-zoo table: decoder x backbone with parameters, GFLOPs and output stride, as Markdown.

    python tools/model_zoo.py                                # the main pairs, 512x1024, 19 classes
    python tools/model_zoo.py --decoders pspnet,glore --backbones resnet50@8,hrnet_w18@32 --out zoo.md

Parameters: the inference model (backbone + decode head, no auxiliary head). GFLOPs: one
forward pass of one image (default 512x1024, 19 classes) in eval mode, counted by PyTorch's
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs). The models are
built and run under ``FakeTensorMode``: shapes only, no memory and no arithmetic, so the whole
table takes seconds; PSANet and CCNet use their portable attention ops (``ops_impl portable``)
because the counter only sees aten ops. Output stride: input size / size of the feature the
decode head reads (``backbone.feature_info[main_index].reduction``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from segzoo.models import MODELS, build_model  # noqa: E402
from segzoo.runtime.atomic import atomic_write  # noqa: E402
from segzoo.runtime.config_types import crop_size  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402

DECODERS = ("pspnet", "deeplabv3", "psanet", "ccnet", "encnet", "glore", "ginet")
BACKBONES = ("resnet50@8", "resnet101@8", "resnext50_32x4d@8", "hrnet_w18@32", "efficientnet_b0@8")
PORTABLE_OPS = {"psanet", "ccnet"}  # heads declaring ops_impl
# One fake mode for the whole run: the attention ops cache index tensors per shape, and a
# tensor of one fake mode cannot meet a tensor of another.
FAKE = FakeTensorMode()


def parse_backbone(text: str) -> tuple[str, int]:
    """"resnet50@8" -> ("resnet50", 8)."""
    name, _, stride = text.partition("@")
    if not stride.isdigit():
        raise UserError(f"--backbones {text!r}: write NAME@OUTPUT_STRIDE, e.g. resnet50@8 or hrnet_w18@32")
    return name, int(stride)


def measure(decoder: str, backbone: str, output_stride: int, size: tuple[int, int], num_classes: int) -> dict:
    """{"params_m", "gflops", "output_stride"} of one pair, from shapes only (FakeTensorMode)."""
    options = {"ops_impl": "portable"} if decoder in PORTABLE_OPS else {}
    with FAKE:
        model = build_model(decoder, num_classes, backbone=backbone, aux=False, output_stride=output_stride,
                            crop_size=size, **options).eval()
        image = torch.empty(1, 3, *size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    info = model.backbone.feature_info[model.backbone.main_index]
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": counter.get_total_flops() / 1e9, "output_stride": info.reduction}


def table(rows: list[tuple[str, str, dict]], size: tuple[int, int], num_classes: int) -> str:
    lines = [f"| decoder | backbone | params (M) | GFLOPs ({size[0]}x{size[1]}, {num_classes} classes) "
             "| output stride |", "|---|---|---:|---:|---:|"]
    lines += [f"| {d} | {b} | {m['params_m']:.1f} | {m['gflops']:.1f} | {m['output_stride']} |" for d, b, m in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated decoders")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated NAME@OUTPUT_STRIDE")
    p.add_argument("--size", type=crop_size, default=(512, 1024), help="input HEIGHT,WIDTH (default 512,1024)")
    p.add_argument("--num_classes", type=int, default=19, help="classes (Cityscapes: 19)")
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    try:
        decoders = [d for d in args.decoders.split(",") if d]
        for d in decoders:
            MODELS.get(d)  # unknown names: one line listing the known ones
        backbones = [parse_backbone(b) for b in args.backbones.split(",") if b]
        size = tuple(args.size) if isinstance(args.size, (tuple, list)) else (args.size, args.size)
        rows = []
        for name, stride in backbones:
            for decoder in decoders:
                label = f"{name} OS{stride}" if not name.startswith("hrnet") else name
                rows.append((decoder, label, measure(decoder, name, stride, size, args.num_classes)))
                print(f"measured {decoder} on {label}", file=sys.stderr, flush=True)
    except UserError as err:
        exit_with(err)
    text = table(rows, size, args.num_classes)
    print(text, end="")
    if args.out:
        atomic_write(Path(args.out), lambda f: f.write(text.encode()))


if __name__ == "__main__":
    main()
