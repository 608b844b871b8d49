"""A small synthetic VOC-format dataset, so the runner can be tried (and tested end to
end) without downloading anything.

Each image shows 2-5 objects (ellipses and polygons, some overlapping) of the first five
VOC classes on a textured, noisy background. A class is recognisable by its appearance:
a base colour plus a class-specific texture (horizontal stripes, vertical stripes,
checkerboard, dots, diagonal stripes), with per-image colour jitter and pixel noise, so
a small model learns it in a few epochs but not from one pixel alone. Labels are VOC-style
palette PNGs with a one-pixel void (255) border between regions, as VOC has.
"""
import json
import shutil
from pathlib import Path
from typing import Sequence, Tuple, Union

import cv2
import numpy as np

from segzoo.runtime.atomic import atomic_write
from segzoo.runtime.errors import UserError

from . import DATASETS
from .classes import IGNORE_INDEX, VOC_CLASSES, VOC_PALETTE
from .image_io import write_palette_png
from .voc import VOCSegmentation

PathLike = Union[str, Path]

DEMO_CLASSES = VOC_CLASSES[:6]  # background + aeroplane, bicycle, bird, boat, bottle
STAMP_FILE = ".demo_stamp.json"
_LOCK_FILE = ".demo.lock"
_OWNED_DIRS = ("JPEGImages", "SegmentationClass", "SegmentationClassGray", "ImageSets")
_FORMAT_VERSION = 1  # bump when the generator changes, so stale demo data is rewritten
_JPEG_QUALITY = 90

# Class id -> (base RGB colour, texture). Colours are saturated, the background is not.
_CLASS_STYLES = {
    1: ((215, 60, 50), "horizontal"),
    2: ((50, 165, 70), "vertical"),
    3: ((55, 85, 215), "checker"),
    4: ((225, 195, 45), "dots"),
    5: ((185, 70, 195), "diagonal"),
}


