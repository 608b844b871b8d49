"""Cityscapes (Cordts et al., CVPR 2016): 19 training classes of urban street scenes.

Layouts under ``--dataset_path``:
  * official:  ``leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png`` and
    ``gtFine/{split}/<city>/<name>_gtFine_labelTrainIds.png`` (written by cityscapesscripts'
    ``createTrainIdLabelImgs``) or, when those are absent, ``<name>_gtFine_labelIds.png``, whose 34
    label ids are mapped to the 19 training ids by the official table below;
  * SemSegPaddle's list files: ``trainLabels.txt`` / ``valLabels.txt`` beside ``leftImg8bit`` and
    ``gtFine``, one "IMAGE LABEL" pair of relative paths per line (used when present).
Label files named ``*_labelIds.png`` are mapped, any other label file is read as training ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from segzoo.runtime.errors import UserError

from . import DATASETS
from .base import LabelTable, SegmentationDataset, check_num_classes, read_pairs, require_dir

#: The 19 training classes, by training id.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

#: Their colours (cityscapesscripts' labels.py), by training id.
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

#: label id -> training id for the 34 label ids 0..33 (cityscapesscripts' labels.py); the ids
#: not listed (unlabeled, ego vehicle, ..., caravan, trailer) are ignored.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34

LABEL_ID_TABLE = LabelTable.from_mapping(LABEL_ID_TO_TRAIN_ID, "Cityscapes labelIds (0..33)",
                                         allowed_values=range(NUM_LABEL_IDS))
TRAIN_ID_TABLE = LabelTable.identity(len(CITYSCAPES_CLASSES), "Cityscapes labelTrainIds (0..18)")
LIST_FILES = {"train": "trainLabels.txt", "val": "valLabels.txt", "test": "testLabels.txt"}


def _official_pairs(root: Path, split: str) -> list[tuple[str, str]]:
    images = require_dir(root / "leftImg8bit" / split, "Cityscapes image folder",
                         "pass the folder that holds leftImg8bit/ and gtFine/")
    labels = require_dir(root / "gtFine" / split, "Cityscapes label folder",
                         "download gtFine_trainvaltest.zip and unpack it beside leftImg8bit/")
    pairs = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        train_ids = labels / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        label = train_ids if train_ids.is_file() else labels / image.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((str(image), str(label)))
    if not pairs:
        raise UserError(f"no *_leftImg8bit.png images under {images}/<city>/")
    return pairs


@DATASETS.register("cityscapes", summary="Cityscapes, 19 classes (official layout or SemSegPaddle list files)")
class Cityscapes(SegmentationDataset):
    """One split ("train", "val", "test") of Cityscapes; see the module doc for the layouts."""

    def __init__(self, root, split: str, num_classes: int | None = None, transform=None):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UserError(f"dataset root {root} does not exist or is not a folder")
        check_num_classes(num_classes, {19: "the 19 training classes"}, "Cityscapes")
        list_file = root / LIST_FILES.get(split, f"{split}Labels.txt")
        pairs = read_pairs(list_file, root) if list_file.is_file() else _official_pairs(root, split)
        labels = [label for _, label in pairs]
        # One table per dataset: the label kind is read off the file names.
        id_files = [p.endswith("_labelIds.png") for p in labels]
        if any(id_files) and not all(id_files):
            raise UserError(f"{root}: the {split} split mixes *_labelIds.png and other label files; "
                            "use one kind (run createTrainIdLabelImgs to write *_labelTrainIds.png for all)")
        table = LABEL_ID_TABLE if all(id_files) else TRAIN_ID_TABLE
        super().__init__(root, split, [i for i, _ in pairs], labels, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, table,
                         transform, list_source=list_file if list_file.is_file() else root)
