"""PASCAL-VOC-format segmentation datasets (VOC 2007/2012, or anything laid out like it).

Layout, under ``root`` or under the first of ``VOC2012/``, ``VOCdevkit/VOC2012/``,
``VOC2007/``, ``VOCdevkit/VOC2007/`` that exists::

    JPEGImages/<id>.jpg
    SegmentationClassGray/<id>.png   8-bit grey class ids (tools/convert_voc_label.py); preferred
    SegmentationClass/<id>.png       palette PNGs, read as their indices
    ImageSets/Segmentation/<split>.txt   one id per line
    class_names.txt                  optional, one class name per line

Label protocols (255 is always ignored):
  * ``class_names.txt`` present: its names; ``num_classes`` must equal their number.
  * otherwise the 21 VOC classes: ``num_classes=21`` (or None) is the standard protocol
    with background = 0; ``num_classes=20`` ignores background (0 -> 255) and shifts the
    object classes 1..20 to 0..19.
"""
import os
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segzoo.runtime.errors import UserError

from .classes import IGNORE_INDEX, VOC_CLASSES
from .image_io import read_image, read_label

PathLike = Union[str, Path]

#: Sub-folders searched for the VOC layout, in order of preference.
LAYOUT_CANDIDATES = (".", "VOC2012", "VOCdevkit/VOC2012", "VOC2007", "VOCdevkit/VOC2007")
#: Label folders, in order of preference.
LABEL_DIRS = ("SegmentationClassGray", "SegmentationClass")
IMAGE_DIR = "JPEGImages"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
CLASS_NAMES_FILE = "class_names.txt"


