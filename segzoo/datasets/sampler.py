"""Distributed samplers.

Training: ``SeededDistributedSampler`` partitions exactly like
``torch.utils.data.DistributedSampler`` (same permutation for the same seed and epoch,
same padding / dropping, same rank slicing) but yields ``(index, sample_seed)`` pairs.
The dataset draws all augmentation randomness from ``np.random.default_rng(sample_seed)``,
so a sample's augmentation is a pure function of (seed, epoch, index): it does not change
with the number of DataLoader workers, with persistent workers, or when a run resumes.

Evaluation: ``UnpaddedDistributedSampler`` gives every sample to exactly one rank, so
metrics summed over ranks count each image once (DistributedSampler pads with repeats).
"""
import math
from typing import Iterator, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler


def _check_rank(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, "
                         f"got num_replicas={num_replicas}, rank={rank}")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample: SeedSequence hashes (seed, epoch, index) so
    neighbouring indices and epochs get unrelated streams."""
    entropy = (seed % 2**64, epoch, index)
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


class SeededDistributedSampler(Sampler):
    """This rank's share of a shuffled epoch, as ``(index, sample_seed)`` pairs.

    Args:
        dataset_len: number of samples in the dataset.
        num_replicas, rank: world size and this process's rank (1 and 0 without DDP).
        shuffle: permute with ``torch.randperm`` seeded by ``seed + epoch`` (as torch).
        seed: shared by all ranks; also the root of the per-sample augmentation seeds.
        drop_last: drop the tail so every rank gets ``len // num_replicas`` samples;
            otherwise pad with repeated indices up to a multiple of ``num_replicas``.
    """

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        _check_rank(num_replicas, rank)
        self.dataset_len, self.num_replicas, self.rank = int(dataset_len), num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        self.skip = 0
        if drop_last:
            self.num_samples = self.dataset_len // num_replicas
        else:
            self.num_samples = math.ceil(self.dataset_len / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Call before iterating each epoch; a new epoch means a new order and new seeds.
        ``skip``: leave out this rank's first `skip` samples of the epoch (those a run that was
        stopped mid-epoch already trained on), so a resumed run sees exactly the rest."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in 0..{self.num_samples}, got {skip}")
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list:
        """This rank's dataset indices for the current epoch, in order."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            order = list(range(self.dataset_len))
        if self.total_size > len(order) and order:
            repeats = math.ceil(self.total_size / len(order))
            order = (order * repeats)[:self.total_size]
        else:
            order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for index in self.indices()[self.skip:]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples - self.skip


class UnpaddedDistributedSampler(Sampler):
    """Evaluation order: rank r gets indices r, r + R, r + 2R, ... (no shuffle, no padding,
    no duplicates), so ranks may differ in length by one."""

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0):
        _check_rank(num_replicas, rank)
        self._indices = range(rank, int(dataset_len), num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Accepted for symmetry with the training sampler; the order never changes."""

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)
