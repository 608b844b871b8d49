"""ADE20K / SceneParsing (Zhou et al., CVPR 2017), the 150-class ADEChallengeData2016 release.

Layout under ``--dataset_path`` (or its ``ADEChallengeData2016/`` sub-folder):
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``. Label value 0
("other") is ignored and 1..150 become class ids 0..149 (mmsegmentation's reduce_zero_label).
Colours: no official palette ships with the data, so ``distinct_palette`` is used.
"""
from __future__ import annotations

from pathlib import Path

from segzoo.runtime.errors import UserError

from . import DATASETS
from .base import LabelTable, SegmentationDataset, check_num_classes, require_dir
from .classes import distinct_palette

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150

SPLIT_FOLDERS = {"train": "training", "val": "validation"}
LABEL_TABLE = LabelTable.from_mapping({v: v - 1 for v in range(1, 151)}, "ADE20K annotations (0 = other, 1..150)",
                                      allowed_values=[0])


def find_ade_root(root: Path) -> Path:
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() or (candidate / "annotations").is_dir():
            return candidate
    raise UserError(f"no ADE20K layout under {root}: expected images/ and annotations/ there or in "
                    f"{root / 'ADEChallengeData2016'} (unpack ADEChallengeData2016.zip)")


@DATASETS.register("ade20k", summary="ADE20K (ADEChallengeData2016), 150 classes, label 0 ignored")
class ADE20K(SegmentationDataset):
    """One split ("train" or "val") of ADEChallengeData2016."""

    def __init__(self, root, split: str, num_classes: int | None = None, transform=None):
        root = find_ade_root(Path(root).expanduser())
        check_num_classes(num_classes, {150: "the 150 SceneParsing classes"}, "ADE20K")
        if split not in SPLIT_FOLDERS:
            raise UserError(f"ADE20K has the splits {', '.join(SPLIT_FOLDERS)}, not {split!r}")
        folder = SPLIT_FOLDERS[split]
        images = require_dir(root / "images" / folder, "ADE20K image folder", "unpack ADEChallengeData2016.zip")
        labels = require_dir(root / "annotations" / folder, "ADE20K annotation folder",
                             "unpack ADEChallengeData2016.zip (it holds annotations/ beside images/)")
        image_paths = sorted(images.glob("*.jpg"))
        super().__init__(root, split, image_paths, [str(labels / f"{p.stem}.png") for p in image_paths],
                         ADE20K_CLASSES, distinct_palette(len(ADE20K_CLASSES)), LABEL_TABLE, transform,
                         list_source=images)
