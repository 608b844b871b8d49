"""Same --random_seed, same training batches (after augmentation) whatever the loader worker
count and the process count, so two runs of a port check differ only in arithmetic.

Batches are made on the cpu before they are copied to the device, so the device type does not
enter; what could differ is the worker count (each worker is its own process) and the world
size (each rank draws its share). The sampler hands every sample its own augmentation seed,
sample_seed(seed, epoch, index), so neither matters.
"""
import gc

import pytest
import torch

from segzoo.engine.config import parse_train_args
from segzoo.engine.data import build_datasets, build_loaders
from segzoo.runtime.device import Device
from segzoo.runtime.distributed import DistInfo

EPOCHS = 2


def _args(root, workers: int, batch_size: int):
    return parse_train_args(["--device", "cpu", "--dataset", "demo", "--dataset_path", str(root),
                             "--crop_size", "32", "--batch_size", str(batch_size), "--random_seed", "5",
                             "--workers", str(workers), "--rotate", "10", "--blur", "True"])


def _batches(root, workers: int = 0, batch_size: int = 2, world_size: int = 1, rank: int = 0) -> list:
    """[(epoch, images, labels)] of this rank over EPOCHS epochs, as train.py iterates them."""
    args = _args(root, workers, batch_size)
    info = DistInfo(rank=rank, world_size=world_size, local_rank=rank)
    train_set, val_set = build_datasets(args, info)
    loader, _ = build_loaders(args, train_set, val_set, info, Device("cpu"))
    result = []
    for epoch in range(EPOCHS):
        loader.sampler.set_epoch(epoch)
        result += [(epoch, images, labels) for images, labels in loader]
    # Persistent workers otherwise live until garbage collection, possibly at interpreter exit:
    # stop them here, inside the test.
    del loader
    gc.collect()
    return result


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b) and a
    for (epoch_a, img_a, lab_a), (epoch_b, img_b, lab_b) in zip(a, b):
        assert epoch_a == epoch_b
        assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)


@pytest.mark.slow
def test_worker_count_does_not_change_the_batches(tiny_dataset):
    _assert_same(_batches(tiny_dataset, workers=0), _batches(tiny_dataset, workers=2))


def test_epochs_differ_and_augmentation_is_on(tiny_dataset):
    # Guards the test above: the batches are augmented and reshuffled, so equality means something.
    batches = _batches(tiny_dataset)
    first, second = batches[0], batches[len(batches) // EPOCHS]
    assert not torch.equal(first[1], second[1])


def test_two_processes_draw_the_same_global_batches_as_one(tiny_dataset):
    """World size 2 with batch B per rank = world size 1 with batch 2B: step s of the single
    process holds exactly the samples of step s of both ranks, rank r's i-th sample at position
    2i + r (the sampler deals the shuffled order out round-robin), with the same augmentation."""
    single = _batches(tiny_dataset, batch_size=4)
    ranks = [_batches(tiny_dataset, batch_size=2, world_size=2, rank=r) for r in range(2)]
    merged = []
    for (epoch, img0, lab0), (_, img1, lab1) in zip(*ranks):
        merged.append((epoch, torch.stack([img0, img1], 1).flatten(0, 1), torch.stack([lab0, lab1], 1).flatten(0, 1)))
    _assert_same(single, merged)