def _texture(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 pattern in [-1, 1] with a random period and phase."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(5.0, 9.0)
    phase = rng.uniform(0, 2 * np.pi)
    wave = 2 * np.pi / period
    if kind == "horizontal":
        return np.sin(wave * y + phase)
    if kind == "vertical":
        return np.sin(wave * x + phase)
    if kind == "diagonal":
        return np.sin(wave * (x + y) / np.sqrt(2) + phase)
    if kind == "checker":
        return np.sign(np.sin(wave * x + phase) * np.sin(wave * y + phase))
    if kind == "dots":
        return np.where(np.cos(wave * x + phase) * np.cos(wave * y) > 0.5, 1.0, -0.6).astype(np.float32)
    raise ValueError(kind)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32: a smooth field of muted colours."""
    coarse = rng.uniform(70, 170, size=(max(2, height // 16), max(2, width // 16), 3))
    # Pull towards grey so objects' saturated colours stand out.
    coarse = 0.6 * coarse + 0.4 * coarse.mean(axis=2, keepdims=True)
    return cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)


def _shape_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 mask (1 inside) of a random ellipse or polygon."""
    mask = np.zeros((height, width), dtype=np.uint8)
    short_side = min(height, width)
    center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
    radius = rng.uniform(0.12, 0.35) * short_side
    if rng.random() < 0.5:
        axes = (int(radius), int(radius * rng.uniform(0.5, 1.0)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    else:
        num_vertices = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, num_vertices))
        radii = radius * rng.uniform(0.6, 1.0, num_vertices)
        points = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask


def _void_borders(label: np.ndarray) -> None:
    """Mark in place, as VOC does, the pixels where the class changes to the right or
    below with the ignore index."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    label[edge] = IGNORE_INDEX


def make_demo_sample(height: int, width: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic sample: (H, W, 3) uint8 RGB image and (H, W) uint8 label."""
    image = _background(height, width, rng)
    image += 12 * _texture(str(rng.choice(["horizontal", "vertical", "diagonal"])), height, width,
                           rng)[..., None]  # background texture, weaker than the objects'
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        class_id = int(rng.integers(1, len(DEMO_CLASSES)))
        colour, kind = _CLASS_STYLES[class_id]
        inside = _shape_mask(height, width, rng).astype(bool)
        jittered = np.asarray(colour, np.float32) + rng.normal(0, 12, 3).astype(np.float32)
        appearance = jittered + 45 * _texture(kind, height, width, rng)[..., None]
        image[inside] = appearance[inside]
        label[inside] = class_id
    image += rng.normal(0, 10, image.shape).astype(np.float32)
    _void_borders(label)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _read_stamp(root: Path):
    try:
        return json.loads((root / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_stamp(root: Path, stamp: dict) -> None:
    atomic_write(root / STAMP_FILE, lambda file: file.write(json.dumps(stamp, indent=1).encode()))


def _split_ids(num_train: int, num_val: int) -> dict:
    return {"train": [f"demo_train_{i:04d}" for i in range(num_train)],
            "val": [f"demo_val_{i:04d}" for i in range(num_val)]}


def _is_complete(root: Path, stamp, wanted: dict) -> bool:
    if stamp != dict(wanted, complete=True):
        return False
    ids = [i for split in _split_ids(wanted["num_train"], wanted["num_val"]).values() for i in split]
    return all((root / "JPEGImages" / f"{i}.jpg").is_file()
               and (root / "SegmentationClass" / f"{i}.png").is_file() for i in ids)


class _DirLock:
    """Exclusive lock on a file in ``root``, so ranks of one job that all call
    ensure_demo_dataset write the data once (the others wait, then see the stamp)."""

    def __init__(self, root: Path):
        self.path = root / _LOCK_FILE
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a")
        try:
            import fcntl  # POSIX only; elsewhere concurrent writers are not guarded
            fcntl.flock(self.file, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the lock


def make_demo_dataset(root: PathLike, num_train: int = 48, num_val: int = 17,
                      size: Sequence[int] = (96, 128), seed: int = 0) -> bool:
    """Write the demo dataset (VOC layout, class_names.txt with 6 names) to ``root``.

    Args:
        root: folder to write; created if needed. A folder with VOC data that this
            function did not write is refused (UserError), never overwritten.
        num_train, num_val: number of images per split (val is odd by default on purpose,
            to exercise uneven distributed evaluation).
        size: (height, width) of every image.
        seed: generator seed; the same arguments always give the same files.

    Returns:
        True if files were written, False if a complete dataset with the same parameters
        was already there (recorded in ``.demo_stamp.json``).
    """
    root = Path(root).expanduser()
    height, width = (int(s) for s in size)
    if num_train < 1 or num_val < 1 or height < 8 or width < 8:
        raise UserError(f"demo dataset needs >= 1 train and val image and size >= 8x8, got "
                        f"num_train={num_train}, num_val={num_val}, size={height}x{width}")
    wanted = {"version": _FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
              "size": [height, width], "seed": seed}
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create demo dataset folder {root}: {e.strerror or e}") from None
    with _DirLock(root):
        stamp = _read_stamp(root)
        if _is_complete(root, stamp, wanted):
            return False
        if stamp is None and any((root / d).exists() for d in (*_OWNED_DIRS, "class_names.txt")):
            raise UserError(f"{root} already holds a dataset that is not demo data (no {STAMP_FILE}); "
                            f"choose an empty folder for the demo data")
        for d in _OWNED_DIRS:  # ours (stamped): clear stale files from other parameters
            shutil.rmtree(root / d, ignore_errors=True)
        _write_stamp(root, dict(wanted, complete=False))
        _write_files(root, wanted)
        _write_stamp(root, dict(wanted, complete=True))
    return True


def _write_files(root: Path, params: dict) -> None:
    height, width = params["size"]
    image_dir, label_dir = root / "JPEGImages", root / "SegmentationClass"
    list_dir = root / "ImageSets" / "Segmentation"
    for d in (image_dir, label_dir, list_dir):
        d.mkdir(parents=True, exist_ok=True)
    splits = _split_ids(params["num_train"], params["num_val"])
    for split_code, (split, ids) in enumerate(splits.items()):
        for i, sample_id in enumerate(ids):
            rng = np.random.default_rng([params["seed"], split_code, i])
            image, label = make_demo_sample(height, width, rng)
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(image_dir / f"{sample_id}.jpg"), bgr,
                               [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
                raise UserError(f"cannot write {image_dir / sample_id}.jpg")
            write_palette_png(label_dir / f"{sample_id}.png", label, VOC_PALETTE)
        (list_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (root / "class_names.txt").write_text("".join(f"{name}\n" for name in DEMO_CLASSES))


def ensure_demo_dataset(root: PathLike) -> Path:
    """The ``--dataset demo`` helper: make sure a demo dataset exists at ``root`` (writing the
    default one once) and return ``root`` as a Path. A complete demo dataset of other parameters
    already there (``tools/make_demo_data.py --num_train 8``) is used as it is, never rewritten:
    a run must not replace the data another run or a user made."""
    root = Path(root).expanduser()
    stamp = _read_stamp(root)
    if stamp is not None and stamp.get("complete") and stamp.get("version") == _FORMAT_VERSION:
        wanted = {k: stamp[k] for k in ("version", "num_train", "num_val", "size", "seed") if k in stamp}
        if _is_complete(root, stamp, wanted):
            return root
    make_demo_dataset(root)
    return root


@DATASETS.register("demo", summary="built-in synthetic VOC-format data, written on first use (default data/demo)",
                   default_path="data/demo", prepare=ensure_demo_dataset)
class DemoSegmentation(VOCSegmentation):
    """The demo data (``make_demo_dataset``), read as the VOC-format dataset it is."""
