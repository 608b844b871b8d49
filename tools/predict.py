"""Segment your own images, a folder of them or a video with a trained checkpoint.

    # A folder (or one image): OUT/masks/NAME.png (palette PNGs of the class ids) + OUT/overlays/NAME.jpg
    python tools/predict.py --ckpt experiments/demo/best_pspnet_demo.pth --input photos/ --out predictions/
    # A video, frame by frame: OUT/masks/CLIP_000000.png ... + OUT/CLIP_overlay.avi
    python tools/predict.py --ckpt best_pspnet_voc.pth --input clip.mp4 --out predictions/ --device cuda
    # Large images in windows of the training crop (2/3 overlap by default)
    python tools/predict.py --ckpt best.pth --input big/ --out pred/ --eval_mode slide --eval_crop 512 --eval_stride 341
    # A sheet of validation images: image | ground truth | prediction, one row each
    python tools/predict.py --ckpt experiments/demo/best_pspnet_demo.pth --dataset_path data/demo \\
        --num_images 4 --out images/demo_predictions.png

The model is rebuilt from the arguments stored in the checkpoint. Masks use the checkpoint's
palette when it carries one, else VOC's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from segzoo.datasets.classes import IGNORE_INDEX, VOC_PALETTE  # noqa: E402
from segzoo.datasets.image_io import read_image  # noqa: E402
from segzoo.engine.config import OneLineParser, train_parser  # noqa: E402
from segzoo.engine.outputs import Progress, colorize, overlay, predict_mask, save_prediction  # noqa: E402
from segzoo.engine.setup import model_from_args  # noqa: E402
from segzoo.models import MODELS  # noqa: E402
from segzoo.models.backbones import BACKBONES  # noqa: E402
from segzoo.runtime.checkpoint import load_checkpoint, load_model_weights  # noqa: E402
from segzoo.runtime.config_types import crop_size, positive_int  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


# ------------------------------------------------------------------------------------------
# the model of a checkpoint (shared with tools/export.py)
# ------------------------------------------------------------------------------------------
def checkpoint_run_args(ckpt: dict, ckpt_path: str) -> argparse.Namespace:
    """The training flags stored in one of our checkpoints, checked against the models and
    backbones this version knows."""
    if "args" not in ckpt:
        raise UserError(f"--ckpt {ckpt_path} has no run arguments (not written by train.py); "
                        f"use train.py --test_only True with the model flags instead")
    # Flags added after the checkpoint was written take their defaults.
    defaults = {a.dest: a.default for a in train_parser()._actions if a.dest != "help"}
    run_args = argparse.Namespace(**{**defaults, **ckpt["args"], "num_classes": ckpt["num_classes"]})
    for registry, name in ((MODELS, getattr(run_args, "model_name", None)), (BACKBONES, getattr(run_args, "backbone", None))):
        if name not in registry:
            raise UserError(f"--ckpt {ckpt_path}: its {registry.kind} {name!r} is not known to this version "
                            f"(known: {', '.join(registry.names())})")
    return run_args


def load_model(ckpt_path: str, device: Device, ops_impl: str | None = None) -> tuple:
    """(model in eval mode on the device, training args, checkpoint dict) from one of our checkpoints.
    ops_impl: force the attention ops' implementation (export uses "portable")."""
    ckpt = load_checkpoint(ckpt_path)
    run_args = checkpoint_run_args(ckpt, ckpt_path)
    if ops_impl is not None:
        run_args.ops_impl = ops_impl
    model = model_from_args(run_args, run_args.num_classes)
    load_model_weights(model, ckpt["model"], ckpt_path)
    return model.to(device.torch_device).eval(), run_args, ckpt


def checkpoint_palette(ckpt: dict) -> np.ndarray:
    """The palette the checkpoint carries (its dataset's), else VOC's."""
    palette = ckpt.get("palette")
    return VOC_PALETTE if palette is None else np.asarray(palette, dtype=np.uint8)


# ------------------------------------------------------------------------------------------
# inputs: an image, a folder of images, or a video
# ------------------------------------------------------------------------------------------
def folder_images(folder: Path) -> list:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"--input {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
    return images


def open_video(path: Path):
    """cv2.VideoCapture of a readable video, or None."""
    import cv2
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        return None
    ok, _ = capture.read()
    if not ok:
        capture.release()
        return None
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture


def predict_images(model, paths: list, out: Path, device: Device, palette, infer: dict) -> None:
    progress = Progress(len(paths), "images")
    for path in paths:
        image = read_image(path)
        save_prediction(out, path.stem, image, predict_mask(model, image, device.torch_device, **infer), palette)
        progress.step()
    progress.finish(out)


