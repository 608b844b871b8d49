#!/usr/bin/env python
"""Cost of the evaluation modes per image: whole-image inference against slide + multi-scale +
flip test-time augmentation (segzoo.engine.evaluate.infer_logits, as train.py evaluates).

    python tools/bench_eval.py --device cpu                      # PSPNet50 OS8, 1 image of 1024x2048,
                                                                 # slide 512x1024 stride 2/3, 6 scales + flip
    python tools/bench_eval.py --device cuda --repeats 3 --eval_crop 769,769

The --eval_* flags mean what they mean for train.py. A random model (the cost does not depend on the weights) and a random normalised image. Each
configuration runs --repeats times after one warm-up pass (--warmup 0 skips it: on a slow CPU the
first pass is the measurement); the best time is printed per scale and summed, with the number of forward passes
(windows x views) it took, and the ratio of the augmented time to the whole-image time.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from segzoo.engine.config import OneLineParser  # noqa: E402
from segzoo.engine.evaluate import (EvalSettings, eval_settings, infer_logits, positive_float_list,  # noqa: E402
                                    scaled_size, window_starts)
from segzoo.models import build_model  # noqa: E402
from segzoo.runtime.config_types import crop_size, non_negative_int, positive_int, str2bool  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402


def forward_passes(height: int, width: int, s: EvalSettings) -> int:
    """Model calls one image costs under the settings (windows per scale, times 2 with flip)."""
    total = 0
    for scale in s.scales:
        h, w = scaled_size(height, width, scale)
        if s.mode == "slide":
            ch, cw = min(s.crop[0], h), min(s.crop[1], w)
            total += len(window_starts(h, ch, s.stride[0])) * len(window_starts(w, cw, s.stride[1]))
        else:
            total += 1
    return total * (2 if s.flip else 1)


def time_settings(model, image: torch.Tensor, s: EvalSettings, device: Device, warmup: int, repeats: int) -> float:
    """Best seconds of infer_logits + argmax over `repeats` runs (after `warmup` untimed ones)."""
    def once():
        infer_logits(model, image, s.mode, s.crop, s.stride, s.scales, s.flip).argmax(1)
        device.synchronize()
    for _ in range(warmup):
        once()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or sdaa")
    p.add_argument("--model_name", default="pspnet", help="decode head (--model_name of train.py)")
    p.add_argument("--backbone", default="resnet50", help="backbone (--backbone of train.py)")
    p.add_argument("--output_stride", type=positive_int, default=8, help="backbone output stride (8, 16 or 32)")
    p.add_argument("--num_classes", type=positive_int, default=19, help="Cityscapes' 19")
    p.add_argument("--size", type=crop_size, default=[1024, 2048], help="image HEIGHT,WIDTH")
    p.add_argument("--eval_crop", type=crop_size, default=[512, 1024], help="slide window HEIGHT,WIDTH")
    p.add_argument("--eval_stride", type=crop_size, default=None, help="slide stride (default 2/3 of the crop)")
    p.add_argument("--eval_scales", type=positive_float_list, default=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                   help="test-time scales")
    p.add_argument("--eval_flip", type=str2bool, default=True, help="test-time horizontal flip as well")
    p.add_argument("--warmup", type=non_negative_int, default=0, help="untimed passes before each measurement")
    p.add_argument("--repeats", type=positive_int, default=1, help="timed passes; the best is printed")
    try:
        args = p.parse_args(argv)
        device = Device(args.device)
        tta = eval_settings(argparse.Namespace(eval_mode="slide", eval_crop=args.eval_crop, eval_stride=args.eval_stride,
                                               eval_scales=args.eval_scales, eval_flip=args.eval_flip, crop_val=False))
    except UserError as err:
        exit_with(err)
    height, width = (args.size, args.size) if isinstance(args.size, int) else args.size
    torch.manual_seed(0)
    model = build_model(args.model_name, args.num_classes, backbone=args.backbone,
                        output_stride=args.output_stride).to(device.torch_device).eval()
    image = torch.randn(1, 3, height, width, device=device.torch_device)
    print(f"{args.model_name} {args.backbone} OS{args.output_stride}, {args.num_classes} classes, 1 image "
          f"{height}x{width}, on {device.description} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"best of {args.repeats} after {args.warmup} warm-up", flush=True)
    whole = time_settings(model, image, EvalSettings(), device, args.warmup, args.repeats)
    print(f"whole: {whole:.1f} s/image, 1 forward pass", flush=True)
    # One scale at a time (each with its flip), so a long run shows where the time goes as it
    # goes; the sum is the cost of the one call with every scale up to the final accumulation.
    total = 0.0
    for scale in tta.scales:
        one = replace(tta, scales=(scale,))
        seconds = time_settings(model, image, one, device, args.warmup, args.repeats)
        total += seconds
        print(f"  scale {scale:g}: {seconds:.1f} s, {forward_passes(height, width, one)} forward passes", flush=True)
    print(f"{tta.describe()}: {total:.1f} s/image, {forward_passes(height, width, tta)} forward passes", flush=True)
    print(f"ratio {total / whole:.1f}x whole-image evaluation", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
