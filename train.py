"""Train and evaluate a semantic-segmentation model on cpu, cuda or sdaa; one process or DDP.

One process:   python train.py --device cuda --dataset_path /data/voc --num_classes 21 --crop_size 513
One node, 4 devices:
    torchrun --nproc_per_node 4 --master_port 29505 train.py --device cuda --dataset_path /data/voc ...
Two nodes (run on each, NODE = 0 or 1):
    torchrun --nnodes 2 --node_rank NODE --nproc_per_node 4 --master_addr HOST0 --master_port 29505 train.py ...
Usually started by run_scripts/run_pspnet.py, which builds these commands from the original flags.

Evaluation only:  python train.py --device cpu --dataset_path ... --test_only True --ckpt best_pspnet_voc.pth
Resume:           ... --continue_training True --ckpt experiments/pspnet/latest_pspnet_voc.pth
                  ... --auto_resume True   (the newest checkpoint of --work_dir, if any)
Iterations:       ... --iters 80000 --val_interval 8000 --save_interval 1000

Fault tolerance: one run per work dir (a lock naming the owner's PID and host), SIGTERM/SIGINT
finish the step, write `latest` and exit 143/130, a resume continues bit-identically from any
iteration checkpoint (the data position and the dropout seed are functions of the step).
"""
from __future__ import annotations

import json
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
from segzoo.engine.outputs import RunOutputs
from segzoo.engine.schedule import Schedule
from segzoo.runtime import distributed as dist
from segzoo.runtime.atomic import atomic_write, remove_temp_files
from segzoo.runtime.checkpoint import (FORMAT, check_resumable, check_work_dir, checkpoint_names, load_checkpoint,
                                       newest_checkpoint, save_checkpoint, unwrap)
from segzoo.engine.config import default_workers, parse_train_args, save_args
from segzoo.runtime.device import Device
from segzoo.runtime.diskspace import check_room
from segzoo.runtime.errors import UserError, exit_with
from segzoo.runtime.lock import WorkDirLock
from segzoo.runtime.losses import SegmentationCriterion
from segzoo.runtime.meters import ThroughputMeter, format_eta
from segzoo.runtime.run_logger import Verbosity, create_logger
from segzoo.runtime.signals import GracefulStop, Preempted, die_with_parent
from segzoo.engine.setup import check_batch_norm_batch, setup_model, wrap_model
from segzoo.engine.step import TrainStep, amp_settings, make_train_step, to_device_batch

# Set by the launcher for the processes it starts (torchrun and the workers): they get SIGTERM
# when their parent dies, so a kill -9 of the launcher leaves no training process behind.
DIE_WITH_PARENT_ENV = "SEGZOO_DIE_WITH_PARENT"


def log0(info, *text):
    if info.is_main:
        print(*text, flush=True)


def seed_everything(seed: int, device: Device) -> None:
    device.manual_seed(seed)
    np.random.seed(seed % 2**32)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The RNG seed of one training step (dropout, ...): a function of (seed, rank, step), so a
    run resumed at any iteration draws the same numbers as one that never stopped."""
    return int(np.random.SeedSequence((seed % 2**63, rank, step)).generate_state(1, dtype=np.uint32)[0])


class Stopped(Exception):
    """A preemption signal was honoured: `latest` is written, the run exits 128 + signal."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


# ------------------------------------------------------------------------------------------
# the training loop (over iterations; epochs are a unit of the data order)
# ------------------------------------------------------------------------------------------
def any_rank(flag: bool, device: Device, info) -> bool:
    """True if `flag` is set on any rank; one small collective under DDP so that every rank takes
    the same branch (save and stop, skip a step)."""
    if not info.enabled:
        return flag
    box = torch.tensor([float(flag)], device=device.torch_device)
    return dist.all_reduce_sum(box).item() > 0


def nonfinite_message(loss_value: float, first: int, args, amp: dict) -> str:
    advice = "lower --lr" + (" or try --autocast False" if amp["enabled"] else "")
    if not args.skip_nonfinite:
        advice += ", or let --skip_nonfinite N skip up to N such steps"
    return f"train loss is {loss_value} (first non-finite at iteration {first}); {advice}"


