"""Train and evaluate a semantic-segmentation model on cpu, cuda or sdaa; one process or DDP.

One process:   python train.py --device cuda --dataset_path /data/voc --num_classes 21 --crop_size 513
One node, 4 devices:
    torchrun --nproc_per_node 4 --master_port 29505 train.py --device cuda --dataset_path /data/voc ...
Two nodes (run on each, NODE = 0 or 1):
    torchrun --nnodes 2 --node_rank NODE --nproc_per_node 4 --master_addr HOST0 --master_port 29505 train.py ...
Usually started by run_scripts/run_pspnet.py, which builds these commands from the original flags.

Evaluation only:  python train.py --device cpu --dataset_path ... --test_only True --ckpt best_pspnet_voc.pth
Resume:           ... --continue_training True --ckpt experiments/pspnet/latest_pspnet_voc.pth
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segzoo.engine.data import build_datasets, build_loaders
from segzoo.engine.evaluate import evaluate, report_evaluation
from segzoo.runtime import distributed as dist
from segzoo.runtime.checkpoint import (FORMAT, check_resumable, check_work_dir, checkpoint_names, load_checkpoint,
                                save_checkpoint, unwrap)
from segzoo.engine.config import default_workers, parse_train_args, save_args
from segzoo.runtime.device import Device
from segzoo.runtime.errors import UserError, exit_with
from segzoo.runtime.losses import SegmentationCriterion
from segzoo.runtime.meters import ThroughputMeter, format_eta
from segzoo.runtime.run_logger import Verbosity, create_logger
from segzoo.engine.setup import check_batch_norm_batch, setup_model, wrap_model
from segzoo.engine.step import TrainStep, amp_settings, make_train_step, to_device_batch


def log0(info, *text):
    if info.is_main:
        print(*text, flush=True)


def seed_everything(seed: int, device: Device) -> None:
    device.manual_seed(seed)
    np.random.seed(seed % 2**32)


# ------------------------------------------------------------------------------------------
# one training epoch and one evaluation
# ------------------------------------------------------------------------------------------
def train_one_epoch(step: TrainStep, loader, device, epoch: int, state: dict, args, info, logger,
                    meter: ThroughputMeter) -> None:
    step.model.train()
    iters = len(loader)
    loss_sum = torch.zeros((), device=device.torch_device)
    interval_iters, interval_data_time = 0, 0.0
    interval_start = batch_end = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        interval_data_time += time.perf_counter() - batch_end
        lr = step.optimizer.param_groups[0]["lr"]  # the lr this step uses; the step sets the next one
        loss = step(*to_device_batch(images, targets, device, args.channels_last))
        loss_sum += loss.detach().float()  # stays on the device: no host sync per iteration
        state["global_step"] += 1
        interval_iters += 1
        batch_end = time.perf_counter()
        if interval_iters < args.print_interval and i < iters - 1:
            continue

        # One sync + one collective per log line: loss and image counts summed over ranks.
        totals = torch.stack([loss_sum, torch.tensor(float(interval_iters * images.shape[0]),
                                                     device=device.torch_device)])
        dist.all_reduce_sum(totals)
        device.synchronize()
        seconds = time.perf_counter() - interval_start
        loss_value, images_done = totals.tolist()
        loss_value /= interval_iters * info.world_size
        ips = meter.add(int(images_done), seconds)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"train loss is {loss_value} at epoch {epoch} iteration {i + 1}; "
                                     f"lower --lr or try --autocast False")
        iter_time = seconds / interval_iters
        data_time = interval_data_time / interval_iters
        remaining = (iters - i - 1) + (args.epoch - epoch) * iters
        logger.log(step=(epoch, state["global_step"]),
                   data={"train.loss": loss_value, "train.lr": lr, "train.ips": ips,
                         "train.data_time": data_time, "train.compute_time": iter_time - data_time},
                   verbosity=Verbosity.VERBOSE)
        log0(info, f"epoch {epoch}/{args.epoch} iter {i + 1}/{iters}  loss {loss_value:.4f}  lr {lr:.3g}  "
                   f"{ips:.1f} img/s  data {data_time * 1e3:.0f} ms/it  eta {format_eta(remaining * iter_time)}")
        loss_sum.zero_()
        interval_iters, interval_data_time = 0, 0.0
        interval_start = batch_end = time.perf_counter()


# ------------------------------------------------------------------------------------------
# checkpoints and resume
# ------------------------------------------------------------------------------------------
def checkpoint_state(step: TrainStep, args, state: dict, num_classes: int, iters_per_epoch: int) -> dict:
    return {"format": FORMAT, "model": unwrap(step.model).state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "scaler": step.scaler.state_dict(), "epoch": state["epoch"],
            "global_step": state["global_step"], "best_miou": state["best_miou"], "iters_per_epoch": iters_per_epoch,
            "model_name": args.model_name, "num_classes": num_classes, "backbone": args.backbone, "args": vars(args)}


def resume(step: TrainStep, ckpt: dict, state: dict, args, iters_per_epoch: int, info) -> None:
    """Optimizer, lr schedule, GradScaler and counters of the checkpoint; training goes on at the
    epoch after the saved one."""
    step.optimizer.load_state_dict(ckpt["optimizer"])
    step.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    state.update(epoch=ckpt["epoch"], global_step=ckpt["global_step"], best_miou=ckpt["best_miou"])
    if ckpt.get("iters_per_epoch") != iters_per_epoch:
        log0(info, f"warning: the checkpoint ran {ckpt.get('iters_per_epoch')} iterations per epoch, this run "
                   f"{iters_per_epoch}; the lr schedule continues from iteration {state['global_step']}")
    log0(info, f"resumed from {args.ckpt}: epoch {state['epoch']} done, continuing at epoch {state['epoch'] + 1}")


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------
def start_process(args):
    """Device of this rank, process group, logging, seeds and backend flags."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if dist.launched_by_torchrun() else args.default_rank
    device = Device(args.device, local_rank)
    info = dist.init_distributed(device.backend, device.torch_device)
    if info.is_main:  # model builders and ops report choices (pretrained weights, kernel vs portable) here
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(args.random_seed + info.rank, device)
    device.configure_backends(args.deterministic)
    if args.workers is None:
        args.workers = default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return device, info


