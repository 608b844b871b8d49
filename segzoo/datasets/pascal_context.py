"""PASCAL-Context (Mottaghi et al., CVPR 2014): VOC 2010 images labelled with 59 frequent classes
plus background.

Layouts under ``--dataset_path``:
  * mmsegmentation's converted PNGs (its ``pascal_context.py`` conversion with the Detail API):
    ``JPEGImages/*.jpg``, ``SegmentationClassContext/*.png``,
    ``ImageSets/SegmentationContext/{train,val}.txt`` - at the root, in ``VOC2010/`` or in
    ``VOCdevkit/VOC2010/``;
  * SemSegPaddle's ``pascal_context/`` folder: ``pascal_context_{train,val}.txt`` list files of
    "IMAGE LABEL" pairs (or bare ids, read as ``JPEGImages/<id>.jpg`` and
    ``GroundTruth_trainval_png/<id>.png``).
Label values are 0 = background and 1..59 the classes. ``--num_classes 59`` (the usual benchmark)
ignores background and maps 1..59 to 0..58; ``--num_classes 60`` keeps background as class 0.
"""
from __future__ import annotations

from pathlib import Path

from segzoo.runtime.errors import UserError

from . import DATASETS
from .base import (LabelTable, SegmentationDataset, check_num_classes, read_list_file, read_pairs,
                   require_dir)
from .classes import distinct_palette

CONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)
assert len(CONTEXT_CLASSES) == 59

PROTOCOLS = {59: "59 classes, background ignored (the usual benchmark)", 60: "background + 59 classes"}
TABLES = {
    59: LabelTable.from_mapping({v: v - 1 for v in range(1, 60)}, "PASCAL-Context labels (0 = background, 1..59)",
                                allowed_values=[0]),
    60: LabelTable.identity(60, "PASCAL-Context labels (0 = background, 1..59)"),
}
MMSEG_SUBDIRS = (".", "VOC2010", "VOCdevkit/VOC2010")


def _mmseg_pairs(root: Path, split: str):
    for sub in MMSEG_SUBDIRS:
        base = root if sub == "." else root / sub
        list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if list_file.is_file():
            labels = require_dir(base / "SegmentationClassContext", "PASCAL-Context label folder",
                                 "convert the Detail API annotations with mmsegmentation's pascal_context.py")
            ids = read_list_file(list_file)
            return [(str(base / "JPEGImages" / f"{i}.jpg"), str(labels / f"{i}.png")) for i in ids], list_file
    return None


def _paddle_pairs(root: Path, split: str):
    for base in (root, root / "pascal_context"):
        list_file = base / f"pascal_context_{split}.txt"
        if list_file.is_file():
            lines = read_list_file(list_file)
            if all(len(line.split()) == 1 for line in lines):
                return [(str(base / "JPEGImages" / f"{i}.jpg"), str(base / "GroundTruth_trainval_png" / f"{i}.png"))
                        for i in lines], list_file
            return read_pairs(list_file, base), list_file
    return None


@DATASETS.register("pascal_context", summary="PASCAL-Context, 59 classes (or 60 with background)")
class PascalContext(SegmentationDataset):
    """One split ("train" or "val") of PASCAL-Context; see the module doc for layouts and protocols."""

    def __init__(self, root, split: str, num_classes: int | None = None, transform=None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UserError(f"dataset root {root} does not exist or is not a folder")
        num_classes = check_num_classes(num_classes, PROTOCOLS, "PASCAL-Context")
        found = _mmseg_pairs(root, split) or _paddle_pairs(root, split)
        if found is None:
            raise UserError(f"no PASCAL-Context layout under {root}: expected "
                            f"ImageSets/SegmentationContext/{split}.txt (mmsegmentation's conversion, also in "
                            f"VOC2010/) or pascal_context_{split}.txt (SemSegPaddle)")
        pairs, list_file = found
        names = CONTEXT_CLASSES if num_classes == 59 else ("background", *CONTEXT_CLASSES)
        super().__init__(root, split, [i for i, _ in pairs], [lbl for _, lbl in pairs], names,
                         distinct_palette(len(names)), TABLES[num_classes], transform, list_source=list_file)
