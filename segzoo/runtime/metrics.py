"""Segmentation metrics from a confusion matrix: pixel accuracy, mean class accuracy,
frequency-weighted IoU and mean IoU, as defined in Long et al., "Fully Convolutional Networks
for Semantic Segmentation" (CVPR 2015), section 5.

The matrix is accumulated on the training device without reading anything back to the host,
summed across processes once per evaluation, and only then turned into numbers on the CPU.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from segzoo.runtime.atomic import atomic_write
from segzoo.runtime.errors import UserError

# Keys of the scalar metrics returned by ConfusionMatrix.compute(), with their printed names.
SUMMARY_METRICS = {
    "overall_acc": "Overall Acc",
    "mean_acc": "Mean Acc",
    "freqw_acc": "FreqW Acc",
    "mean_iou": "Mean IoU",
}


class ConfusionMatrix:
    """A (K, K) int64 confusion matrix: rows are ground-truth classes, columns predictions.

    Args:
        num_classes: K, the number of real classes (void/ignore labels are not a class).
        device: where the matrix lives; put it on the device the predictions are on.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Count one batch.

        Args:
            target: (N, H, W) (any shape, any integer dtype) ground-truth labels. Pixels labelled
                255 (void) or anything outside [0, K) are not counted.
            pred: predicted class ids, same shape as target (e.g. logits.argmax(1)). Ids outside
                [0, K) cannot come from an argmax over K channels; they are not counted rather
                than allowed to land in another class's row.
        """
        if target.shape != pred.shape:
            raise ValueError(
                f"target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}")
        k = self.num_classes
        # int64 before the arithmetic: a uint8 target times K would wrap around.
        target = target.reshape(-1).to(device=self.mat.device, dtype=torch.int64)
        pred = pred.reshape(-1).to(device=self.mat.device, dtype=torch.int64)
        counted = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
        # A bincount into a fixed K*K bins. torch.bincount itself is not used because its output
        # length depends on max(input), which it reads back to the host on accelerators (a
        # device sync per batch), and dropping ignored pixels with a boolean mask would sync
        # too (data-dependent shape). Instead ignored pixels are sent to bin 0 with weight 0.
        cell = torch.where(counted, target * k + pred, 0)
        self.mat.view(-1).index_add_(0, cell, counted.to(torch.int64))

    def reset(self) -> None:
        self.mat.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all processes (in place). A no-op without torch.distributed."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """The metrics of the counts so far, as plain Python floats in 0..1.

        Returns:
            dict with
              overall_acc: correctly classified pixels / counted pixels.
              mean_acc: mean over classes with ground truth of per-class accuracy (recall).
              freqw_acc: frequency-weighted IoU, sum_c (pixels of c / pixels) * IoU_c (FCN's
                  "f.w. IU"; named freqw_acc as in the usual segmentation code bases).
              mean_iou: mean over classes present (union > 0) of per-class IoU.
              per_class_iou, per_class_acc: K-long lists; NaN where undefined (IoU: class
                  neither in ground truth nor predicted; acc: class not in ground truth).
            Everything is NaN when no pixel was counted.
        """
        hist = self.mat.detach().to("cpu", torch.float64)
        true_positive = hist.diag()
        gt_pixels = hist.sum(dim=1)
        pred_pixels = hist.sum(dim=0)
        total = hist.sum()
        union = gt_pixels + pred_pixels - true_positive

        nan = torch.tensor(math.nan, dtype=torch.float64)
        # Dividing by a masked denominator (never by zero) keeps the result free of 0/0 warnings.
        class_acc = torch.where(gt_pixels > 0, true_positive / gt_pixels.clamp(min=1), nan)
        class_iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
        has_gt = gt_pixels > 0
        return {
            "overall_acc": _ratio(true_positive.sum(), total),
            "mean_acc": _nanmean(class_acc),
            "freqw_acc": _ratio((gt_pixels[has_gt] * class_iou[has_gt]).sum(), total),
            "mean_iou": _nanmean(class_iou),
            "per_class_iou": class_iou.tolist(),
            "per_class_acc": class_acc.tolist(),
        }


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return float(numerator / denominator) if denominator > 0 else math.nan


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan


def _check_class_names(results: dict, class_names: Sequence[str] | None) -> list[str]:
    num_classes = len(results["per_class_iou"])
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class names are not unique: {names}")
    return names


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100.0 * value:.2f}"


def format_table(results: dict, class_names: Sequence[str] | None = None) -> str:
    """A human-readable report: the summary metrics, then per-class IoU and accuracy.

    Values are percentages with 2 decimals; classes without a defined value show "-".
    Mean IoU is the mean of the per-class IoUs shown (present classes), up to rounding.
    """
    names = _check_class_names(results, class_names)
    name_width = max([len("class")] + [len(n) for n in names])
    lines = [f"{label:<12}{_percent(results[key]):>8}" for key, label in SUMMARY_METRICS.items()]
    lines.append("")
    lines.append(f"{'class':<{name_width}}  {'IoU':>7}  {'Acc':>7}")
    for name, iou, acc in zip(names, results["per_class_iou"], results["per_class_acc"]):
        lines.append(f"{name:<{name_width}}  {_percent(iou):>7}  {_percent(acc):>7}")
    return "\n".join(lines)


def _json_number(value: float) -> float | None:
    # Strict JSON has no NaN; an undefined metric is null.
    return None if math.isnan(value) else value


def results_to_json(results: dict, class_names: Sequence[str] | None = None) -> dict:
    """compute()'s results as a strict-JSON-ready dict (fractions in 0..1, NaN -> None), with
    the per-class values keyed by class name."""
    names = _check_class_names(results, class_names)
    out = {key: _json_number(results[key]) for key in SUMMARY_METRICS}
    out["per_class_iou"] = {n: _json_number(v) for n, v in zip(names, results["per_class_iou"])}
    out["per_class_acc"] = {n: _json_number(v) for n, v in zip(names, results["per_class_acc"])}
    return out


def _finite_or_none(obj):
    """obj with every NaN/inf float replaced by None, recursively through dicts and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(value) for value in obj]
    return obj


def save_json(path: str | os.PathLike, data: dict) -> None:
    """Write `data` as strict JSON (NaN and inf become null) to `path` atomically: a reader
    sees the old file or the whole new one, never a half-written one (segzoo.runtime.atomic)."""
    path = Path(path)
    # Serialise first so that unserialisable data fails before anything touches the disk.
    text = json.dumps(_finite_or_none(data), indent=2, allow_nan=False) + "\n"
    try:
        atomic_write(path, lambda file: file.write(text.encode("utf-8")))
    except OSError as err:
        raise _unwritable(path, err) from err


def _unwritable(path: Path, err: OSError) -> UserError:
    return UserError(f"cannot write {path}: {err.strerror or err}; pass a writable output path")
