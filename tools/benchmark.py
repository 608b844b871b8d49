#!/usr/bin/env python
"""Training and inference speed of any model of the zoo: synthetic on-device data and end to end.

    python tools/benchmark.py --device cuda --model_name pspnet --crop_size 513 --batch_size 8 \\
        --autocast True --amp_dtype bfloat16 --channels_last True --compile True \\
        [--steps 30 --warmup 10] [--mode train,infer,loader,e2e] \\
        [--dataset_path ../shared/data/camvid_voc --workers 16] [--json bench.jsonl]

Takes every flag of train.py (model, precision, layout, compile, optimizer, data, workers) with
the same meaning, so a training command line can be benchmarked by swapping the script name;
flags that only matter over a whole run (--epoch, --work_dir, --ckpt, ...) change nothing here.

Modes (default: train,infer, plus loader,e2e when data is given):
  train   the training step (segzoo.engine.step.TrainStep, as train.py runs it) on uint8 images made on
          the device and normalised there, and random labels: img/s and ms/step from a loop with
          one sync at the end; peak memory; achieved TFLOP/s from torch's FLOP counter (one
          eager step, counted once); the step split into data / forward / backward / optimizer,
          from a separate pass that syncs after every phase (so the split sums to slightly more
          than the headline ms/step).
  infer   model.eval() under inference_mode on the same synthetic batch at the crop size
          (normalise, forward, argmax): img/s, peak memory, TFLOP/s.
  loader  images/s the training DataLoader (segzoo.engine.data, as train.py builds it) delivers from
          --dataset_path with --workers (default here: all cores), and the decode and augment cost
          per image on one core, timed single-process on a sample of images (best of 3 per image,
          so it is CPU cost, not disk).
  e2e     the training step fed by that loader (pinned memory and non-blocking copies on an
          accelerator, as in train.py): img/s, the ratio to the synthetic train figure, and the
          host time per step spent waiting for a batch.

Prints a table and then one JSON line per mode (device, torch version and every setting
included); --json FILE also appends those lines to FILE. FLOPs are the convolutions and matmuls
of aten ops (torch.utils.flop_counter); a custom kernel (ops/) counts as zero.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Iterator, Sequence  # noqa: E402

import cv2  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from segzoo.engine.data import build_datasets, build_loaders  # noqa: E402
from segzoo.datasets.sampler import sample_seed  # noqa: E402
from segzoo.datasets.transforms import to_hw  # noqa: E402
from segzoo.engine.config import OneLineParser, add_train_args, finalize, non_negative_int, positive_int  # noqa: E402
from segzoo.runtime.device import Device  # noqa: E402
from segzoo.runtime.distributed import DistInfo  # noqa: E402
from segzoo.runtime.errors import UserError, exit_with  # noqa: E402
from segzoo.engine.step import TrainStep, make_train_step, to_device_batch  # noqa: E402
from segzoo.engine.setup import check_batch_norm_batch, setup_model, wrap_model  # noqa: E402

MODES = ("train", "infer", "loader", "e2e")  # also the order they run in: e2e compares with train
DATA_MODES = frozenset({"loader", "e2e"})
SYNTHETIC_CLASSES = 21  # VOC's, when neither --num_classes nor a dataset says otherwise
PHASES = ("data", "forward", "backward", "optimizer")
# Loader mode times at least this many batches per worker: workers deliver batches in bursts,
# and a window of only a batch or two per worker would count a burst as throughput.
LOADER_BATCHES_PER_WORKER = 8
DEFAULT_DECODE_SAMPLE = 32
GIB = 2 ** 30


# ------------------------------------------------------------------------------------------
# flags
# ------------------------------------------------------------------------------------------
def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_parser() -> OneLineParser:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_train_args(parser)
    parser.set_defaults(workers=available_cores())
    g = parser.add_argument_group("benchmark", f"--workers defaults to all {available_cores()} cores here "
                                                f"(train.py shares them among its processes, at most 8)")
    g.add_argument("--mode", default=None,
                   help=f"comma-separated subset of {','.join(MODES)} (default: train,infer, "
                        f"and loader,e2e too when --dataset_path or --dataset demo is given)")
    g.add_argument("--steps", type=positive_int, default=30, help="timed steps (batches) per mode")
    g.add_argument("--warmup", type=non_negative_int, default=10,
                   help="untimed steps first (cudnn autotuning, torch.compile, allocator growth)")
    g.add_argument("--decode_sample", type=positive_int, default=DEFAULT_DECODE_SAMPLE,
                   help="images timed one by one for the loader's per-image decode/augment cost")
    g.add_argument("--json", default=None, help="append one JSON line per mode to this file")
    return parser


def parse_modes(text: str | None, has_data: bool) -> list[str]:
    """--mode -> the requested modes in run order; UserError for unknown names."""
    if text is None:
        return [m for m in MODES if has_data or m not in DATA_MODES]
    asked = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in asked if m not in MODES]
    if unknown or not asked:
        raise UserError(f"--mode {text!r}: unknown mode {', '.join(unknown) or '(none given)'}; "
                        f"use a comma-separated subset of {','.join(MODES)}")
    return [m for m in MODES if m in asked]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.config:
        raise UserError("--config is not read by tools/benchmark.py; pass the settings as flags")
    has_data = args.dataset_path is not None or args.dataset == "demo"
    modes = parse_modes(args.mode, has_data)
    if DATA_MODES.intersection(modes) and not has_data:
        raise UserError(f"--mode {','.join(modes)} reads real data: pass --dataset_path DIR (VOC layout) "
                        f"or --dataset demo, or leave out loader and e2e")
    args.mode = ",".join(modes)
    if args.json and not Path(args.json).expanduser().parent.is_dir():
        raise UserError(f"--json {args.json}: folder {Path(args.json).parent} does not exist; create it first")
    if not has_data:
        args.dataset_path = "-"  # finalize() insists on a dataset path; these modes read no files at all
    finalize(args)
    if not has_data:
        args.dataset, args.dataset_path = "synthetic", None
    return args


# ------------------------------------------------------------------------------------------
# what is measured on
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Bench:
    """Everything the measurements share: one model (compiled once) and one training step."""
    args: argparse.Namespace
    device: Device
    bare: torch.nn.Module        # the EncoderDecoder itself: eager, for the FLOP counter
    model: torch.nn.Module       # what runs (torch.compile'd with --compile True)
    step: TrainStep
    images: torch.Tensor         # (N, 3, H, W) uint8 on the device
    labels: torch.Tensor         # (N, H, W) uint8 on the device
    num_classes: int
    train_set: object = None
    loader: object = None
    train_flops: int | None = None  # counted once, by count_train_flops

    def device_batch(self, images=None, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch as the model sees it (train.py's to_device_batch), synthetic by default."""
        images = self.images if images is None else images
        labels = self.labels if labels is None else labels
        return to_device_batch(images, labels, self.device, self.args.channels_last)