def run(args) -> int:
    device, info = start_process(args)
    check_batch_norm_batch(args, info, device)
    work_dir = Path(args.work_dir)
    check_work_dir(args, work_dir)
    ckpt = load_checkpoint(args.ckpt) if args.ckpt else None
    if args.continue_training:
        check_resumable(ckpt, args.ckpt)
    train_set, val_set = build_datasets(args, info, ckpt)
    num_classes, class_names = val_set.num_classes, val_set.class_names
    train_loader, val_loader = build_loaders(args, train_set, val_set, info, device)
    bare = setup_model(args, num_classes, device, info, ckpt)
    model = wrap_model(bare, device, info, args)
    amp = amp_settings(args, device)

    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_args(args, work_dir / ("args_test.yaml" if args.test_only else "args.yaml"))
    logger = create_logger(work_dir / ("test_log.json" if args.test_only else "train_log.json"), enabled=info.is_main,
                           append=args.continue_training)
    log0(info, f"{args.model_name} ({args.backbone}, OS{args.output_stride}) on {device} x{info.world_size}, "
               f"{len(train_set) if train_set else 0} train / {len(val_set)} val images, {num_classes} classes, "
               f"autocast {amp['dtype'] if amp['enabled'] else 'off'}")

    if args.test_only:
        criterion = SegmentationCriterion(num_classes, args.loss_type)
        results = evaluate(model, val_loader, device, amp, criterion, args)
        report_evaluation(results, class_names, work_dir / "metrics" / "test.json", logger, (0, 0), info)
        logger.flush()
        return 0

    iters_per_epoch = len(train_loader)
    step = make_train_step(model, bare, args, num_classes, device, iters_per_epoch)
    state = {"epoch": 0, "global_step": 0, "best_miou": -1.0}
    if args.continue_training:
        resume(step, ckpt, state, args, iters_per_epoch, info)
        if state["epoch"] >= args.epoch:
            log0(info, f"nothing to do: the checkpoint already finished {state['epoch']} of --epoch {args.epoch}")
            return 0
    first_epoch = state["epoch"] + 1
    names = checkpoint_names(args.model_name, args.dataset)
    meter = ThroughputMeter(warmup_intervals=1)
    device.reset_peak_memory()
    train_start = time.perf_counter()
    for epoch in range(first_epoch, args.epoch + 1):
        train_loader.sampler.set_epoch(epoch)
        # Reseeding per epoch makes dropout identical whether or not the run was resumed.
        seed_everything(args.random_seed + info.rank + 1000 * epoch, device)
        train_one_epoch(step, train_loader, device, epoch, state, args, info, logger, meter)
        state["epoch"] = epoch
        is_best = False
        if epoch % args.val_epoch == 0 or epoch == args.epoch:
            results = evaluate(model, val_loader, device, amp, step.criterion, args)
            report_evaluation(results, class_names, work_dir / "metrics" / f"epoch_{epoch:03d}.json", logger,
                              (epoch, state["global_step"]), info)
            is_best = results["mean_iou"] > state["best_miou"]
            state["best_miou"] = max(state["best_miou"], results["mean_iou"])
        if info.is_main:
            snapshot = checkpoint_state(step, args, state, num_classes, iters_per_epoch)
            save_checkpoint(snapshot, work_dir / names["latest"])
            if is_best:
                save_checkpoint(snapshot, work_dir / names["best"])
        logger.flush()

    report_summary(args, info, device, meter, state, args.epoch - first_epoch + 1, time.perf_counter() - train_start)
    if info.is_main:
        plot_training_curve(work_dir / "train_log.json", work_dir / "loss_curve.png")
    return 0


def report_summary(args, info, device, meter: ThroughputMeter, state: dict, epochs: int, seconds: float) -> None:
    ips, warm = meter.summary()
    peak = torch.tensor(float(device.peak_memory_bytes()), device=device.torch_device)
    if info.enabled:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    log0(info, f"done: {epochs} epochs in {format_eta(seconds)}, mean {ips:.1f} img/s over {info.world_size} "
               f"process(es){'' if warm else ' (too few log intervals to leave out warm-up)'}, "
               f"{device.memory_label} {peak.item() / 2**30:.2f} GiB, best mIoU {100 * state['best_miou']:.2f}")


def plot_training_curve(log_path: Path, png: Path) -> None:
    from tools.plot_curve import plot
    try:
        plot([log_path], png)
    except UserError as err:  # e.g. --print_interval longer than the run: nothing to draw
        print(f"no loss curve: {err}", flush=True)
        return
    print(f"loss curve: {png}", flush=True)


def main(argv=None) -> int:
    try:
        args = parse_train_args(argv)
        code = run(args)
    except UserError as err:
        exit_with(err)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 3
    except Exception as err:
        if not dist.is_peer_failure(err):
            raise  # a real fault: keep its traceback
        # Another rank stopped (its own error is printed above); no traceback wall from this one.
        rank = os.environ.get("RANK", "?")
        print(f"error: rank {rank} stopped because another rank failed (see its error above)",
              file=sys.stderr, flush=True)
        code = 1
    finally:
        dist.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
