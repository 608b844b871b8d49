"""What a run writes besides checkpoints and logs: dashboards and saved predictions (flags and logic).

Flags: ``--tensorboard True`` (alias ``--use_vdl``, the seeds' PaddleSeg VisualDL flag; a bare
``--use_vdl`` means True) writes `work_dir/tb/`; ``--save_predictions DIR`` with ``--test_only True``
writes the validation images' palette masks and colour overlays to DIR.

The prediction helpers here (whole or sliding-window inference of one image, palette masks,
overlays) are shared with tools/predict.py, so a run and the tool write the same files.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segzoo.datasets.classes import IGNORE_INDEX
from segzoo.datasets.image_io import write_palette_png
from segzoo.datasets.transforms import normalize
from segzoo.runtime.config_types import positive_int, str2bool
from segzoo.runtime.errors import UserError

OVERLAY_ALPHA = 0.5


class _AliasTensorboard(argparse.Action):
    """--use_vdl [BOOL]: kept under its own name (a YAML key `use_vdl` stays known) and copied
    into --tensorboard, which is what the run reads."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            value = True if values is None else str2bool(values)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, value)
        namespace.tensorboard = value


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Flags of the outputs group: dashboards and saved predictions."""
    g = p.add_argument_group("outputs")
    g.add_argument("--tensorboard", type=str2bool, nargs="?", const=True, default=False,
                   help="write loss, lr, img/s, per-class IoU, mIoU and prediction overlays to WORK_DIR/tb/ "
                        "(needs `pip install tensorboard`; view with `tensorboard --logdir WORK_DIR/tb`)")
    g.add_argument("--use_vdl", nargs="?", default=False, action=_AliasTensorboard, metavar="BOOL",
                   help="alias of --tensorboard (the seeds' PaddleSeg VisualDL flag)")
    g.add_argument("--tb_images", type=positive_int, default=4,
                   help="validation images drawn as prediction overlays in TensorBoard per evaluation")
    g.add_argument("--save_predictions", default=None, metavar="DIR",
                   help="with --test_only True: write each validation image's palette mask (DIR/masks/*.png) "
                        "and colour overlay (DIR/overlays/*.jpg)")


# ------------------------------------------------------------------------------------------
# one image -> class ids -> pictures
# ------------------------------------------------------------------------------------------
@torch.inference_mode()
def predict_mask(model, image_rgb: np.ndarray, torch_device, mode: str = "whole", crop=None, stride=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 class ids, with the model in eval mode.

    mode "slide": windows of crop=(h, w) every stride=(h, w) pixels, logits averaged
    (segzoo.engine.evaluate.infer_logits); "whole": the image in one pass.
    """
    from segzoo.engine.evaluate import infer_logits  # the evaluation's own inference, one definition
    x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1)))[None].to(torch_device)
    logits = infer_logits(model, normalize(x), mode=mode, crop=crop, stride=stride)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids past the palette's end (255 = ignore in a
    short palette) drawn black."""
    palette = np.asarray(palette, dtype=np.uint8)
    full = np.zeros((256, 3), dtype=np.uint8)
    full[:len(palette)] = palette[:256]
    return full[label]


def overlay(image_rgb: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with the class colours blended in (alpha of colour); ignore pixels untouched."""
    colours = colorize(label, palette).astype(np.float32)
    blended = (1 - alpha) * image_rgb.astype(np.float32) + alpha * colours
    keep = (label == IGNORE_INDEX)[..., None]
    return np.where(keep, image_rgb, blended.round().clip(0, 255)).astype(np.uint8)


def write_rgb(path: Path, image_rgb: np.ndarray) -> None:
    """An RGB array as an image file (format from the suffix); one-line error if it cannot be written."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise UserError(f"cannot write {path} (check the folder is writable and the suffix is an image format)")


def save_prediction(out_dir: Path, name: str, image_rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> None:
    """out_dir/masks/NAME.png (palette PNG of the class ids) and out_dir/overlays/NAME.jpg."""
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    write_palette_png(out_dir / "masks" / f"{name}.png", mask, palette)
    write_rgb(out_dir / "overlays" / f"{name}.jpg", overlay(image_rgb, mask, palette))


def dataset_name(dataset, index: int) -> str:
    """A file-name stem for sample `index`: its image's stem."""
    return Path(dataset.image_path(index)).stem