def predict_video(model, capture, name: str, out: Path, device: Device, palette, infer: dict) -> None:
    """Masks per frame (OUT/masks/NAME_000000.png) and the overlays as OUT/NAME_overlay.avi (MJPG)."""
    import cv2
    from segzoo.datasets.image_io import write_palette_png
    (out / "masks").mkdir(parents=True, exist_ok=True)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer, video_path = None, out / f"{name}_overlay.avi"
    progress = Progress(total, "frames")
    try:
        while True:
            ok, frame_bgr = capture.read()
            if not ok:
                break
            image = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
            mask = predict_mask(model, image, device.torch_device, **infer)
            write_palette_png(out / "masks" / f"{name}_{progress.done:06d}.png", mask, palette)
            if writer is None:
                writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                         (image.shape[1], image.shape[0]))
            writer.write(cv2.cvtColor(overlay(image, mask, palette), cv2.COLOR_RGB2BGR))
            progress.step()
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    progress.finish(out)


# ------------------------------------------------------------------------------------------
# the comparison sheet of a dataset split
# ------------------------------------------------------------------------------------------
def save_sheet(rows: list, class_names: list, palette, out: Path, title: str) -> None:
    """rows of (name, image, ground truth or None, prediction) -> one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 2.6 * len(rows) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (name, image, truth, pred) in enumerate(rows):
        panels = [(image, name), (None if truth is None else colorize(truth, palette), "ground truth"),
                  (colorize(pred, palette), "prediction")]
        for c, (picture, label) in enumerate(panels):
            ax = axes[r][c]
            ax.axis("off")
            if picture is not None:
                ax.imshow(picture)
                ax.set_title(label, fontsize=9)
    present = sorted({int(v) for _, _, t, p in rows for v in np.unique(p if t is None else np.concatenate([t.ravel(), p.ravel()]))
                      if v != IGNORE_INDEX})
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in present if i < len(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def predict_sheet(model, run_args, args, device: Device) -> None:
    from segzoo.datasets.voc import VOCSegmentation
    data = VOCSegmentation(args.dataset_path, args.split, run_args.num_classes)
    rows = []
    for i in range(min(args.num_images, len(data))):
        image, truth = data.load(i)
        rows.append((data.ids[i], image, truth, predict_mask(model, image, device.torch_device)))
    title = f"{run_args.model_name} ({run_args.backbone}) on {Path(args.dataset_path).name}/{args.split}"
    save_sheet(rows, data.class_names, data.palette, Path(args.out), title)
    print(f"wrote {args.out}")


def _pair(value) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


def inference_settings(args, run_args) -> dict:
    if args.eval_mode == "whole":
        return {"mode": "whole"}
    crop = _pair(args.eval_crop or run_args.crop_size)
    stride = _pair(args.eval_stride) if args.eval_stride else tuple(max(1, 2 * c // 3) for c in crop)
    return {"mode": "slide", "crop": crop, "stride": stride}


def build_parser() -> OneLineParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--input", help="an image, a folder of images or a video file (OpenCV-readable)")
    p.add_argument("--out", default=None,
                   help="output folder for --input (default: predictions); the sheet PNG with --dataset_path")
    p.add_argument("--device", default="cpu", help="cpu, cuda or sdaa")
    p.add_argument("--eval_mode", default="whole", choices=["whole", "slide"],
                   help="whole images, or sliding windows of --eval_crop every --eval_stride pixels")
    p.add_argument("--eval_crop", type=crop_size, default=None, help="slide window: SIZE or H,W (default: training crop)")
    p.add_argument("--eval_stride", type=crop_size, default=None, help="slide stride: SIZE or H,W (default: 2/3 of the window)")
    p.add_argument("--dataset_path", help="VOC-format dataset: draw a sheet of --split images into --out")
    p.add_argument("--split", default="val")
    p.add_argument("--num_images", type=positive_int, default=4)
    return p


def main(argv=None) -> int:
    p = build_parser()
    try:
        args = p.parse_args(argv)
        if not args.input and not args.dataset_path:
            raise UserError("nothing to predict: pass --input IMAGE|FOLDER|VIDEO (or --dataset_path DIR for a sheet)")
        source = Path(args.input) if args.input else None
        capture = None
        if source is not None and not source.exists():
            raise UserError(f"--input {source}: no such file or folder")
        if source is not None and source.is_file() and source.suffix.lower() not in IMAGE_SUFFIXES:
            capture = open_video(source)
            if capture is None:
                raise UserError(f"--input {source} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                                f"a folder of images nor a video OpenCV can read")
        device = Device(args.device)
        model, run_args, ckpt = load_model(args.ckpt, device)
        if args.dataset_path:
            if args.out is None:
                args.out = "predictions.png"
            predict_sheet(model, run_args, args, device)
        if source is not None:
            out = Path(args.out or "predictions") if not args.dataset_path else Path("predictions")
            infer, palette = inference_settings(args, run_args), checkpoint_palette(ckpt)
            if capture is not None:
                predict_video(model, capture, source.stem, out, device, palette, infer)
            else:
                predict_images(model, folder_images(source) if source.is_dir() else [source], out, device,
                               palette, infer)
    except UserError as err:
        exit_with(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
