"""Optimizers with a 10x head learning rate (semseg practice) and per-iteration lr schedules."""
from __future__ import annotations

import math

import torch

from segzoo.runtime.errors import UserError

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def param_groups(model, lr: float, head_lr_mult: float) -> list:
    """Backbone at lr, everything else (heads) at lr * head_lr_mult."""
    backbone = [p for p in model.backbone_parameters() if p.requires_grad]
    head = [p for p in model.head_parameters() if p.requires_grad]
    return [{"params": backbone, "lr": lr, "lr_mult": 1.0}, {"params": head, "lr": lr * head_lr_mult, "lr_mult": head_lr_mult}]


def build_optimizer(model, args, fused: bool) -> torch.optim.Optimizer:
    """fused=True picks the single-kernel CUDA implementation; otherwise PyTorch's foreach default."""
    if args.optimizer not in OPTIMIZERS:
        raise UserError(f"‹optimizer› {args.optimizer!r} is not known; choose one of {', '.join(OPTIMIZERS)}")
    groups = param_groups(model, args.lr, args.head_lr_mult)
    kwargs = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        kwargs["momentum"] = args.momentum
    if fused:
        kwargs["fused"] = True
    return OPTIMIZERS[args.optimizer](groups, **kwargs)


def lr_factor(policy: str, it: int, total: int, iters_per_epoch: int, step_epochs: int, power: float,
              warmup: int) -> float:
    """Multiplier of the base lr after `it` finished iterations of `total`. The step policy
    multiplies by 0.1 every `step_epochs` units of `iters_per_epoch` iterations (pass 1 as
    iters_per_epoch for a step size counted in iterations)."""
    if warmup and it < warmup:
        return (it + 1) / warmup
    if policy == "poly":
        return (1.0 - min(it, total - 1) / total) ** power
    if policy == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
    if policy == "step":
        return 0.1 ** ((it // iters_per_epoch) // step_epochs)
    raise UserError(f"‹lr_policy› {policy!r} is not known; choose poly, step or cosine")


def build_scheduler(optimizer, args, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule over --iters iterations (--step then counts iterations), else over
    --epoch epochs of `iters_per_epoch` (--step counts epochs)."""
    iters = getattr(args, "iters", None)
    total = max(1, iters if iters else args.epoch * iters_per_epoch)
    step_unit = 1 if iters else iters_per_epoch

    def factor(it: int) -> float:
        return lr_factor(args.lr_policy, it, total, step_unit, args.step, args.poly_power, args.warmup_iters)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
