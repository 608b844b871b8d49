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
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple, Union

from segzoo.runtime.errors import UserError

from . import DATASETS
from .base import LabelTable, SegmentationDataset, read_list_file
from .classes import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE

PathLike = Union[str, Path]

#: Sub-folders searched for the VOC layout, in order of preference.
LAYOUT_CANDIDATES = (".", "VOC2012", "VOCdevkit/VOC2012", "VOC2007", "VOCdevkit/VOC2007")
#: Label folders, in order of preference.
LABEL_DIRS = ("SegmentationClassGray", "SegmentationClass")
IMAGE_DIR = "JPEGImages"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
CLASS_NAMES_FILE = "class_names.txt"
#: The original launcher's default class count for VOC data without class_names.txt.
ORIGINAL_DEFAULT_CLASSES = 20


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
            raise UserError(f"‹num_classes› {num_classes} does not match {names_file}, which "
                            f"lists {len(names)} classes; pass ‹num_classes› {len(names)} or leave it out")
        if len(names) > IGNORE_INDEX:
            raise UserError(f"{names_file} lists {len(names)} classes; at most {IGNORE_INDEX} are "
                            f"supported because label value {IGNORE_INDEX} means 'ignore'")
        return LabelProtocol(names, len(names), False, str(names_file))
    if num_classes in (None, len(VOC_CLASSES)):
        return LabelProtocol(VOC_CLASSES, len(VOC_CLASSES), False, "VOC classes")
    if num_classes == len(VOC_CLASSES) - 1:
        return LabelProtocol(VOC_CLASSES[1:], len(VOC_CLASSES), True,
                             "VOC classes without background")
    raise UserError(f"‹num_classes› {num_classes} does not fit VOC labels (there is no {names_file}): "
                    f"use 21 (background is class 0) or 20 (background ignored), or add "
                    f"{CLASS_NAMES_FILE} with one name per class")


def resolve_num_classes(root: PathLike, num_classes: Optional[int] = None) -> int:
    """The number of classes a model for this dataset needs: checks ``num_classes``
    against the dataset (UserError on mismatch) and infers it when None."""
    return len(label_protocol(find_voc_root(root), num_classes).class_names)


def _first_existing_dir(voc_root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (voc_root / name).is_dir():
            return voc_root / name
    raise UserError(f"no label folder in {voc_root}: expected one of {', '.join(names)}")


@DATASETS.register("voc", summary="PASCAL VOC 2007/2012 or any VOC-format folder (class_names.txt for custom classes)")
class VOCSegmentation(SegmentationDataset):
    """One split of a VOC-format dataset (see the module doc for the layout and protocols).

    Args:
        root: dataset folder (the layout may also sit in a VOC sub-folder, see module doc).
        split: list name in ImageSets/Segmentation, e.g. "train", "val".
        num_classes: None to infer; checked against class_names.txt / the VOC protocols.
        transform: ``t(image_hwc_rgb, label_hw, rng) -> (image, label)``, see transforms.py.

    Missing files are reported at construction; unreadable or inconsistent files when
    loaded, always as a UserError naming the file.
    """

    @classmethod
    def default_num_classes(cls, root, ckpt_classes: Optional[int]) -> Optional[int]:
        """class_names.txt's length (None lets the dataset infer it), else the checkpoint's
        (test/resume: picks the 20 or 21 class protocol), else the original's 20-class protocol.
        class_names.txt comes first because it is authoritative: a checkpoint of another class
        count is then refused by check_compatible, naming --ckpt, instead of the dataset blaming a
        --num_classes the user never passed."""
        if (find_voc_root(root) / CLASS_NAMES_FILE).is_file():
            return None
        return ckpt_classes if ckpt_classes is not None else ORIGINAL_DEFAULT_CLASSES

    def __init__(self, root: PathLike, split: str, num_classes: Optional[int] = None, transform=None):
        voc_root = find_voc_root(root)
        protocol = label_protocol(voc_root, num_classes)
        image_dir = voc_root / IMAGE_DIR
        if not image_dir.is_dir():
            raise UserError(f"image folder {image_dir} not found")
        self.label_dir = _first_existing_dir(voc_root, LABEL_DIRS)
        list_file = voc_root / SPLIT_DIR / f"{split}.txt"
        self.ids = read_list_file(list_file)
        if protocol.drop_background:
            table = LabelTable.from_mapping({k: k - 1 for k in range(1, protocol.num_label_values)}, protocol.source,
                                            allowed_values=[0])
        else:
            table = LabelTable.identity(protocol.num_label_values, protocol.source)
        self._protocol = protocol
        super().__init__(voc_root, split, [str(image_dir / f"{i}.jpg") for i in self.ids],
                         [str(self.label_dir / f"{i}.png") for i in self.ids], protocol.class_names,
                         VOC_PALETTE, table, transform, list_source=list_file)