class Trainer:
    """The training loop of one rank: steps, log lines, validation, checkpoints, stop signals."""

    def __init__(self, step: TrainStep, train_loader, val_loader, schedule: Schedule, state: dict, ctx: dict):
        self.step, self.train_loader, self.val_loader, self.schedule = step, train_loader, val_loader, schedule
        self.state = state
        self.args, self.info, self.device = ctx["args"], ctx["info"], ctx["device"]
        self.logger, self.amp, self.work_dir = ctx["logger"], ctx["amp"], ctx["work_dir"]
        self.names, self.num_classes, self.class_names = ctx["names"], ctx["num_classes"], ctx["class_names"]
        self.palette = ctx["palette"]
        self.stopper: GracefulStop = ctx["stopper"]
        self.meter = ThroughputMeter(warmup_intervals=1)

    # ---- one step -------------------------------------------------------------------------
    def run_step(self, images, targets) -> torch.Tensor | None:
        """One optimizer step; None when --skip_nonfinite skipped it (loss NaN/inf on a rank)."""
        step, args = self.step, self.args
        if not args.skip_nonfinite:
            return step(images, targets)
        loss = step.forward(images, targets)
        if any_rank(not math.isfinite(loss.item()), self.device, self.info):
            self.skip_step(loss)
            return None
        step.backward(loss)
        step.update()
        return loss

    def skip_step(self, loss: torch.Tensor) -> None:
        """GradScaler-style: no update, but the lr schedule moves on (it follows iterations)."""
        state, args = self.state, self.args
        it = state["global_step"] + 1
        state["skipped"] += 1
        state.setdefault("first_nonfinite", it)
        self.logger.log(step=(self.schedule.epoch_of(it - 1), it), data={"train.nonfinite_step": it},
                        verbosity=Verbosity.DEFAULT)
        log0(self.info, f"warning: non-finite loss at iteration {it}; step skipped "
                        f"({state['skipped']} of --skip_nonfinite {args.skip_nonfinite})")
        if state["skipped"] > args.skip_nonfinite:
            raise FloatingPointError(f"{state['skipped']} steps had a non-finite loss (first at iteration "
                                     f"{state['first_nonfinite']}), more than --skip_nonfinite "
                                     f"{args.skip_nonfinite}; lower --lr"
                                     + (" or try --autocast False" if self.amp["enabled"] else ""))
        self.step.optimizer.zero_grad(set_to_none=True)
        self.step.scheduler.step()

    # ---- the loop ---------------------------------------------------------------------------
    def train(self) -> None:
        args, info, device, schedule, state = self.args, self.info, self.device, self.schedule, self.state
        sampler = self.train_loader.sampler
        dev = device.torch_device
        loss_sum = torch.zeros((), device=dev)
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)  # first non-finite iteration of the interval
        interval_iters, interval_steps, interval_data_time = 0, 0, 0.0
        while state["global_step"] < schedule.total:
            epoch, consumed = schedule.position(state["global_step"])
            sampler.set_epoch(epoch, skip=consumed * args.batch_size)
            self.step.model.train()
            interval_start = batch_end = time.perf_counter()
            for images, targets in self.train_loader:
                interval_data_time += time.perf_counter() - batch_end
                it = state["global_step"] + 1  # the iteration this step makes, 1-based
                seed_everything(step_seed(args.random_seed, info.rank, it), device)
                lr = self.step.optimizer.param_groups[0]["lr"]  # the lr this step uses
                loss = self.run_step(*to_device_batch(images, targets, device, args.channels_last))
                state["global_step"] = it
                interval_iters += 1
                if loss is not None:
                    loss = loss.detach().float()
                    loss_sum += loss
                    interval_steps += 1
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss),
                                            torch.full_like(first_bad, it), first_bad)
                batch_end = time.perf_counter()
                if interval_iters >= args.print_interval or schedule.epoch_end(it) or it == schedule.total:
                    self.log_interval(loss_sum, first_bad, interval_iters, interval_steps, images.shape[0],
                                      interval_data_time, time.perf_counter() - interval_start, lr)
                    loss_sum.zero_()
                    first_bad.fill_(-1)
                    interval_iters, interval_steps, interval_data_time = 0, 0, 0.0
                    interval_start = batch_end = time.perf_counter()
                self.after_step(it)
                if it >= schedule.total:
                    break

    def log_interval(self, loss_sum, first_bad, iters: int, steps: int, batch: int, data_time: float,
                     seconds: float, lr: float) -> None:
        """One sync + one collective per log line: loss and image counts summed over ranks."""
        args, info, device, schedule, state = self.args, self.info, self.device, self.schedule, self.state
        it = state["global_step"]
        totals = torch.stack([loss_sum, torch.tensor(float(iters * batch), device=device.torch_device)])
        dist.all_reduce_sum(totals)
        device.synchronize()
        loss_value, images_done = totals.tolist()
        loss_value /= max(steps, 1) * info.world_size
        ips = self.meter.add(int(images_done), seconds)
        if steps and not math.isfinite(loss_value):
            first = int(first_bad.item())
            first_text = str(first) if first > 0 else f"{it - iters + 1}-{it}"
            self.logger.log(step=(schedule.epoch_of(it - 1), it), data={"train.nonfinite_step": first_text},
                            verbosity=Verbosity.DEFAULT)
            self.logger.flush()
            raise FloatingPointError(nonfinite_message(loss_value, first_text, args, self.amp))
        iter_time = seconds / iters
        data_time /= iters
        epoch = schedule.epoch_of(it - 1)
        data = {"train.lr": lr, "train.ips": ips, "train.data_time": data_time,
                "train.compute_time": iter_time - data_time}
        if steps:
            data["train.loss"] = loss_value
        self.logger.log(step=(epoch, it), data=data, verbosity=Verbosity.VERBOSE)
        if schedule.by_iters:
            where = f"iter {it}/{schedule.total} (epoch {epoch})"
        else:
            where = (f"epoch {epoch}/{schedule.total // schedule.iters_per_epoch} "
                     f"iter {(it - 1) % schedule.iters_per_epoch + 1}/{schedule.iters_per_epoch}")
        loss_text = f"loss {loss_value:.4f}" if steps else "loss n/a (skipped)"
        log0(info, f"{where}  {loss_text}  lr {lr:.3g}  {ips:.1f} img/s  data {data_time * 1e3:.0f} ms/it  "
                   f"eta {format_eta((schedule.total - it) * iter_time)}")

    def after_step(self, it: int) -> None:
        """Validation, best and latest checkpoints, and a requested stop, at iteration `it`."""
        schedule, state, info = self.schedule, self.state, self.info
        if schedule.epoch_end(it):
            state["epoch"] = it // schedule.iters_per_epoch
        is_best = False
        if schedule.validate_at(it):
            is_best = self.validate(it)
            self.step.model.train()
        stop = any_rank(self.stopper.requested, self.device, info)
        if schedule.save_at(it) or stop or is_best:
            self.save(it, is_best, latest=schedule.save_at(it) or stop)
        self.logger.flush()
        if stop:
            latest = self.work_dir / self.names["latest"]
            raise Stopped(self.stopper.exit_code if self.stopper.requested else 143,
                          f"stopped by {self.stopper.name or 'a signal to another rank'} at iteration {it}: "
                          f"{latest} written; resume with --auto_resume True")

    def validate(self, it: int) -> bool:
        """Evaluate; True when this is a new best (finite loss and metrics, higher mIoU)."""
        schedule, state = self.schedule, self.state
        results = evaluate(self.step.model, self.val_loader, self.device, self.amp, self.step.criterion, self.args)
        if not schedule.by_iters and schedule.epoch_end(it) and self.args.val_interval is None:
            name = f"epoch_{it // schedule.iters_per_epoch:03d}.json"
        else:
            name = f"iter_{it:07d}.json"
        report_evaluation(results, self.class_names, self.work_dir / "metrics" / name, self.logger,
                          (schedule.epoch_of(it - 1), it), self.info)
        self.logger.log_evaluation(it, results, self.step.model)
        miou, loss = results["mean_iou"], results["loss"]
        finite = miou is not None and math.isfinite(miou) and math.isfinite(loss)
        if not finite:
            log0(self.info, f"warning: validation at iteration {it} gave mIoU {miou}, loss {loss}: not a "
                            f"candidate for the best checkpoint")
            return False
        if miou > state["best_miou"]:
            state["best_miou"] = miou
            return True
        return False

    def save(self, it: int, is_best: bool, latest: bool) -> None:
        """`best` first, then `latest`, each its own atomic file: a kill between the two leaves the
        new best and the previous latest (the resume redoes at most --save_interval iterations)."""
        if self.info.is_main:
            snapshot = checkpoint_state(self.step, self.args, self.state, self.num_classes,
                                        self.schedule.iters_per_epoch, self.class_names, self.palette)
            if is_best:
                save_checkpoint(snapshot, self.work_dir / self.names["best"])
            if latest:
                save_checkpoint(snapshot, self.work_dir / self.names["latest"])
        dist.barrier()  # a checkpoint error on rank 0 stops the others at once, not at the next collective


