"""The model of a run, from its flags: build, load weights, SyncBatchNorm, placement, wrapping.

Shared by train.py, tools/benchmark.py and tools/predict.py so all three build the same model.
"""
from __future__ import annotations

import argparse

import torch

from segzoo.engine.config import component_options
from segzoo.models import MODELS, build_model
from segzoo.models.backbones import BACKBONES
from segzoo.runtime.checkpoint import check_compatible, load_model_weights
from segzoo.runtime.errors import UserError


def model_from_args(args: argparse.Namespace, num_classes: int, pretrained: str | None = None) -> torch.nn.Module:
    """The segmentor the flags describe (on the cpu, randomly initialised unless `pretrained`):
    the model and backbone each get the options they declare."""
    options = {**component_options(args, MODELS, args.model_name), **component_options(args, BACKBONES, args.backbone)}
    options["pretrained"] = pretrained
    return build_model(args.model_name, num_classes, backbone=args.backbone, aux=args.aux_weight > 0,
                       dropout=args.dropout, crop_size=args.crop_size, align_corners=args.align_corners, **options)


def use_sync_bn(args, info, device) -> bool:
    """SyncBatchNorm under DDP: on by default on accelerators; PyTorch has none for the cpu."""
    return info.enabled and (args.sync_bn == "true" or (args.sync_bn == "auto" and device.is_accelerator))


def check_batch_norm_batch(args, info, device) -> None:
    """BatchNorm over one image fails in the 1x1 pooling branches (PSPNet bin 1, ASPP image pool)."""
    if args.batch_size < 2 and not args.test_only and not use_sync_bn(args, info, device):
        raise UserError("--batch_size 1 leaves BatchNorm one image per step; use --batch_size 2 or more "
                        "(or SyncBatchNorm over several devices: --distributed True --sync_bn True)")


def setup_model(args, num_classes: int, device, info, ckpt: dict | None) -> torch.nn.Module:
    """Built, checkpoint weights loaded (refusing another model's), SyncBN-converted under DDP,
    on the device, channels_last if asked."""
    model = model_from_args(args, num_classes, pretrained=args.pretrained)
    if ckpt is not None:
        check_compatible(ckpt, args.ckpt, args.model_name, num_classes, args.backbone)
        load_model_weights(model, ckpt["model"], args.ckpt)
    if use_sync_bn(args, info, device):
        model = device.convert_sync_batchnorm(model)
    model.to(device.torch_device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap_model(model: torch.nn.Module, device, info, args) -> torch.nn.Module:
    """DDP for gradient averaging, then optionally torch.compile (which sees through DDP)."""
    if info.enabled:
        ids = [device.index] if device.is_accelerator else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        model = torch.compile(model)
    return model
