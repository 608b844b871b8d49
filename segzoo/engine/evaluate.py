"""Evaluation of a model over a validation set (flags and logic).

Inference modes, as PaddleSeg and mmsegmentation define them:

- ``whole``: the model sees each image at once.
- ``slide``: overlapping ``eval_crop`` windows, ``eval_stride`` apart, cover the image; the last
  window of a row or column is aligned to the border (so no window sticks out). The logits of
  the windows are summed and divided by the number of windows covering each pixel. A window is
  never larger than the image: an image smaller than the crop along a side is evaluated whole
  along that side (no padding: zero padding is seen by global pooling and changes the output).
- test-time augmentation, combinable with either mode: ``eval_scales`` rescale the image
  (bilinear, align_corners=False), ``eval_flip`` adds the horizontally flipped image. Each view's
  logits are resized back to the image size and turned into softmax probabilities; the
  probabilities are averaged (PaddleSeg's ``aug_inference`` and mmseg's ``aug_test`` do the same).
  The result is returned as log-probabilities: their argmax is the prediction and their cross
  entropy is the negative log-likelihood of the averaged distribution. With one view (scale 1.0,
  no flip) the model's logits are returned unchanged.

Memory does not grow with the number of views: they are accumulated into one (N, K, H, W)
float32 buffer.

Batching never changes an image's prediction: the validation loader groups a batch's images by
size (segzoo.datasets.collate.size_group_collate), so differently sized images are never padded
into one tensor. Under DDP the bare model is evaluated (no collective per forward), and every
rank, with or without images, joins the same final reductions.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from segzoo.datasets.classes import IGNORE_INDEX
from segzoo.engine.step import to_device_batch
from segzoo.runtime import distributed as dist
from segzoo.runtime.checkpoint import unwrap
from segzoo.runtime.config_types import crop_size, str2bool
from segzoo.runtime.errors import OptionError
from segzoo.runtime.losses import SegmentationCriterion
from segzoo.runtime.meters import format_eta
from segzoo.runtime.metrics import ConfusionMatrix, format_table, results_to_json, save_json
from segzoo.runtime.run_logger import Verbosity

EVAL_MODES = ("whole", "slide")
PROGRESS_SECONDS = 10.0  # a long evaluation prints a progress line at most this often (rank 0)


def positive_float_list(text) -> tuple:
    """"0.5,1.0,1.5" (or a YAML list) -> (0.5, 1.0, 1.5); every entry a finite number > 0."""
    parts = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    try:
        values = tuple(float(p) for p in parts if str(p) != "")
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers > 0 separated by commas, got {text!r}")
    return values


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """Flags of the evaluation group (train-time validation and --test_only)."""
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval_mode", default="whole", choices=EVAL_MODES,
                   help="whole: each image at once; slide: overlapping --eval_crop windows (logits averaged)")
    g.add_argument("--eval_crop", type=crop_size, default=None,
                   help="--eval_mode slide window: SIZE or HEIGHT,WIDTH (images smaller than it are evaluated whole)")
    g.add_argument("--eval_stride", type=crop_size, default=None,
                   help="--eval_mode slide step between windows: SIZE or HEIGHT,WIDTH, at most the crop "
                        "(default: 2/3 of --eval_crop, rounded up)")
    g.add_argument("--eval_scales", type=positive_float_list, default=(1.0,),
                   help="test-time scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75 (softmax probabilities averaged)")
    g.add_argument("--eval_flip", type=str2bool, default=False, help="test-time horizontal flip as well")


def _pair(size) -> tuple:
    """513 or [512, 1024] (a crop_size value) -> (height, width)."""
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[-1]))
    return (int(size), int(size))


def _spelled(pair: tuple) -> str:
    return f"{pair[0]},{pair[1]}"


@dataclass(frozen=True)
class EvalSettings:
    """How ``infer_logits`` runs the model; ``eval_settings(args)`` makes one from the flags."""
    mode: str = "whole"
    crop: tuple | None = None    # (height, width) of a slide window
    stride: tuple | None = None  # (height, width) step between windows
    scales: tuple = (1.0,)
    flip: bool = False

    @property
    def views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def describe(self) -> str:
        text = self.mode if self.mode == "whole" else f"slide {_spelled(self.crop)} stride {_spelled(self.stride)}"
        if self.views > 1:
            text += f", scales {','.join(f'{s:g}' for s in self.scales)}{' + flip' if self.flip else ''}"
        return text


def eval_settings(args) -> EvalSettings:
    """The evaluation flags, checked (OptionError names the flag): a slide window needs a crop,
    a crop or stride without --eval_mode slide would be silently unused, a stride larger than the
    crop leaves pixels no window sees, and a window covering every --crop_val image is whole-image
    evaluation in disguise."""
    mode = getattr(args, "eval_mode", "whole")
    crop, stride = getattr(args, "eval_crop", None), getattr(args, "eval_stride", None)
    scales, flip = tuple(getattr(args, "eval_scales", (1.0,))), bool(getattr(args, "eval_flip", False))
    if mode != "slide":
        for key, value in (("eval_crop", crop), ("eval_stride", stride)):
            if value is not None:
                raise OptionError(key, value, "is only used by --eval_mode slide; add --eval_mode slide or drop it")
        return EvalSettings("whole", None, None, scales, flip)
    if crop is None:
        raise OptionError("eval_mode", mode, "needs --eval_crop HEIGHT,WIDTH (the window size)")
    crop = _pair(crop)
    stride = _pair(stride) if stride is not None else tuple(math.ceil(2 * c / 3) for c in crop)
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise OptionError("eval_stride", _spelled(stride), f"is larger than --eval_crop {_spelled(crop)}: pixels "
                                                           f"between windows would never be seen; use a stride <= the crop")
    if getattr(args, "crop_val", False):
        val = _pair(args.crop_size)
        if crop[0] >= val[0] and crop[1] >= val[1]:
            raise OptionError("eval_crop", _spelled(crop), f"covers the whole {_spelled(val)} centre crop that "
                                                           f"--crop_val True evaluates (one window = whole image); use "
                                                           f"--eval_mode whole or a smaller --eval_crop")
    return EvalSettings("slide", crop, stride, scales, flip)


# ------------------------------------------------------------------------------------------
# inference: model, images -> logits at the image size
# ------------------------------------------------------------------------------------------
def window_starts(length: int, window: int, stride: int) -> list:
    """Start offsets of windows of ``window`` (<= length) pixels every ``stride`` pixels covering
    [0, length); the last one is moved back to end at the border (mmseg's slide_inference)."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return [min(i * stride, length - window) for i in range(count)]


def slide_logits(model, images: torch.Tensor, crop: tuple, stride: tuple) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K, H, W) float32: window logits summed, divided by the per-pixel count."""
    height, width = images.shape[-2:]
    ch, cw = min(crop[0], height), min(crop[1], width)
    if (ch, cw) == (height, width):  # one window is the image: exactly whole-image inference
        return model(images)["out"].float()
    total = None
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for y in window_starts(height, ch, stride[0]):
        for x in window_starts(width, cw, stride[1]):
            out = model(images[..., y:y + ch, x:x + cw])["out"]
            if total is None:
                total = out.new_zeros((images.shape[0], out.shape[1], height, width), dtype=torch.float32)
            total[..., y:y + ch, x:x + cw] += out.float()
            count[..., y:y + ch, x:x + cw] += 1
    return total / count


def _view_logits(model, images: torch.Tensor, mode: str, crop, stride) -> torch.Tensor:
    if mode == "slide":
        return slide_logits(model, images, crop, stride)
    return model(images)["out"].float()


def scaled_size(height: int, width: int, scale: float) -> tuple:
    """The image size at one test-time scale, rounded half up (at least 1 pixel)."""
    return (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))


@torch.inference_mode()
def infer_logits(model, images: torch.Tensor, mode: str = "whole", crop=None, stride=None,
                 scales=(1.0,), flip: bool = False) -> torch.Tensor:
    """Segment a batch of same-size normalised images with a model in eval mode.

    Args:
        model: returns {"out": (N, K, H, W) logits at its input size} (segzoo EncoderDecoder).
        images: (N, 3, H, W) normalised float images.
        mode: "whole" or "slide" (then crop and stride, each (height, width), are required).
        scales, flip: test-time augmentation; see the module docstring.

    Returns:
        (N, K, H, W) float32: the model's logits for a single view, the log of the averaged
        softmax probabilities for several views (same argmax semantics, usable in a loss).
    """
    height, width = images.shape[-2:]
    scales = tuple(scales)
    if scales == (1.0,) and not flip:
        return _view_logits(model, images, mode, crop, stride)
    probs = None
    for scale in scales:
        size = scaled_size(height, width, scale)
        scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear",
                                                                      align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            logits = _view_logits(model, scaled.flip(-1) if flipped else scaled, mode, crop, stride)
            if flipped:
                logits = logits.flip(-1)
            if size != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            view = logits.softmax(1)
            del logits
            probs = view if probs is None else probs.add_(view)
    views = len(scales) * (2 if flip else 1)
    # tiny floor: a probability that underflowed to 0 must not become -inf in the loss
    return probs.div_(views).clamp_min_(torch.finfo(probs.dtype).tiny).log_()


# ------------------------------------------------------------------------------------------
# evaluation over a loader
# ------------------------------------------------------------------------------------------
def same_size_groups(batch) -> list:
    """A loader batch as [(images, labels), ...] of same-size tensors: size_group_collate's list
    as it is, a plain (images, labels) pair (default collate) as one group."""
    if isinstance(batch, (list, tuple)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return [tuple(batch)]
    return list(batch)


class Progress:
    """Rank 0's 'val: i/n images, ETA' line, at most every PROGRESS_SECONDS seconds; silent for
    evaluations shorter than that."""

    def __init__(self, total: int, enabled: bool, every: float = PROGRESS_SECONDS) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def update(self, images: int) -> None:
        self.done += images
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        print(f"val: {self.done}/{self.total} images of this process, {rate:.2f} img/s, "
              f"ETA {format_eta((self.total - self.done) / max(rate, 1e-9))}", flush=True)


def _loader_share(loader) -> int:
    """Images this process will evaluate (its sampler's share)."""
    sampler = getattr(loader, "sampler", None)
    try:
        return len(sampler) if sampler is not None else len(loader.dataset)
    except TypeError:
        return 0


@torch.inference_mode()
def evaluate(model, loader, device, amp: dict, criterion: SegmentationCriterion, args) -> dict:
    """Confusion matrix over the whole validation set, each sample counted once over all ranks.

    The model is unwrapped from DDP first: DDP's forward broadcasts buffers, a collective that a
    rank without validation images would never join (a hang). Evaluation needs no gradients, so the
    bare module gives the same outputs and the only collectives are the final reductions, which
    every rank reaches. The loss is the mean over images of each image's mean pixel loss (images
    without a labelled pixel are left out), so it does not depend on batching either.
    """
    settings = eval_settings(args)
    model = unwrap(model)
    model.eval()
    confmat = ConfusionMatrix(criterion.num_classes, device.torch_device)
    # [loss sum, images in the loss, images]: one tensor, one reduction
    totals = torch.zeros(3, device=device.torch_device, dtype=torch.float64)
    progress = Progress(_loader_share(loader), enabled=not dist.is_initialized() or torch.distributed.get_rank() == 0)
    start = time.perf_counter()
    for batch in loader:
        for images, targets in same_size_groups(batch):
            images, targets = to_device_batch(images, targets, device, args.channels_last)
            with device.autocast(amp["enabled"], amp["dtype"]):
                logits = infer_logits(model, images, **asdict(settings))
            for i in range(images.shape[0]):
                labelled = (targets[i] != IGNORE_INDEX).any()
                loss = criterion.pixel_loss(logits[i:i + 1].float(), targets[i:i + 1])
                totals[0] += torch.where(labelled, loss.double(), 0.0)
                totals[1] += labelled.double()
            totals[2] += images.shape[0]
            confmat.update(targets, logits.argmax(1))
            progress.update(images.shape[0])
    confmat.reduce_from_all_processes()
    dist.all_reduce_sum(totals)
    device.synchronize()
    seconds = time.perf_counter() - start
    results = confmat.compute()
    loss_total, loss_images, images_total = totals.tolist()
    results["loss"] = loss_total / loss_images if loss_images else float("nan")
    results["images"] = int(images_total)
    results["ips"] = images_total / max(seconds, 1e-9)
    results["confusion_matrix"] = confmat.mat.cpu()
    results["eval_mode"] = settings.describe()
    return results


def _print0(info, *text) -> None:
    if info.is_main:
        print(*text, flush=True)


def report_evaluation(results: dict, class_names, path: Path, logger, step, info) -> None:
    """Print the metrics table (rank 0), write them as JSON to `path` and log the summary."""
    _print0(info, format_table(results, class_names))
    _print0(info, f"val: {results['images']} images, loss {results['loss']:.4f}, {results['ips']:.1f} img/s "
                  f"({results.get('eval_mode', 'whole')})")
    if info.is_main:
        record = results_to_json(results, class_names)
        record.update(loss=results["loss"], images=results["images"], eval_mode=results.get("eval_mode", "whole"),
                      confusion_matrix=results["confusion_matrix"].tolist())
        save_json(path, record)
    logger.log(step=step, data={"val.loss": results["loss"], "val.ips": results["ips"],
                                "val.mIoU": results["mean_iou"], "val.overall_acc": results["overall_acc"],
                                "val.mean_acc": results["mean_acc"], "val.freqw_acc": results["freqw_acc"]},
               verbosity=Verbosity.VERBOSE)