# ------------------------------------------------------------------------------------------
# checkpoints and resume
# ------------------------------------------------------------------------------------------
def checkpoint_state(step: TrainStep, args, state: dict, num_classes: int, iters_per_epoch: int,
                     class_names: list, palette) -> dict:
    """Everything a bit-identical resume needs: weights (incl. BatchNorm statistics), optimizer,
    lr schedule, GradScaler, and the step (which fixes the data position and RNG seeds); plus the
    dataset's class names and colours, so tools/predict.py and tools/export.py name and colour them."""
    return {"format": FORMAT, "model": unwrap(step.model).state_dict(), "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(), "scaler": step.scaler.state_dict(), "epoch": state["epoch"],
            "global_step": state["global_step"], "best_miou": state["best_miou"], "iters_per_epoch": iters_per_epoch,
            "skipped_steps": state["skipped"], "batch_size": args.batch_size,
            "model_name": args.model_name, "num_classes": num_classes, "backbone": args.backbone, "args": vars(args),
            "class_names": list(class_names), "palette": [[int(c) for c in rgb] for rgb in palette]}


def resume(step: TrainStep, ckpt: dict, state: dict, args, iters_per_epoch: int, info) -> None:
    """Optimizer, lr schedule, GradScaler and counters of the checkpoint; training goes on at the
    iteration after the saved one (mid-epoch: the rest of that epoch's batches)."""
    step.optimizer.load_state_dict(ckpt["optimizer"])
    step.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        step.scaler.load_state_dict(ckpt["scaler"])
    state.update(epoch=ckpt["epoch"], global_step=ckpt["global_step"], skipped=ckpt.get("skipped_steps", 0))
    best = ckpt.get("best_miou", -1.0)
    state["best_miou"] = best if best is not None and math.isfinite(best) else -1.0
    if ckpt.get("iters_per_epoch") != iters_per_epoch:
        log0(info, f"warning: the checkpoint ran {ckpt.get('iters_per_epoch')} iterations per epoch, this run "
                   f"{iters_per_epoch}; the lr schedule continues from iteration {state['global_step']}")
    gs = state["global_step"]
    log0(info, f"resumed from {args.ckpt}: {gs} iterations done (epoch {gs // iters_per_epoch + 1}, "
               f"batch {gs % iters_per_epoch + 1} of {iters_per_epoch} next)")