def synthetic_batch(batch_size: int, crop_size, num_classes: int, device: Device):
    """uint8 images and labels created on the device: the loader's dtypes, no host copy.
    crop_size is an int or (height, width)."""
    height, width = to_hw(crop_size)
    shape = (batch_size, height, width)
    images = torch.randint(0, 256, (batch_size, 3, height, width), dtype=torch.uint8,
                           device=device.torch_device)
    labels = torch.randint(0, min(num_classes, 255), shape, dtype=torch.uint8, device=device.torch_device)
    return images, labels


def setup(args: argparse.Namespace) -> Bench:
    device = Device(args.device, args.default_rank)
    device.manual_seed(args.random_seed)
    device.configure_backends(args.deterministic)
    info = DistInfo()  # one process: the benchmark measures one device
    modes = args.mode.split(",")
    if {"train", "e2e"}.intersection(modes):
        check_batch_norm_batch(args, info, device)
    train_set = loader = None
    num_classes = args.num_classes or SYNTHETIC_CLASSES
    if args.dataset != "synthetic":
        # The synthetic model gets the dataset's class count too, so e2e and train compare like for like.
        train_set, val_set = build_datasets(args, info)
        num_classes = train_set.num_classes
        if DATA_MODES.intersection(modes):
            loader, _ = build_loaders(args, train_set, val_set, info, device)
    bare = setup_model(args, num_classes, device, info, None)
    model = wrap_model(bare, device, info, args)
    # The lr schedule spans the steps this run can take; its values do not change the speed.
    step = make_train_step(model, bare, args, num_classes, device, iters_per_epoch=max(1, args.steps))
    images, labels = synthetic_batch(args.batch_size, args.crop_size, num_classes, device)
    return Bench(args, device, bare, model, step, images, labels, num_classes, train_set, loader)


