"""Training criterion over the model's output dict {"out", "aux", "se"}.

loss = L(out) + aux_weight * L(aux) + se_weight * BCE(se, classes present)
where L is cross entropy or focal loss (Lin et al., ICCV 2017) with 255 ignored, and the
semantic-encoding term is EncNet's (Zhang et al., CVPR 2018).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = 255


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over non-ignored pixels of (1 - p_t)^gamma * CE. logits (N, K, H, W), target (N, H, W)."""
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    pt = torch.exp(-ce)
    loss = (1.0 - pt).pow(gamma) * ce
    return loss.sum() / valid.sum().clamp_min(1)


def class_presence(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, K) float: 1 where class k occurs in image n (ignored pixels do not count)."""
    n = target.shape[0]
    flat = target.reshape(n, -1).long()
    valid = flat < num_classes
    # one scatter per batch, no Python loop over images
    presence = torch.zeros(n, num_classes + 1, device=target.device)
    presence.scatter_(1, torch.where(valid, flat, num_classes), 1.0)
    return presence[:, :num_classes]


class SegmentationCriterion(nn.Module):
    def __init__(self, num_classes: int, loss_type: str = "cross_entropy", aux_weight: float = 0.4,
                 se_weight: float = 0.2, focal_gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.loss_type = loss_type
        self.aux_weight = aux_weight
        self.se_weight = se_weight
        self.focal_gamma = focal_gamma

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "focal_loss":
            return focal_loss(logits, target, self.focal_gamma)
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)

    def forward(self, outputs: dict, target: torch.Tensor) -> torch.Tensor:
        loss = self.pixel_loss(outputs["out"], target)
        if "aux" in outputs and self.aux_weight > 0:
            loss = loss + self.aux_weight * self.pixel_loss(outputs["aux"], target)
        if "se" in outputs and self.se_weight > 0:
            presence = class_presence(target, self.num_classes)
            loss = loss + self.se_weight * F.binary_cross_entropy_with_logits(outputs["se"].float(), presence)
        return loss
