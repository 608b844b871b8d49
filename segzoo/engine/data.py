"""Datasets and data loaders of a run, from its flags.

Training: random scale / crop / flip (+ optional rotate, blur), DistributedSampler semantics
with per-sample augmentation seeds, last partial batch dropped (BatchNorm dislikes a batch of 1).
Evaluation: centre crops (--crop_val True) or whole images, every image on exactly one rank.
"""
from __future__ import annotations

from pathlib import Path

import cv2

from torch.utils.data import DataLoader

from segzoo.runtime import distributed as dist
from segzoo.runtime.errors import UserError

from segzoo.datasets import DATASETS
from segzoo.datasets.collate import size_group_collate
from segzoo.engine.config import component_options
from segzoo.datasets.sampler import SeededDistributedSampler, UnpaddedDistributedSampler
from segzoo.datasets.transforms import build_train_transform, build_val_transform

def build_dataset(args, split: str, num_classes: int | None, transform):
    """One split of the dataset ``--dataset`` names, with the options it declares."""
    entry = DATASETS.get(args.dataset)
    return entry.obj.from_config(args.dataset_path, split, num_classes, transform,
                                 **component_options(args, DATASETS, args.dataset))


def build_datasets(args, info, ckpt: dict | None = None):
    """(train_set or None under --test_only, val_set)."""
    root = Path(args.dataset_path)
    prepare = DATASETS.get(args.dataset).extra.get("prepare")
    if prepare is not None:  # e.g. the demo data, written once by the main rank
        if info.is_main:
            prepare(root)
        dist.barrier()
    ckpt_classes = int(ckpt["num_classes"]) if ckpt is not None and ckpt.get("num_classes") else None
    num_classes = (args.num_classes if args.num_classes is not None
                   else DATASETS.get(args.dataset).obj.default_num_classes(root, ckpt_classes))
    val_crop = args.crop_size if args.crop_val else None
    val_set = build_dataset(args, "val", num_classes, build_val_transform(val_crop))
    if args.test_only:
        return None, val_set
    train_tf = build_train_transform(args.crop_size, scale=(args.scale_min, args.scale_max), rotate=args.rotate,
                                     blur=args.blur)
    train_set = build_dataset(args, "train", val_set.num_classes, train_tf)
    return train_set, val_set


def _loader(dataset, sampler, batch_size, args, pin_memory, train: bool) -> DataLoader:
    workers = args.workers
    if workers:
        # One OpenCV thread per process (the workers are many processes; its own pool would
        # oversubscribe the cores), set here, before the workers are forked: OpenCV's thread pool
        # does not survive fork, and setting it inside a worker whose parent had started the pool
        # (e.g. writing the demo data) deadlocked.
        cv2.setNumThreads(1)
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=train, collate_fn=None if train else size_group_collate, **extra)


def build_loaders(args, train_set, val_set, info, device):
    """(train_loader or None, val_loader); pinned memory only where there is a device to copy to."""
    pin = device.is_accelerator
    val_sampler = UnpaddedDistributedSampler(len(val_set), info.world_size, info.rank)
    val_loader = _loader(val_set, val_sampler, args.val_batch_size, args, pin, train=False)
    if train_set is None:
        return None, val_loader
    per_rank = len(train_set) // info.world_size
    if per_rank < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size} is larger than the {per_rank} training images each of the "
                        f"{info.world_size} process(es) gets from {len(train_set)}; lower --batch_size")
    train_sampler = SeededDistributedSampler(len(train_set), info.world_size, info.rank, shuffle=True,
                                             seed=args.random_seed, drop_last=True)
    train_loader = _loader(train_set, train_sampler, args.batch_size, args, pin, train=True)
    return train_loader, val_loader
