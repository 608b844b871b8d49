"""VOC-format segmentation data: dataset, paired transforms, samplers, collate, demo data.

    from segzoo.datasets import VOCSegmentation, build_train_transform, SeededDistributedSampler
    ds = VOCSegmentation(root, "train", transform=build_train_transform(512))
    loader = DataLoader(ds, batch_size=8, sampler=SeededDistributedSampler(len(ds), world, rank))
    images = normalize(images_uint8.to(device), torch.float32)   # on the device
"""
from segzoo.registry import Registry

#: Dataset layouts by --dataset name; each module of this package registers its own.
DATASETS = Registry("dataset", "segzoo.datasets")

from .classes import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE
from .collate import size_group_collate
from .demo import DEMO_CLASSES, ensure_demo_dataset, make_demo_dataset
from .sampler import SeededDistributedSampler, UnpaddedDistributedSampler, sample_seed
from .transforms import (MEAN, STD, CenterCrop, Compose, RandomCrop, RandomGaussianBlur,
                         RandomHorizontalFlip, RandomRotate, RandomScale, build_train_transform,
                         build_val_transform, normalize)
from .voc import VOCSegmentation, find_voc_root, resolve_num_classes

__all__ = [
    "DATASETS",
    "IGNORE_INDEX", "VOC_CLASSES", "VOC_PALETTE", "DEMO_CLASSES",
    "VOCSegmentation", "find_voc_root", "resolve_num_classes",
    "MEAN", "STD", "normalize", "Compose", "RandomScale", "RandomRotate", "RandomGaussianBlur",
    "RandomHorizontalFlip", "RandomCrop", "CenterCrop", "build_train_transform",
    "build_val_transform",
    "SeededDistributedSampler", "UnpaddedDistributedSampler", "sample_seed",
    "size_group_collate", "make_demo_dataset", "ensure_demo_dataset",
]
