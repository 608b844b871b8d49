"""What every segmentation dataset shares: paired image/label files, a label table, class names
and colours, validation with one-line errors, seeded augmentation.

A dataset module subclasses ``SegmentationDataset``, finds its files in ``__init__`` and hands
them to ``SegmentationDataset.__init__`` with a ``LabelTable``; it registers itself in
``segzoo.datasets.DATASETS`` with ``@DATASETS.register(name, options=...)`` and a classmethod
``from_config(root, split, num_classes, transform, **options)``. That is all: the command
line, the per-class tables and ``tools/predict.py`` take names and colours from the instance.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segzoo.runtime.errors import OptionError, UserError

from .classes import IGNORE_INDEX
from .image_io import read_image, read_label

PathLike = Union[str, Path]


class LabelTable(NamedTuple):
    """How the values stored in label files become training ids.

    lut: (256,) uint8, stored value -> class id 0..K-1 or 255 (ignore).
    allowed: (256,) bool, which stored values may occur at all; anything else is an error
        naming the file and the value (a label from another dataset or protocol).
    source: where the table comes from, for messages ("Cityscapes labelIds").
    """

    lut: np.ndarray
    allowed: np.ndarray
    source: str

    @staticmethod
    def identity(num_classes: int, source: str) -> "LabelTable":
        """Stored values are the class ids 0..K-1; 255 is ignored."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        lut[:num_classes] = np.arange(num_classes, dtype=np.uint8)
        allowed = np.zeros(256, dtype=bool)
        allowed[:num_classes] = True
        allowed[IGNORE_INDEX] = True
        return LabelTable(lut, allowed, source)

    @staticmethod
    def from_mapping(mapping: dict, source: str, allowed_values: Sequence[int] = ()) -> "LabelTable":
        """Stored value -> class id for the values in ``mapping``; ``allowed_values`` (and 255)
        may also occur and are ignored."""
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        allowed = np.zeros(256, dtype=bool)
        allowed[IGNORE_INDEX] = True
        for stored, class_id in mapping.items():
            lut[stored] = class_id
            allowed[stored] = True
        allowed[list(allowed_values)] = True
        return LabelTable(lut, allowed, source)


def read_list_file(path: Path) -> list[str]:
    """Non-empty lines of a list file, stripped; tolerates a UTF-8 BOM, CRLF and trailing spaces."""
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise UserError(f"list file {path} not found (files there: {', '.join(available) or 'none'})")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    entries = [line.strip() for line in lines if line.strip()]
    if not entries:
        raise UserError(f"list file {path} is empty; it should hold one entry per line")
    return entries


