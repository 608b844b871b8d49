"""Batching for whole-image evaluation, where images in a batch differ in size."""
from typing import List, Sequence, Tuple

import torch
from torch.utils.data import default_collate

from .classes import IGNORE_INDEX


def size_group_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """[(image (3, H_i, W_i), label (H_i, W_i)), ...] -> [(images (n, 3, H, W), labels (n, H, W)), ...],
    one stacked group per distinct size, groups in order of first appearance, samples in batch order
    within a group. A same-size batch is a single group (still batched).

    The validation loader uses it instead of padding: a padded image's zeros reach global
    pooling (PSPNet's 1x1 bin, ASPP's image pool, EncNet's encoding), so its prediction would
    depend on its batch-mates (issue 9: --val_batch_size 4 gave another mIoU than 1).
    """
    groups: dict = {}
    for image, label in batch:
        groups.setdefault(tuple(label.shape), []).append((image, label))
    # default_collate stacks straight into shared memory inside DataLoader workers.
    return [(default_collate([s[0] for s in samples]), default_collate([s[1] for s in samples]))
            for samples in groups.values()]


def pad_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(image (3, H_i, W_i), label (H_i, W_i)), ...] -> (images (N, 3, H, W),
    labels (N, H, W)) with H, W the batch maxima. Images are padded with 0 and labels
    with the ignore index at the bottom/right, so the padding never counts in a metric
    and the valid region keeps its top-left origin. Same-size batches are just stacked.

    Not for evaluating models with global pooling: the zero padding changes their output
    (use size_group_collate).
    """
    images, labels = zip(*batch)
    height = max(label.shape[0] for label in labels)
    width = max(label.shape[1] for label in labels)
    if all(label.shape == (height, width) for label in labels):
        # default_collate stacks straight into shared memory inside DataLoader workers.
        return default_collate(images), default_collate(labels)
    first_image, first_label = images[0], labels[0]
    padded_images = first_image.new_zeros((len(images), first_image.shape[0], height, width))
    padded_labels = first_label.new_full((len(labels), height, width), IGNORE_INDEX)
    for i, (image, label) in enumerate(zip(images, labels)):
        h, w = label.shape
        padded_images[i, :, :h, :w] = image
        padded_labels[i, :h, :w] = label
    return padded_images, padded_labels