# ------------------------------------------------------------------------------------------
# timing helpers
# ------------------------------------------------------------------------------------------
class SyncedClock:
    """Host timestamps taken after a device sync, so an interval holds all device work queued in it."""

    def __init__(self, device: Device):
        self.device = device
        self.device.synchronize()
        self.last = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap (or the start)."""
        self.device.synchronize()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def timed_loop(fn, steps: int, warmup: int, device: Device) -> tuple[float, object]:
    """Run ``fn`` warmup times, reset the peak-memory counter, then time ``steps`` calls with one
    device sync at the end (no per-step syncs, as in train.py). Returns (seconds, last result)."""
    for _ in range(warmup):
        fn()
    device.synchronize()
    device.reset_peak_memory()
    clock = SyncedClock(device)
    result = None
    for _ in range(steps):
        result = fn()
    return clock.lap(), result


def endless_batches(loader) -> Iterator:
    """The loader's batches epoch after epoch (new sampler epoch each time, as train.py)."""
    epoch = 0
    while True:
        epoch += 1
        loader.sampler.set_epoch(epoch)
        yield from loader


class LoaderFeed:
    """Batches from a loader, counting the host time spent waiting for them (as train.py's
    data_time): near zero when the workers keep ahead of the step."""

    def __init__(self, loader):
        self.batches = endless_batches(loader)
        self.wait_seconds = 0.0

    def next(self):
        start = time.perf_counter()
        batch = next(self.batches)
        self.wait_seconds += time.perf_counter() - start
        return batch


def peak_memory_gib(device: Device) -> float:
    return device.peak_memory_bytes() / GIB


# ------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------
def count_train_flops(bench: Bench) -> int:
    """FLOPs of one training step's forward + backward on the eager model (the optimizer's
    elementwise update is not counted: torch's counter counts matmuls and convolutions).
    Counted once per run; train and e2e run the same step on the same shapes."""
    if bench.train_flops is not None:
        return bench.train_flops
    eager = dataclasses.replace(bench.step, model=bench.bare)
    bench.bare.train()
    with FlopCounterMode(display=False) as counter:
        loss = eager.forward(*bench.device_batch())
        eager.backward(loss)
    eager.optimizer.zero_grad(set_to_none=True)
    bench.train_flops = int(counter.get_total_flops())
    return bench.train_flops


def count_infer_flops(bench: Bench) -> int:
    bench.bare.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        images, _ = bench.device_batch()
        with bench.device.autocast(bench.step.amp["enabled"], bench.step.amp["dtype"]):
            bench.bare(images)
    return int(counter.get_total_flops())


def loss_fields(loss: torch.Tensor) -> dict:
    """The last step's loss (None when not finite: JSON has no NaN) and whether it was finite."""
    value = float(loss.detach().float())
    finite = math.isfinite(value)
    return {"final_loss": value if finite else None, "loss_finite": finite}


def tflops_per_s(flops: int, seconds_per_step: float) -> float:
    return flops / seconds_per_step / 1e12


# ------------------------------------------------------------------------------------------
# measurements: each returns the mode's fields of its JSON record
# ------------------------------------------------------------------------------------------
def measure_phases(bench: Bench, steps: int) -> dict:
    """Mean ms of each phase of the step, from a pass that syncs after every phase."""
    totals = dict.fromkeys(PHASES, 0.0)
    step = bench.step
    for _ in range(steps):
        clock = SyncedClock(bench.device)
        images, targets = bench.device_batch()
        totals["data"] += clock.lap()
        loss = step.forward(images, targets)
        totals["forward"] += clock.lap()
        step.backward(loss)
        totals["backward"] += clock.lap()
        step.update()
        totals["optimizer"] += clock.lap()
    return {name: 1e3 * seconds / steps for name, seconds in totals.items()}


def measure_train(bench: Bench) -> dict:
    args = bench.args
    flops = count_train_flops(bench)
    bench.model.train()
    seconds, loss = timed_loop(lambda: bench.step(*bench.device_batch()), args.steps, args.warmup, bench.device)
    per_step = seconds / args.steps
    record = {"images_per_s": args.batch_size / per_step, "ms_per_step": 1e3 * per_step,
              "peak_memory_gib": peak_memory_gib(bench.device), "flops_per_step": flops,
              "flops_per_image": flops / args.batch_size, "tflops_per_s": tflops_per_s(flops, per_step),
              **loss_fields(loss),
              "phases_ms": measure_phases(bench, args.steps),
              "phases_note": "separate pass with a device sync after every phase; slightly pessimistic"}
    return record