def find_voc_root(root: PathLike) -> Path:
    """The folder that holds ``ImageSets/Segmentation``: ``root`` itself or the first of
    its VOC sub-folders (2012 before 2007)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset root {root} does not exist or is not a folder; pass the folder "
                        f"that holds JPEGImages/ and ImageSets/ (or VOCdevkit/)")
    for sub in LAYOUT_CANDIDATES:
        candidate = (root / sub) if sub != "." else root
        if (candidate / SPLIT_DIR).is_dir():
            return candidate
    looked = ", ".join(str(root / sub / SPLIT_DIR) for sub in LAYOUT_CANDIDATES)
    raise UserError(f"no VOC layout under {root}: none of {looked} exists")


class LabelProtocol(NamedTuple):
    class_names: Tuple[str, ...]
    #: Label files may hold ids 0..num_label_values-1 (and 255), checked before remapping.
    num_label_values: int
    #: VOC 20-class protocol: background -> ignore, classes 1..20 -> 0..19.
    drop_background: bool
    #: Where the names came from, for messages and repr.
    source: str


def _read_class_names(path: Path) -> Tuple[str, ...]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise UserError(f"{path} lists no class names; write one name per line")
    return names


def label_protocol(voc_root: Path, num_classes: Optional[int]) -> LabelProtocol:
    """How label values map to classes in the resolved root ``voc_root`` (see module doc)."""
    names_file = voc_root / CLASS_NAMES_FILE
    if names_file.is_file():
        names = _read_class_names(names_file)
        if num_classes is not None and num_classes != len(names):
            raise UserError(f"--num_classes {num_classes} does not match {names_file}, which "
                            f"lists {len(names)} classes; pass --num_classes {len(names)} or leave it out")
        if len(names) > IGNORE_INDEX:
            raise UserError(f"{names_file} lists {len(names)} classes; at most {IGNORE_INDEX} are "
                            f"supported because label value {IGNORE_INDEX} means 'ignore'")
        return LabelProtocol(names, len(names), False, str(names_file))
    if num_classes in (None, len(VOC_CLASSES)):
        return LabelProtocol(VOC_CLASSES, len(VOC_CLASSES), False, "VOC classes")
    if num_classes == len(VOC_CLASSES) - 1:
        return LabelProtocol(VOC_CLASSES[1:], len(VOC_CLASSES), True,
                             "VOC classes without background")
    raise UserError(f"--num_classes {num_classes} does not fit VOC labels (there is no {names_file}): "
                    f"use 21 (background is class 0) or 20 (background ignored), or add "
                    f"{CLASS_NAMES_FILE} with one name per class")


def resolve_num_classes(root: PathLike, num_classes: Optional[int] = None) -> int:
    """The number of classes a model for this dataset needs: checks ``num_classes``
    against the dataset (UserError on mismatch) and infers it when None."""
    return len(label_protocol(find_voc_root(root), num_classes).class_names)


def _read_split(list_file: Path) -> List[str]:
    if not list_file.is_file():
        available = sorted(p.stem for p in list_file.parent.glob("*.txt"))
        raise UserError(f"split list {list_file} not found (available splits: "
                        f"{', '.join(available) or 'none'})")
    try:
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {list_file}: {e}") from None
    if not ids:
        raise UserError(f"split list {list_file} is empty; it should hold one image id per line")
    return ids


def _check_all_exist(paths: Sequence[str], what: str, list_file: Path) -> None:
    """UserError naming the first missing file. One directory listing instead of a stat
    per file keeps this cheap for large splits; ids with sub-folders fall back to stat."""
    listings = {}

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
        raise UserError(f"{missing[0]} not found: {len(missing)} of {len(paths)} ids in {list_file} "
                        f"have no {what}; fix the list or add the files")


def _first_existing_dir(voc_root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (voc_root / name).is_dir():
            return voc_root / name
    raise UserError(f"no label folder in {voc_root}: expected one of {', '.join(names)}")


class VOCSegmentation(Dataset):
    """Images and class-id labels of one split of a VOC-format dataset.

    ``dataset[i]`` or ``dataset[(i, seed)]`` (the pairs SeededDistributedSampler yields)
    returns ``(image, label)``: image ``torch.uint8 (3, H, W)`` RGB, label
    ``torch.uint8 (H, W)`` with class ids and 255 = ignore, both contiguous. With a pair,
    all augmentation randomness comes from ``np.random.default_rng(seed)``; a bare index
    gets fresh, unseeded randomness.

    Args:
        root: dataset folder (the layout may also sit in a VOC sub-folder, see module doc).
        split: list name in ImageSets/Segmentation, e.g. "train", "val".
        num_classes: None to infer; checked against class_names.txt / the VOC protocols.
        transform: ``t(image_hwc_rgb, label_hw, rng) -> (image, label)``, see transforms.py.

    Missing files are reported at construction; unreadable or inconsistent files when
    loaded, always as a UserError naming the file.
    """

    def __init__(self, root: PathLike, split: str, num_classes: Optional[int] = None,
                 transform=None):
        self.root = find_voc_root(root)
        protocol = label_protocol(self.root, num_classes)
        self.class_names = list(protocol.class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self.split = split
        self.transform = transform
        self._protocol = protocol
        self._remap = _background_dropping_lut() if protocol.drop_background else None

        image_dir = self.root / IMAGE_DIR
        if not image_dir.is_dir():
            raise UserError(f"image folder {image_dir} not found")
        self.label_dir = _first_existing_dir(self.root, LABEL_DIRS)
        list_file = self.root / SPLIT_DIR / f"{split}.txt"
        self.ids = _read_split(list_file)
        self._image_paths = [str(image_dir / f"{i}.jpg") for i in self.ids]
        self._label_paths = [str(self.label_dir / f"{i}.png") for i in self.ids]
        _check_all_exist(self._image_paths, "image", list_file)
        _check_all_exist(self._label_paths, f"label in {self.label_dir.name}/", list_file)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> str:
        return self._image_paths[index]

    def label_path(self, index: int) -> str:
        return self._label_paths[index]

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` before transforms: (H, W, 3) uint8 RGB and (H, W) uint8 class
        ids under this dataset's protocol, validated."""
        image_path, label_path = self._image_paths[index], self._label_paths[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise UserError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]} (width x height); "
                            f"labels must match their images")
        self._check_label_values(label, label_path)
        if self._remap is not None:
            label = cv2.LUT(label, self._remap)
        return image, label

    def _check_label_values(self, label: np.ndarray, label_path: str) -> None:
        allowed = self._protocol.num_label_values
        if label.max() < allowed:  # fast path, a few microseconds
            return
        counts = cv2.calcHist([label], [0], None, [256], [0, 256]).ravel()
        counts[IGNORE_INDEX] = 0
        present = np.flatnonzero(counts)
        if present.size and present[-1] >= allowed:
            raise UserError(
                f"{label_path} holds class id {present[-1]}, but {self._protocol.source} allow ids "
                f"0..{allowed - 1} (and {IGNORE_INDEX} = ignore); check --num_classes or the labels")

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
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
        return (f"{type(self).__name__}(root={self.root}, split={self.split!r}, "
                f"{len(self)} images, labels={self.label_dir.name}/, "
                f"num_classes={self.num_classes} ({self._protocol.source}), "
                f"transform={self.transform!r})")


def _background_dropping_lut() -> np.ndarray:
    """VOC 20-class protocol as a 256-entry lookup table: 0 -> 255, k -> k-1, 255 -> 255."""
    lut = np.arange(-1, 255, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut.astype(np.uint8)
