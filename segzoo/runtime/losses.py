"""Training criterion over the model's output dict.

loss = L(out) + aux_weight * L(aux) + sum of the model's own extra terms
where L is cross entropy or focal loss (Lin et al., ICCV 2017) with 255 ignored. Extra terms
(EncNet's semantic-encoding loss) belong to the head that produces them: the criterion only
adds what ``extra_losses(outputs, target)`` of the model returns.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255
LOSS_TYPES = ("cross_entropy", "focal_loss")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over non-ignored pixels of (1 - p_t)^gamma * CE. logits (N, K, H, W), target (N, H, W)."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    pt = torch.exp(-ce)
    loss = (1.0 - pt).pow(gamma) * ce
    return loss.sum() / valid.sum().clamp_min(1)


class SegmentationCriterion(nn.Module):
    """Args:
        num_classes: K.
        loss_type: "cross_entropy" or "focal_loss" (pixel loss of "out" and "aux").
        aux_weight: weight of the auxiliary head's loss.
        focal_gamma: focusing parameter of the focal loss.
        extra_losses: ``f(outputs, target) -> {name: weighted scalar}``, the model's own terms
            (``EncoderDecoder.extra_losses``), or None.
    """

    def __init__(self, num_classes: int, loss_type: str = "cross_entropy", aux_weight: float = 0.4,
                 focal_gamma: float = 2.0, extra_losses: Callable | None = None):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
        self.num_classes = num_classes
        self.loss_type = loss_type
        self.aux_weight = aux_weight
        self.focal_gamma = focal_gamma
        self.extra_losses = extra_losses

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "focal_loss":
            return focal_loss(logits, target, self.focal_gamma)
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)

    def forward(self, outputs: dict, target: torch.Tensor) -> torch.Tensor:
        loss = self.pixel_loss(outputs["out"], target)
        if "aux" in outputs and self.aux_weight > 0:
            loss = loss + self.aux_weight * self.pixel_loss(outputs["aux"], target)
        if self.extra_losses is not None:
            for term in self.extra_losses(outputs, target).values():
                loss = loss + term
        return loss
