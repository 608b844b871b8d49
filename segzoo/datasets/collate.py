"""Batching for whole-image evaluation, where images in a batch differ in size."""
from typing import Sequence, Tuple

import torch
from torch.utils.data import default_collate

from .classes import IGNORE_INDEX


def pad_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(image (3, H_i, W_i), label (H_i, W_i)), ...] -> (images (N, 3, H, W),
    labels (N, H, W)) with H, W the batch maxima. Images are padded with 0 and labels
    with the ignore index at the bottom/right, so the padding never counts in a metric
    and the valid region keeps its top-left origin. Same-size batches are just stacked.
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