def check_all_exist(paths: Sequence[str], what: str, source: PathLike) -> None:
    """UserError naming the first missing file. One directory listing instead of a stat per
    file keeps this cheap for large splits; paths in other folders fall back to stat."""
    listings: dict[str, set] = {}

    def exists(path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        return name in listings[folder] or os.path.isfile(path)

    missing = [p for p in paths if not exists(p)]
    if missing:
        raise UserError(f"{missing[0]} not found: {len(missing)} of {len(paths)} entries of {source} "
                        f"have no {what}; fix the list or add the files")


def require_dir(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a folder, else a UserError naming it (``hint`` says what to do)."""
    if not path.is_dir():
        raise UserError(f"{what} {path} not found; {hint}")
    return path


def check_num_classes(num_classes, protocols: dict, dataset: str) -> int:
    """The class count of the chosen protocol; ``protocols`` maps allowed counts to a
    description, the first being the default."""
    if num_classes is None:
        return next(iter(protocols))
    if num_classes not in protocols:
        options = "; ".join(f"{k}: {v}" for k, v in protocols.items())
        raise OptionError("num_classes", num_classes, f"does not fit {dataset} ({options})")
    return num_classes


class SegmentationDataset(Dataset):
    """Images and class-id labels of one split.

    ``dataset[i]`` or ``dataset[(i, seed)]`` (the pairs SeededDistributedSampler yields)
    returns ``(image, label)``: image ``torch.uint8 (3, H, W)`` RGB, label ``torch.uint8 (H, W)``
    with class ids and 255 = ignore, both contiguous. With a pair, all augmentation randomness
    comes from ``np.random.default_rng(seed)``; a bare index gets fresh, unseeded randomness.

    Args (for subclasses):
        root, split: where the data is and which split, for messages.
        image_paths, label_paths: the files, in matching order (checked to exist).
        class_names: K names; ``palette``: (>= K, 3) uint8 RGB colours of the class ids.
        table: ``LabelTable`` from stored label values to class ids.
        transform: ``t(image_hwc_rgb, label_hw, rng) -> (image, label)``, see transforms.py.
    """

    def __init__(self, root: PathLike, split: str, image_paths: Sequence[str], label_paths: Sequence[str],
                 class_names: Sequence[str], palette: np.ndarray, table: LabelTable, transform=None,
                 list_source: PathLike | None = None):
        self.root = Path(root)
        self.split = split
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.ignore_index = IGNORE_INDEX
        self.table = table
        self.transform = transform
        self._image_paths = [str(p) for p in image_paths]
        self._label_paths = [str(p) for p in label_paths]
        source = list_source or self.root
        if not self._image_paths:
            raise UserError(f"no images found for split {split!r} under {source}")
        check_all_exist(self._image_paths, "image", source)
        check_all_exist(self._label_paths, "label", source)
        # Stored values that pass unchanged need no table look-up (VOC, custom data).
        self._needs_lut = not np.array_equal(table.lut[table.allowed], np.flatnonzero(table.allowed))

    @classmethod
    def default_num_classes(cls, root, ckpt_classes: int | None) -> int | None:
        """--num_classes when none is given: the checkpoint's (test/resume), else None, which picks
        the dataset's default protocol."""
        return ckpt_classes

    @classmethod
    def from_config(cls, root, split: str, num_classes, transform, **options) -> "SegmentationDataset":
        """The registry's constructor: the split of the dataset at ``root`` with the options the
        dataset declared (subclasses take ``(root, split, num_classes, transform, **options)``)."""
        return cls(root, split, num_classes, transform, **options)

    def __len__(self) -> int:
        return len(self._image_paths)

    def image_path(self, index: int) -> str:
        return self._image_paths[index]

    def label_path(self, index: int) -> str:
        return self._label_paths[index]

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` before transforms: (H, W, 3) uint8 RGB and (H, W) uint8 class ids,
        validated (sizes match, every stored label value belongs to the table)."""
        image_path, label_path = self._image_paths[index], self._label_paths[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise UserError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]} (width x height); "
                            f"labels must match their images")
        self._check_label_values(label, label_path)
        if self._needs_lut:
            label = cv2.LUT(label, self.table.lut)
        return image, label

    def _check_label_values(self, label: np.ndarray, label_path: str) -> None:
        counts = cv2.calcHist([label], [0], None, [256], [0, 256]).ravel()
        bad = np.flatnonzero((counts > 0) & ~self.table.allowed)
        if bad.size:
            allowed = np.flatnonzero(self.table.allowed)
            raise UserError(
                f"{label_path} holds label value {bad[0]}, which {self.table.source} do not have "
                f"(allowed: {_ranges(allowed)}); check ‹dataset›, ‹num_classes› or the labels")

    def __getitem__(self, item):
        if isinstance(item, (tuple, list)):
            index, seed = item
        else:
            index, seed = item, None  # default_rng(None) draws fresh OS entropy
        image, label = self.load(int(index))
        if self.transform is not None:
            image, label = self.transform(image, label, np.random.default_rng(seed))
        # HWC -> CHW is the one copy on this path; it also makes flipped/cropped views
        # contiguous. The label only copies when a transform left it as a view.
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        label = torch.from_numpy(np.ascontiguousarray(label))
        return image, label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root}, split={self.split!r}, {len(self)} images, "
                f"num_classes={self.num_classes} ({self.table.source}), transform={self.transform!r})")


def _ranges(values: np.ndarray) -> str:
    """[0 1 2 3 7 255] -> "0..3, 7, 255"."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}..{v}" if v > start else f"{v}")
            start = None
    return ", ".join(parts)


def read_pairs(list_file: Path, root: Path) -> list[tuple[str, str]]:
    """(image, label) paths from a list file of "IMAGE LABEL" lines (PaddleSeg's format), paths
    relative to ``root`` unless absolute; a line without a second path is an error naming it."""
    pairs = []
    for number, line in enumerate(read_list_file(list_file), 1):
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{list_file} line {number}: expected 'IMAGE_PATH LABEL_PATH', got {line!r}")
        pairs.append(tuple(str(p if Path(p).is_absolute() else root / p) for p in parts))
    return pairs
