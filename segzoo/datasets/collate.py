"""Batching for whole-image evaluation, where images in a batch differ in size."""
from typing import List, Sequence, Tuple

import torch
from torch.utils.data import default_collate


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
