"""Evaluation of a model over a validation set (flags and logic)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from segzoo.engine.step import to_device_batch
from segzoo.runtime import distributed as dist
from segzoo.runtime.checkpoint import unwrap
from segzoo.runtime.losses import SegmentationCriterion
from segzoo.runtime.metrics import ConfusionMatrix, format_table, results_to_json, save_json
from segzoo.runtime.run_logger import Verbosity


def add_eval_args(p: argparse.ArgumentParser) -> None:
    """Flags of the evaluation group (filled in by the evaluation-modes work)."""


def _print0(info, *text) -> None:
    if info.is_main:
        print(*text, flush=True)


@torch.inference_mode()
def evaluate(model, loader, device, amp: dict, criterion: SegmentationCriterion, args) -> dict:
    """Confusion matrix over the whole validation set, each sample counted once over all ranks.

    The model is unwrapped from DDP first: DDP's forward broadcasts buffers, a collective that a
    rank without validation images would never join (a hang). Evaluation needs no gradients, so the
    bare module gives the same outputs and the only collectives are the final reductions.
    """
    model = unwrap(model)
    model.eval()
    confmat = ConfusionMatrix(criterion.num_classes, device.torch_device)
    loss_sum = torch.zeros((), device=device.torch_device)
    count = torch.zeros((), device=device.torch_device)
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = to_device_batch(images, targets, device, args.channels_last)
        with device.autocast(amp["enabled"], amp["dtype"]):
            logits = model(images)["out"]
        loss_sum += criterion.pixel_loss(logits.float(), targets) * images.shape[0]
        count += images.shape[0]
        confmat.update(targets, logits.argmax(1))
    confmat.reduce_from_all_processes()
    totals = dist.all_reduce_sum(torch.stack([loss_sum, count]))
    device.synchronize()
    seconds = time.perf_counter() - start
    results = confmat.compute()
    loss_total, images_total = totals.tolist()
    results["loss"] = loss_total / max(images_total, 1)
    results["images"] = int(images_total)
    results["ips"] = images_total / max(seconds, 1e-9)
    results["confusion_matrix"] = confmat.mat.cpu()
    return results


def report_evaluation(results: dict, class_names, path: Path, logger, step, info) -> None:
    """Print the metrics table (rank 0), write them as JSON to `path` and log the summary."""
    _print0(info, format_table(results, class_names))
    _print0(info, f"val: {results['images']} images, loss {results['loss']:.4f}, {results['ips']:.1f} img/s")
    if info.is_main:
        record = results_to_json(results, class_names)
        record.update(loss=results["loss"], images=results["images"],
                      confusion_matrix=results["confusion_matrix"].tolist())
        save_json(path, record)
    logger.log(step=step, data={"val.loss": results["loss"], "val.ips": results["ips"],
                                "val.mIoU": results["mean_iou"], "val.overall_acc": results["overall_acc"],
                                "val.mean_acc": results["mean_acc"], "val.freqw_acc": results["freqw_acc"]},
               verbosity=Verbosity.VERBOSE)
