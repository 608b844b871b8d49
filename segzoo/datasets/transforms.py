"""Paired augmentations for segmentation, on numpy arrays before they become tensors.

Every transform is called as ``t(image, label, rng) -> (image, label)`` with ``image`` an
(H, W, 3) uint8 RGB array, ``label`` an (H, W) uint8 class-id array (255 = ignore) and
``rng`` a ``numpy.random.Generator`` that supplies ALL randomness, so a sample's
augmentation depends only on the seed its sampler hands out (see datasets/sampler.py),
not on worker count or process state. Outputs may be non-contiguous views; the dataset
makes them contiguous once, when it converts to CHW tensors.

Geometry follows semseg (Zhao et al.): scale -> rotate -> blur -> flip -> crop, with
image borders filled with the mean colour (zero after normalisation) and label borders
with the ignore index.

Normalisation is NOT a transform: images travel as uint8 (4x less host memory and
host-to-device traffic) and ``normalize`` runs on the accelerator.
"""
import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from .classes import IGNORE_INDEX

#: ImageNet statistics on the 0..255 scale, RGB order.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
#: The mean colour as uint8, used to fill image borders.
MEAN_RGB_UINT8 = tuple(int(round(m)) for m in MEAN)

Size = Union[int, Sequence[int]]
Pair = Tuple[np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=None)
def _affine_constants(device: torch.device):
    # Cached so the train loop does not pay a host-to-device copy per batch.
    scale = torch.tensor([1.0 / s for s in STD], dtype=torch.float32).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(MEAN, STD)], dtype=torch.float32).view(1, 3, 1, 1)
    return scale.to(device), shift.to(device)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB (on any device) -> ``(images - MEAN) / STD`` as ``dtype``.

    Computed in float32 (one fused multiply-add) and cast at the end, so half-precision
    outputs are rounded once. The memory format of ``images`` is kept.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W) images, got shape {tuple(images.shape)}")
    scale, shift = _affine_constants(images.device)
    out = torch.addcmul(shift, images.to(torch.float32), scale)
    return out.to(dtype)


def to_hw(size: Size) -> Tuple[int, int]:
    """An int or (h, w) crop size -> (h, w) of positive ints."""
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return h, w


class Compose:
    """Apply transforms in order, threading the same rng through all of them."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(t) for t in self.transforms)})"


class RandomScale:
    """Resize by a factor drawn uniformly from [min_scale, max_scale]: bilinear for the
    image, nearest for the label (class ids must not be interpolated)."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, image, label, rng):
        factor = rng.uniform(self.min_scale, self.max_scale)
        h, w = label.shape
        size = (max(1, round(w * factor)), max(1, round(h * factor)))  # cv2 wants (w, h)
        return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))

    def __repr__(self):
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomRotate:
    """With probability p, rotate about the centre by an angle uniform in
    [-max_degrees, max_degrees], keeping the size. Uncovered corners: label 255, image
    the mean colour (``fill="mean"``) or black (``fill="zero"``)."""

    def __init__(self, max_degrees: float, p: float = 0.5, fill: str = "mean"):
        if fill not in ("mean", "zero"):
            raise ValueError(f"fill must be 'mean' or 'zero', got {fill!r}")
        self.max_degrees, self.p, self.fill = max_degrees, p, fill
        self._image_fill = MEAN_RGB_UINT8 if fill == "mean" else (0, 0, 0)

    def __call__(self, image, label, rng):
        # Draw both numbers unconditionally so later transforms see the same stream.
        apply, angle = rng.random() < self.p, rng.uniform(-self.max_degrees, self.max_degrees)
        if not apply:
            return image, label
        h, w = label.shape
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=self._image_fill)
        label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_INDEX)
        return image, label

    def __repr__(self):
        return f"RandomRotate({self.max_degrees}, p={self.p}, fill={self.fill!r})"


class RandomGaussianBlur:
    """With probability p, blur the image (5x5 Gaussian, sigma from the kernel size, as
    semseg); the label is unchanged."""

    def __init__(self, p: float = 0.5, kernel_size: int = 5):
        self.p, self.kernel_size = p, kernel_size

    def __call__(self, image, label, rng):
        if rng.random() < self.p:
            image = cv2.GaussianBlur(image, (self.kernel_size, self.kernel_size), 0)
        return image, label

    def __repr__(self):
        return f"RandomGaussianBlur(p={self.p}, kernel_size={self.kernel_size})"


class RandomHorizontalFlip:
    """With probability p, mirror image and label left-right (as views, no copy)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label, rng):
        if rng.random() < self.p:
            return image[:, ::-1], label[:, ::-1]
        return image, label

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def _pad_to(image: np.ndarray, label: np.ndarray, height: int, width: int) -> Pair:
    """Pad evenly on both sides up to at least (height, width): image with the mean
    colour, label with the ignore index."""
    h, w = label.shape
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    if pad_h == 0 and pad_w == 0:
        return image, label
    top, left = pad_h // 2, pad_w // 2
    border = (top, pad_h - top, left, pad_w - left)
    return (cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=MEAN_RGB_UINT8),
            cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=IGNORE_INDEX))


class _Crop:
    """Pad (if smaller) then cut a (h, w) window; subclasses choose where."""

    def __init__(self, size: Size):
        self.size = to_hw(size)

    def _offset(self, spare_h: int, spare_w: int, rng) -> Tuple[int, int]:
        raise NotImplementedError

    def __call__(self, image, label, rng):
        ch, cw = self.size
        image, label = _pad_to(image, label, ch, cw)
        h, w = label.shape
        top, left = self._offset(h - ch, w - cw, rng)
        return image[top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]

    def __repr__(self):
        return f"{type(self).__name__}({self.size})"


class RandomCrop(_Crop):
    """Crop a (h, w) window at a uniformly random position; images smaller than the
    window are first padded (mean colour / ignore)."""

    def _offset(self, spare_h, spare_w, rng):
        return int(rng.integers(0, spare_h + 1)), int(rng.integers(0, spare_w + 1))


class CenterCrop(_Crop):
    """Crop the central (h, w) window, padding (mean colour / ignore) when smaller."""

    def _offset(self, spare_h, spare_w, rng):
        return spare_h // 2, spare_w // 2


def build_train_transform(crop_size: Size, scale: Optional[Tuple[float, float]] = (0.5, 2.0),
                          rotate: float = 0, blur: bool = False, flip: bool = True) -> Compose:
    """The training pipeline: random scale (None or (1, 1) = off), rotation of half the
    samples by up to ``rotate`` degrees (0 = off), Gaussian blur of half the samples,
    horizontal flip of half the samples and a random crop of ``crop_size`` (int or
    (h, w); any size works)."""
    transforms = []
    if scale is not None and tuple(scale) != (1, 1):
        transforms.append(RandomScale(*scale))
    if rotate > 0:
        transforms.append(RandomRotate(rotate))
    if blur:
        transforms.append(RandomGaussianBlur())
    if flip:
        transforms.append(RandomHorizontalFlip())
    transforms.append(RandomCrop(crop_size))
    return Compose(transforms)


def build_val_transform(crop_size: Optional[Size] = None) -> Compose:
    """Evaluation pipeline: a centre crop of ``crop_size``, or the whole image untouched
    when None (batches of different sizes are grouped by segzoo.datasets.collate.size_group_collate)."""
    return Compose([] if crop_size is None else [CenterCrop(crop_size)])