def measure_infer(bench: Bench) -> dict:
    args = bench.args
    flops = count_infer_flops(bench)
    bench.model.eval()
    amp = bench.step.amp

    def predict():
        images, _ = bench.device_batch()
        with bench.device.autocast(amp["enabled"], amp["dtype"]):
            return bench.model(images)["out"].argmax(1)

    with torch.inference_mode():
        seconds, _ = timed_loop(predict, args.steps, args.warmup, bench.device)
    per_step = seconds / args.steps
    bench.model.train()
    return {"images_per_s": args.batch_size / per_step, "ms_per_step": 1e3 * per_step,
            "peak_memory_gib": peak_memory_gib(bench.device), "flops_per_step": flops,
            "flops_per_image": flops / args.batch_size, "tflops_per_s": tflops_per_s(flops, per_step)}


def best_time(fn, repeats: int) -> float:
    """Shortest of ``repeats`` timings of ``fn()``: the cost without interference from other
    processes (and, for a file read, with the file already in the page cache)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_decode_cost(dataset, sample: int, seed: int, repeats: int = 3) -> dict:
    """Per-image ms of reading (decode + label checks) and of the rest of __getitem__ (the
    augmentations and the CHW copy), single-process with one OpenCV thread, i.e. on one core.
    Each image's figures are the best of ``repeats``: CPU cost, not disk."""
    count = min(sample, len(dataset))
    indices = [round(k * (len(dataset) - 1) / max(1, count - 1)) for k in range(count)]
    previous_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as DataLoader workers run (segzoo.engine.data._loader)
    try:
        decode = sum(best_time(lambda: dataset.load(i), repeats) for i in indices)
        total = sum(best_time(lambda: dataset[(i, sample_seed(seed, 0, i))], repeats) for i in indices)
    finally:
        cv2.setNumThreads(previous_threads)
    return {"decode_ms_per_image": 1e3 * decode / count,
            "augment_ms_per_image": 1e3 * max(total - decode, 0.0) / count,
            "sample_images": count}


def measure_loader(bench: Bench) -> dict:
    args, loader = bench.args, bench.loader
    workers = loader.num_workers
    warmup = max(args.warmup, workers)  # every worker's first batch arrives at once: leave that out
    batches = max(args.steps, LOADER_BATCHES_PER_WORKER * workers)
    batch_iter = endless_batches(loader)
    for _ in range(warmup):
        next(batch_iter)
    start = time.perf_counter()
    images_seen = 0
    for _ in range(batches):
        images, _ = next(batch_iter)
        images_seen += images.shape[0]
    seconds = time.perf_counter() - start
    record = {"images_per_s": images_seen / seconds, "ms_per_step": 1e3 * seconds / batches,
              "workers": workers, "batches": batches,
              **measure_decode_cost(bench.train_set, args.decode_sample, args.random_seed)}
    per_image_ms = record["decode_ms_per_image"] + record["augment_ms_per_image"]
    # What the workers could deliver if each had a core to itself and nothing else cost time.
    record["cpu_bound_images_per_s"] = max(1, workers) * 1e3 / per_image_ms if per_image_ms > 0 else None
    return record


def measure_e2e(bench: Bench, synthetic_images_per_s: float | None) -> dict:
    args, loader = bench.args, bench.loader
    flops = count_train_flops(bench)
    # During warm-up (compilation above all) the workers fill their prefetch queues; consuming
    # that many more batches at full speed drains them, so the timed window sees steady state.
    queued = loader.num_workers * (loader.prefetch_factor or 0)
    warmup = args.warmup + queued
    feed = LoaderFeed(loader)

    def step_from_loader():
        return bench.step(*bench.device_batch(*feed.next()))

    bench.model.train()
    for _ in range(warmup):
        step_from_loader()
    feed.wait_seconds = 0.0
    seconds, loss = timed_loop(step_from_loader, args.steps, 0, bench.device)
    per_step = seconds / args.steps
    images_per_s = args.batch_size / per_step
    return {"images_per_s": images_per_s, "ms_per_step": 1e3 * per_step,
            "peak_memory_gib": peak_memory_gib(bench.device), "tflops_per_s": tflops_per_s(flops, per_step),
            "vs_synthetic": images_per_s / synthetic_images_per_s if synthetic_images_per_s else None,
            "data_wait_ms_per_step": 1e3 * feed.wait_seconds / args.steps,
            "workers": loader.num_workers, "warmup_steps": warmup, **loss_fields(loss)}