def trim_log(path: Path, global_step: int) -> int:
    """Drop the records of iterations after `global_step` from a log a resumed run appends to
    (the killed run logged them, the resumed run logs them again). Returns how many."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines(keepends=True):
        text = line.split(" ", 1)[1] if " " in line else ""
        try:
            record = json.loads(text)
        except ValueError:  # a line cut short by a kill
            dropped += 1
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, list) and len(step) == 2 and isinstance(step[1], (int, float)) and step[1] > global_step:
            dropped += 1
            continue
        kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        atomic_write(path, lambda f: f.write("".join(kept).encode()))
    return dropped


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


def take_work_dir(args, work_dir: Path, info) -> WorkDirLock | None:
    """Rank 0 locks the work dir for this training run and removes temporary files a killed run
    left; every rank gets the same verdict (a refusal is one line on each)."""
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = WorkDirLock(work_dir).acquire()
            for name in remove_temp_files(work_dir) + remove_temp_files(work_dir / "metrics"):
                print(f"removed {name}, left by an interrupted write", flush=True)
        except UserError as err:
            refusal = str(err)
        except OSError as err:  # read-only or foreign work dir: nothing can be written there
            refusal = f"--work_dir {work_dir} is not writable ({err.strerror}); pick another --work_dir"
    refusal = dist.broadcast_object(refusal)
    if refusal:
        raise UserError(refusal)
    return lock


def run(args, stopper: GracefulStop) -> int:
    device, info = start_process(args)
    check_batch_norm_batch(args, info, device)
    work_dir = Path(args.work_dir)
    names = checkpoint_names(args.model_name, args.dataset)
    lock = None if args.test_only else take_work_dir(args, work_dir, info)
    try:
        return run_locked(args, stopper, device, info, work_dir, names)
    finally:
        if lock is not None:
            lock.release()


def run_locked(args, stopper, device, info, work_dir: Path, names: dict) -> int:
    check_work_dir(args, work_dir)
    outputs = RunOutputs(args, work_dir, info)  # a missing tensorboard stops the run before anything is written
    ckpt = None
    if args.auto_resume and not args.test_only:
        found = dist.broadcast_object(str(newest_checkpoint(work_dir, names)[0] or "") if info.is_main else None)
        if found:
            args.ckpt, args.continue_training = found, True
        else:
            log0(info, f"auto-resume: no checkpoint in {work_dir} yet, starting "
                       f"{'from --ckpt ' + args.ckpt if args.ckpt else 'fresh'}")
    if args.ckpt:
        ckpt = load_checkpoint(args.ckpt)
    if args.continue_training:
        check_resumable(ckpt, args.ckpt)
    train_set, val_set = build_datasets(args, info, ckpt)
    num_classes, class_names = val_set.num_classes, val_set.class_names
    train_loader, val_loader = build_loaders(args, train_set, val_set, info, device)
    bare = setup_model(args, num_classes, device, info, ckpt)
    model = wrap_model(bare, device, info, args)
    amp = amp_settings(args, device)

    log_path = work_dir / ("test_log.json" if args.test_only else "train_log.json")
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_args(args, work_dir / ("args_test.yaml" if args.test_only else "args.yaml"))
        if args.continue_training and not args.test_only:
            trim_log(log_path, int(ckpt.get("global_step", 0)))
    logger = create_logger(log_path, enabled=info.is_main, append=args.continue_training)
    logger = outputs.attach(logger, val_set, device)  # --tensorboard: scalars, per-class IoU, overlays
    stride = bare.backbone.feature_info[bare.backbone.main_index].reduction  # the backbone's, also by default
    log0(info, f"{args.model_name} ({args.backbone}, OS{stride}) on {device} x{info.world_size}, "
               f"{len(train_set) if train_set else 0} train / {len(val_set)} val images, {num_classes} classes, "
               f"autocast {amp['dtype'] if amp['enabled'] else 'off'}")

    if args.test_only:
        criterion = SegmentationCriterion(num_classes, args.loss_type)
        results = evaluate(model, val_loader, device, amp, criterion, args)
        report_evaluation(results, class_names, work_dir / "metrics" / "test.json", logger, (0, 0), info)
        logger.log_evaluation(0, results, model)
        outputs.save_predictions(model, val_set, device)
        logger.flush()
        return 0

    iters_per_epoch = len(train_loader)
    schedule = Schedule.from_args(args, iters_per_epoch)
    step = make_train_step(model, bare, args, num_classes, device, iters_per_epoch)
    state = {"epoch": 0, "global_step": 0, "best_miou": -1.0, "skipped": 0}
    if args.continue_training:
        resume(step, ckpt, state, args, iters_per_epoch, info)
        if state["global_step"] >= schedule.total:
            log0(info, f"nothing to do: the checkpoint already finished {state['global_step']} of "
                       f"{schedule.total} iterations")
            return 0
    refusal = None
    if info.is_main:  # a disk without room for one checkpoint: say so now, not after the first interval
        slots = {"sgd": 1 if args.momentum else 0}.get(args.optimizer, 2)  # momentum / Adam moments per weight
        try:
            check_room(work_dir, unwrap(model).state_dict(), factor=1 + slots)
        except UserError as err:
            refusal = str(err)
    refusal = dist.broadcast_object(refusal)
    if refusal:
        raise UserError(refusal)
    log0(info, f"schedule: {schedule.describe()}")
    first_step = state["global_step"]
    ctx = dict(args=args, info=info, device=device, logger=logger, amp=amp, work_dir=work_dir, names=names,
               num_classes=num_classes, class_names=class_names, palette=val_set.palette, stopper=stopper)
    trainer = Trainer(step, train_loader, val_loader, schedule, state, ctx)
    device.reset_peak_memory()
    train_start = time.perf_counter()
    trainer.train()
    report_summary(info, device, trainer.meter, state, state["global_step"] - first_step,
                   time.perf_counter() - train_start)
    if info.is_main:
        plot_training_curve(work_dir / "train_log.json", work_dir / "loss_curve.png")
    return 0


def report_summary(info, device, meter: ThroughputMeter, state: dict, iters: int, seconds: float) -> None:
    ips, warm = meter.summary()
    peak = torch.tensor(float(device.peak_memory_bytes()), device=device.torch_device)
    if info.enabled:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    best = state["best_miou"]
    best_text = f"{100 * best:.2f}" if best >= 0 else "n/a (no validation with a finite mIoU)"
    skipped = f", {state['skipped']} non-finite step(s) skipped" if state["skipped"] else ""
    log0(info, f"done: {iters} iterations in {format_eta(seconds)}, mean {ips:.1f} img/s over {info.world_size} "
               f"process(es){'' if warm else ' (too few log intervals to leave out warm-up)'}, "
               f"{device.memory_label} {peak.item() / 2**30:.2f} GiB, best mIoU {best_text}{skipped}")


def plot_training_curve(log_path: Path, png: Path) -> None:
    from tools.plot_curve import plot
    try:
        plot([log_path], png)
    except UserError as err:  # e.g. --print_interval longer than the run: nothing to draw
        print(f"no loss curve: {err}", flush=True)
        return
    print(f"loss curve: {png}", flush=True)


def is_out_of_memory(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def main(argv=None) -> int:
    stopper = GracefulStop().install()  # first: a signal during start-up is honoured too
    if os.environ.get(DIE_WITH_PARENT_ENV) == "1":
        die_with_parent()
    code = 1
    try:
        args = parse_train_args(argv)
        code = run(args, stopper)
    except UserError as err:
        exit_with(err)
    except FloatingPointError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 3
    except Stopped as stop:
        if os.environ.get("RANK", "0") == "0":
            print(f"{stop}", file=sys.stderr, flush=True)
        code = stop.code
    except Preempted as err:
        print(f"stopped at once by a second {err} (no checkpoint of the current step); resume from the last "
              f"latest checkpoint with --auto_resume True", file=sys.stderr, flush=True)
        code = err.exit_code
    except Exception as err:
        if is_out_of_memory(err):
            print(f"error: out of memory on {args.device} at --batch_size {args.batch_size} --crop_size "
                  f"{args.crop_size} (--val_batch_size {args.val_batch_size} in evaluation); lower those, or try "
                  f"--autocast True", file=sys.stderr, flush=True)
            code = 1
        elif not dist.is_peer_failure(err):
            raise  # a real fault: keep its traceback
        else:
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
