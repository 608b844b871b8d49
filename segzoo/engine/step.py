"""One training step, shared by train.py's epoch loop and tools/benchmark.py.

The step is split into its phases (forward, backward, update) so the benchmark can time each
one with a device sync in between, while ``TrainStep.__call__`` runs them back to back exactly
as the training loop does:

    images, targets = to_device_batch(images, targets, device, channels_last)
    with autocast: loss = criterion(model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer); scaler.update(); scheduler.step()

"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from segzoo.datasets.transforms import normalize
from segzoo.runtime.device import Device
from segzoo.runtime.losses import SegmentationCriterion
from segzoo.runtime.optim import build_optimizer, build_scheduler


def to_device_batch(images: torch.Tensor, targets: torch.Tensor, device: Device,
                    channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 images and (N, H, W) uint8 labels from the loader -> normalised float32
    images and int64 labels on the device.

    Images travel as uint8 (4x fewer bytes than float) and are normalised on the device; the
    copies are non-blocking, which overlaps them with compute when the loader pins memory.
    """
    images = images.to(device.torch_device, non_blocking=True)
    targets = targets.to(device.torch_device, non_blocking=True).long()
    images = normalize(images)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets


def amp_settings(args, device: Device) -> dict:
    """{"enabled", "dtype"} of ``--autocast`` / ``--amp_dtype`` (the dtype resolved per device)."""
    return {"enabled": bool(args.autocast), "dtype": device.amp_dtype(args.amp_dtype)}


@dataclass
class TrainStep:
    """Forward, loss, backward and optimizer update of one batch.

    Args:
        model: the module to train (possibly DDP- and/or torch.compile-wrapped); returns the
            output dict of ``models.EncoderDecoder``.
        criterion: ``SegmentationCriterion`` over that dict.
        optimizer, scheduler: stepped once per call (the lr schedule is per iteration).
        scaler: ``Device.grad_scaler``; a disabled one is a no-op (bf16 / fp32).
        device: the device shim, for autocast.
        amp: {"enabled": bool, "dtype": torch.dtype}, see ``amp_settings``.
    """

    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: Device
    amp: dict

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss of normalised (N, 3, H, W) images against (N, H, W) int64 labels."""
        with self.device.autocast(self.amp["enabled"], self.amp["dtype"]):
            outputs = self.model(images)
            return self.criterion(outputs, targets)

    def backward(self, loss: torch.Tensor) -> None:
        """Fresh gradients of ``loss`` (scaled under fp16 autocast)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()

    def update(self) -> None:
        """Optimizer step (skipped by the scaler on inf/NaN gradients), scaler and lr update."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One full step; returns the (undetached) loss, still on the device (no host sync)."""
        loss = self.forward(images, targets)
        self.backward(loss)
        self.update()
        return loss


def make_train_step(model: torch.nn.Module, bare_model: torch.nn.Module, args, num_classes: int,
                    device: Device, iters_per_epoch: int) -> TrainStep:
    """The step train.py runs, built from its flags.

    Args:
        model: what the forward pass calls (DDP / compiled wrapper, or the model itself).
        bare_model: the unwrapped ``EncoderDecoder``, whose backbone/head parameter groups the
            optimizer needs (10x head lr).
        args: train.py's parsed flags (loss, optimizer, lr schedule, autocast).
        num_classes: K of the criterion (EncNet's class-presence target).
        device: the device shim (fused optimizer, GradScaler, autocast).
        iters_per_epoch: the scheduler's unit; the schedule spans ``args.epoch`` epochs of it.
    """
    amp = amp_settings(args, device)
    criterion = SegmentationCriterion(num_classes, args.loss_type, args.aux_weight, args.focal_gamma,
                                      extra_losses=bare_model.extra_losses)
    optimizer = build_optimizer(bare_model, args, fused=device.supports_fused_optimizer())
    scheduler = build_scheduler(optimizer, args, iters_per_epoch)
    # Only fp16 needs loss scaling: bf16 has fp32's exponent range.
    scaler = device.grad_scaler(amp["enabled"] and amp["dtype"] == torch.float16)
    return TrainStep(model, criterion, optimizer, scheduler, scaler, device, amp)