class Progress:
    """One line rewritten in place: done/total, rate."""

    def __init__(self, total: int | None, what: str):
        self.total, self.what, self.start, self.done = total, what, time.perf_counter(), 0

    def step(self) -> None:
        self.done += 1
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        print(f"\r{self.what}: {self.done}{of} ({rate:.1f}/s)", end="", flush=True)

    def finish(self, where: Path) -> None:
        print(f"\n{self.done} {self.what} -> {where}", flush=True)


def save_dataset_predictions(model, dataset, torch_device, out_dir: Path, mode: str = "whole", crop=None,
                             stride=None) -> int:
    """Masks and overlays of every image of a SegmentationDataset (whole images, untransformed),
    with the dataset's palette; returns the number written."""
    model.eval()
    progress = Progress(len(dataset), "predictions")
    for i in range(len(dataset)):
        image, _ = dataset.load(i)
        save_prediction(out_dir, dataset_name(dataset, i), image,
                        predict_mask(model, image, torch_device, mode, crop, stride), dataset.palette)
        progress.step()
    progress.finish(out_dir)
    return len(dataset)


def dataset_overlays(model, dataset, torch_device, count: int) -> list:
    """[(name, (H, W, 3) uint8 overlay)] of the first `count` images, for a dashboard."""
    model.eval()
    pictures = []
    for i in range(min(count, len(dataset))):
        image, _ = dataset.load(i)
        pictures.append((dataset_name(dataset, i), overlay(image, predict_mask(model, image, torch_device),
                                                           dataset.palette)))
    return pictures


# ------------------------------------------------------------------------------------------
# the run's side: dashboard and saved predictions (wired in train.py)
# ------------------------------------------------------------------------------------------
class RunOutputs:
    """Created first thing in a run, so a missing `tensorboard` stops it before anything is
    written; the dashboard lives on rank 0 only (other ranks get a disabled writer)."""

    def __init__(self, args, work_dir: Path, info):
        from segzoo.runtime.tensorboard import TensorBoardWriter
        if args.save_predictions and not args.test_only:
            raise UserError(f"--save_predictions {args.save_predictions} writes the predictions of an evaluation: "
                            f"add --test_only True --ckpt FILE (or use tools/predict.py)")
        self.args, self.info = args, info
        flag = "--use_vdl" if getattr(args, "use_vdl", False) else "--tensorboard"
        self.writer = TensorBoardWriter(Path(work_dir) / "tb", enabled=bool(args.tensorboard) and info.is_main,
                                        flag=flag)

    def attach(self, logger, val_set, device) -> "DashboardLogger":
        """The run logger, its scalars copied to the dashboard, with `log_evaluation` added."""
        return DashboardLogger(logger, self.writer, val_set, device.torch_device, self.args.tb_images)

    def save_predictions(self, model, val_set, device) -> None:
        """--save_predictions DIR: masks and overlays of every validation image (rank 0, bare model)."""
        if not self.args.save_predictions or not self.info.is_main:
            return
        from segzoo.runtime.checkpoint import unwrap
        save_dataset_predictions(unwrap(model), val_set, device.torch_device, Path(self.args.save_predictions))


class DashboardLogger:
    """A run logger whose records also reach TensorBoard, plus per-class IoU and overlays per evaluation."""

    def __init__(self, logger, writer, val_set, torch_device, images: int):
        self._tee = writer.tee(logger)
        self.writer, self.val_set, self.torch_device, self.images = writer, val_set, torch_device, images

    def log_evaluation(self, global_step: int, results: dict, model) -> None:
        """Per-class IoU, mIoU and `images` prediction overlays. The overlays use the bare model on
        rank 0 alone (a DDP forward on one rank would wait for the others)."""
        if not self.writer.enabled:
            return
        from segzoo.runtime.checkpoint import unwrap
        self.writer.evaluation(global_step, results, self.val_set.class_names)
        bare = unwrap(model)
        was_training = bare.training
        self.writer.images(global_step, dataset_overlays(bare, self.val_set, self.torch_device, self.images))
        bare.train(was_training)
        self.writer.flush()

    def __getattr__(self, name):  # log, flush, metadata, ... of the tee
        return getattr(self._tee, name)
