"""Predict with a trained checkpoint and save colour-coded masks or a comparison sheet.

    # A sheet of validation images: image | ground truth | prediction, one row each
    python tools/predict.py --ckpt experiments/demo/best_pspnet_demo.pth --dataset_path data/demo \
        --num_images 4 --out images/demo_predictions.png
    # Masks for your own images (palette PNGs, one per input, into --out_dir)
    python tools/predict.py --ckpt best_pspnet_voc.pth --images a.jpg b.jpg --out_dir predictions/

The model is rebuilt from the arguments stored in the checkpoint; images are evaluated whole.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from segzoo.datasets.classes import IGNORE_INDEX, VOC_PALETTE  # noqa: E402
from segzoo.datasets.image_io import read_image, write_palette_png  # noqa: E402
from segzoo.datasets.transforms import normalize  # noqa: E402
from segzoo.datasets.voc import VOCSegmentation  # noqa: E402
from segzoo.runtime.checkpoint import load_checkpoint, load_model_weights  # noqa: E402
from segzoo.engine.config import OneLineParser  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402
from segzoo.engine.setup import model_from_args  # noqa: E402


def load_model(ckpt_path: str, device: Device) -> tuple:
    """(model in eval mode on the device, training args) from one of our checkpoints."""
    ckpt = load_checkpoint(ckpt_path)
    if "args" not in ckpt:
        raise UserError(f"--ckpt {ckpt_path} has no run arguments (not written by train.py); "
                        f"use train.py --test_only True with the model flags instead")
    run_args = argparse.Namespace(**dict(ckpt["args"], num_classes=ckpt["num_classes"]))
    model = model_from_args(run_args, run_args.num_classes)
    load_model_weights(model, ckpt["model"], ckpt_path)
    return model.to(device.torch_device).eval(), run_args


@torch.inference_mode()
def predict(model, image_rgb: np.ndarray, device: Device) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class ids."""
    x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))[None].to(device.torch_device)
    logits = model(normalize(x))["out"]
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def colorize(label: np.ndarray) -> np.ndarray:
    """Class ids (255 = ignore) -> RGB with the VOC palette (ignore drawn in VOC's border colour)."""
    return VOC_PALETTE[label]


def save_sheet(rows: list, class_names: list, out: Path, title: str) -> None:
    """rows of (name, image, ground truth or None, prediction) -> one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 2.6 * len(rows) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (name, image, truth, pred) in enumerate(rows):
        panels = [(image, name), (None if truth is None else colorize(truth), "ground truth"), (colorize(pred), "prediction")]
        for c, (picture, label) in enumerate(panels):
            ax = axes[r][c]
            ax.axis("off")
            if picture is not None:
                ax.imshow(picture)
                ax.set_title(label, fontsize=9)
    present = sorted({int(v) for _, _, t, p in rows for v in np.unique(p if t is None else np.concatenate([t.ravel(), p.ravel()]))
                      if v != IGNORE_INDEX})
    handles = [Patch(color=VOC_PALETTE[i] / 255.0, label=class_names[i]) for i in present if i < len(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--device", default="cpu", help="cpu, cuda or sdaa")
    p.add_argument("--dataset_path", help="VOC-format dataset: draw a sheet of --split images")
    p.add_argument("--split", default="val")
    p.add_argument("--num_images", type=int, default=4)
    p.add_argument("--out", default="predictions.png", help="the sheet's PNG (with --dataset_path)")
    p.add_argument("--images", nargs="*", default=[], help="image files to segment")
    p.add_argument("--out_dir", default="predictions", help="where --images masks go (palette PNGs)")
    try:
        args = p.parse_args(argv)
        device = Device(args.device)
        model, run_args = load_model(args.ckpt, device)
        if args.dataset_path:
            data = VOCSegmentation(args.dataset_path, args.split, run_args.num_classes)
            rows = []
            for i in range(min(args.num_images, len(data))):
                image, truth = data.load(i)
                rows.append((data.ids[i], image, truth, predict(model, image, device)))
            title = f"{run_args.model_name} ({run_args.backbone}) on {Path(args.dataset_path).name}/{args.split}"
            save_sheet(rows, data.class_names, Path(args.out), title)
            print(f"wrote {args.out}")
        for image_path in args.images:
            out = Path(args.out_dir) / (Path(image_path).stem + ".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            write_palette_png(out, predict(model, read_image(image_path), device), VOC_PALETTE)
            print(f"wrote {out}")
        if not args.dataset_path and not args.images:
            raise UserError("nothing to predict: pass --dataset_path DIR and/or --images FILE ...")
    except UserError as err:
        exit_with(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