# ------------------------------------------------------------------------------------------
# records and the table
# ------------------------------------------------------------------------------------------
def precision_label(args, device: Device) -> str:
    if not args.autocast:
        return "fp32"
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}[device.amp_dtype(args.amp_dtype)]


def base_record(args, device: Device, num_classes: int, output_stride: int) -> dict:
    """The fields every line shares: what ran where, then all settings."""
    return {"tool": "benchmark", "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": str(device.torch_device), "device_name": device.description,
            "torch": torch.__version__, "model_name": args.model_name, "backbone": args.backbone,
            "output_stride": output_stride, "num_classes": num_classes, "batch_size": args.batch_size,
            "crop_size": args.crop_size,
            "precision": precision_label(args, device), "channels_last": args.channels_last,
            "compile": args.compile, "memory_kind": device.memory_label, "steps": args.steps,
            "warmup": args.warmup, "settings": dict(vars(args))}


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def detail(mode: str, r: dict) -> str:
    if mode == "train":
        phases = " / ".join(f"{name} {r['phases_ms'][name]:.1f}" for name in PHASES)
        return f"{phases} ms (synced pass); loss {_num(r['final_loss'], '.3f')}"
    if mode == "infer":
        return f"{r['flops_per_image'] / 1e9:.1f} GFLOP/image"
    if mode == "loader":
        return (f"workers {r['workers']}; per image on one core: decode {r['decode_ms_per_image']:.2f} ms + "
                f"augment {r['augment_ms_per_image']:.2f} ms (x workers: "
                f"{_num(r['cpu_bound_images_per_s'], '.0f')} img/s)")
    ratio = "-" if r["vs_synthetic"] is None else f"{r['vs_synthetic']:.2f}x"
    return f"{ratio} synthetic; waits {r['data_wait_ms_per_step']:.1f} ms/step for data; workers {r['workers']}"


def format_report(records: list[dict]) -> str:
    first = records[0]
    header = (f"{first['model_name']} ({first['backbone']}, OS{first['output_stride']}) on {first['device']} "
              f"[{first['device_name']}], torch {first['torch']}: batch {first['batch_size']}, "
              f"crop {first['crop_size']}, {first['precision']}"
              f"{', channels_last' if first['channels_last'] else ''}{', compiled' if first['compile'] else ''}")
    memory = first["memory_kind"]
    rows = [("mode", "img/s", "ms/step", f"{memory} GiB", "TFLOP/s", "detail")]
    for r in records:
        rows.append((r["mode"], f"{r['images_per_s']:.1f}", f"{r['ms_per_step']:.1f}",
                     _num(r.get("peak_memory_gib"), ".2f"), _num(r.get("tflops_per_s"), ".2f"),
                     detail(r["mode"], r)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [header]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row[:5], widths))) + "  " + row[5])
    if memory != "peak device memory":
        lines.append(f"({memory} is the process's peak so far, not per mode)")
    return "\n".join(lines)


def check_finite(records: list[dict]) -> list[str]:
    """Warnings for a diverged loss: fp16 steps the GradScaler skips would flatter the timing."""
    return [f"warning: the {r['mode']} loss is not finite; skipped optimizer steps make its timing "
            f"unrepresentative (try --amp_dtype bfloat16 or a lower --lr)"
            for r in records if r.get("loss_finite") is False]


# ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[dict]:
    """Run the modes of ``args.mode`` in order; one record (a JSON-able dict) per mode."""
    bench = setup(args)
    trunk = bench.bare.backbone
    base = base_record(args, bench.device, bench.num_classes, trunk.feature_info[trunk.main_index].reduction)
    records = []
    measurements = {"train": measure_train, "infer": measure_infer, "loader": measure_loader}
    for mode in args.mode.split(","):
        print(f"benchmark: {mode} ...", flush=True)
        if mode == "e2e":
            synthetic = next((r["images_per_s"] for r in records if r["mode"] == "train"), None)
            fields = measure_e2e(bench, synthetic)
        else:
            fields = measurements[mode](bench)
        records.append({**base, "mode": mode, **fields})
    return records


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        records = run(args)
    except UserError as err:
        exit_with(err)
    print(format_report(records))
    for warning in check_finite(records):
        print(warning, flush=True)
    lines = [json.dumps(r) for r in records]
    print("\n".join(lines), flush=True)
    if args.json:
        with open(args.json, "a") as out:
            out.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
