"""Cityscapes, ADE20K and PASCAL-Context layouts written from real CamVid images (for the dataset and
config tests): CamVid's classes mapped to each dataset's stored label values, and - written out by
hand, independently of the datasets' label tables - to the training ids they must become."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segzoo.datasets.classes import VOC_PALETTE
from segzoo.datasets.image_io import read_label, write_palette_png

# CamVid ids: 0 sky, 1 building, 2 pole, 3 road, 4 pavement, 5 tree, 6 signsymbol, 7 fence, 8 car,
# 9 pedestrian, 10 bicyclist; 255 void.
CAMVID_TO_STORED = {
    # Cityscapes label ids (the mapping); void -> 0 "unlabeled"
    "cityscapes": {0: 23, 1: 11, 2: 17, 3: 7, 4: 8, 5: 21, 6: 20, 7: 13, 8: 26, 9: 24, 10: 33, 255: 0},
    # ADE20K annotation values (1-based; 0 = other): sky 3, building 2, pole 94, road 7, sidewalk 12, tree 5,
    # signboard 44, fence 33, car 21, person 13, bicycle 128
    "ade20k": {0: 3, 1: 2, 2: 94, 3: 7, 4: 12, 5: 5, 6: 44, 7: 33, 8: 21, 9: 13, 10: 128, 255: 0},
    # PASCAL-Context values (0 = background): sky 47, building 11, pole -> background, road 41, sidewalk 45,
    # tree 53, sign 46, fence 25, car 14, person 37, bicycle 6
    "pascal_context": {0: 47, 1: 11, 2: 0, 3: 41, 4: 45, 5: 53, 6: 46, 7: 25, 8: 14, 9: 37, 10: 6, 255: 0},
}
# What the same CamVid pixels must become as training ids (written out by hand, not derived from the
# tables above or from the datasets' code); None = ignored.
CAMVID_TO_TRAIN_ID = {
    ("cityscapes", 19): {0: 10, 1: 2, 2: 5, 3: 0, 4: 1, 5: 8, 6: 7, 7: 4, 8: 13, 9: 11, 10: 18, 255: None},
    ("ade20k", 150): {0: 2, 1: 1, 2: 93, 3: 6, 4: 11, 5: 4, 6: 43, 7: 32, 8: 20, 9: 12, 10: 127, 255: None},
    ("pascal_context", 59): {0: 46, 1: 10, 2: None, 3: 40, 4: 44, 5: 52, 6: 45, 7: 24, 8: 13, 9: 36, 10: 5,
                             255: None},
    ("pascal_context", 60): {0: 47, 1: 11, 2: 0, 3: 41, 4: 45, 5: 53, 6: 46, 7: 25, 8: 14, 9: 37, 10: 6, 255: 0},
}
SIZE = (96, 72)  # width, height: CamVid's 480x360 scaled down, so evaluation takes a second
TRAIN_IDS, VAL_IDS = 4, 3


def camvid_samples(camvid_root: Path, split: str, count: int) -> list:
    ids = (camvid_root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:count]
    samples = []
    for i in ids:
        image = cv2.resize(cv2.imread(str(camvid_root / "JPEGImages" / f"{i}.jpg")), SIZE, interpolation=cv2.INTER_AREA)
        label = cv2.resize(read_label(camvid_root / "SegmentationClass" / f"{i}.png"), SIZE,
                           interpolation=cv2.INTER_NEAREST)
        samples.append((i, image, label))
    return samples


def remap(label: np.ndarray, table: dict) -> np.ndarray:
    out = np.zeros_like(label)
    for src, dst in table.items():
        out[label == src] = dst
    return out


def write_layout(kind: str, root: Path, samples: dict) -> None:
    """samples: {split: [(id, bgr image, camvid label)]}, written in the official layout of `kind`."""
    table = CAMVID_TO_STORED[kind]
    for split, items in samples.items():
        for i, image, label in items:
            stored = remap(label, table)
            if kind == "cityscapes":
                folder = "train" if split == "train" else "val"
                img = root / "leftImg8bit" / folder / "camvid" / f"{i}_leftImg8bit.png"
                lbl = root / "gtFine" / folder / "camvid" / f"{i}_gtFine_labelIds.png"
            elif kind == "ade20k":
                folder = "training" if split == "train" else "validation"
                img = root / "ADEChallengeData2016" / "images" / folder / f"{i}.jpg"
                lbl = root / "ADEChallengeData2016" / "annotations" / folder / f"{i}.png"
            else:
                img = root / "VOC2010" / "JPEGImages" / f"{i}.jpg"
                lbl = root / "VOC2010" / "SegmentationClassContext" / f"{i}.png"
                lists = root / "VOC2010" / "ImageSets" / "SegmentationContext"
                lists.mkdir(parents=True, exist_ok=True)
                with open(lists / f"{split}.txt", "a") as f:
                    f.write(f"{i}\n")
            img.parent.mkdir(parents=True, exist_ok=True)
            lbl.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img), image)
            if kind == "ade20k":
                cv2.imwrite(str(lbl), stored)  # ADE ships 8-bit grey annotations
            else:
                write_palette_png(lbl, stored, VOC_PALETTE)


def expected_counts(samples: list, kind: str, num_classes: int) -> np.ndarray:
    table = CAMVID_TO_TRAIN_ID[(kind, num_classes)]
    counts = np.zeros(num_classes, dtype=np.int64)
    for _, _, label in samples:
        for src, dst in table.items():
            if dst is not None:
                counts[dst] += int((label == src).sum())
    return counts


