"""Cityscapes, ADE20K and PASCAL-Context layouts, built in the test from real CamVid images.

Each layout is written the way the official download (or its conversion) lays it out, with CamVid's
classes mapped to the target dataset's stored label values. The expected per-class pixel counts
are computed here from CamVid's own labels and a CamVid -> training-id table written in this file,
independently of the datasets' label tables; an evaluation through train.py must count exactly
those pixels (the rows of its confusion matrix), on 1 and on 2 processes.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segzoo.datasets import DATASETS
from segzoo.datasets.classes import VOC_PALETTE
from segzoo.datasets.image_io import read_label, write_palette_png
from segzoo.engine.data import build_dataset
from segzoo.runtime.errors import UserError
from tests.helpers import assert_one_line_error, free_port, run_launcher, snapshot

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


@pytest.fixture(scope="module")
def samples(camvid_root) -> dict:
    return {"train": camvid_samples(camvid_root, "train", TRAIN_IDS), "val": camvid_samples(camvid_root, "val", VAL_IDS)}


@pytest.fixture(scope="module")
def layouts(samples, tmp_path_factory) -> dict:
    roots = {}
    for kind in CAMVID_TO_STORED:
        roots[kind] = tmp_path_factory.mktemp(kind)
        write_layout(kind, roots[kind], samples)
    return roots


class Flags:
    """The few flags build_dataset reads."""

    def __init__(self, dataset, path):
        self.dataset, self.dataset_path = dataset, str(path)


@pytest.mark.parametrize("kind, num_classes", list(CAMVID_TO_TRAIN_ID))
def test_labels_become_training_ids(kind, num_classes, layouts, samples):
    ds = build_dataset(Flags(kind, layouts[kind]), "val", num_classes, None)
    assert ds.num_classes == num_classes and len(ds.class_names) == num_classes and len(ds) == VAL_IDS
    assert ds.palette.shape[0] >= num_classes
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.shape == (3, SIZE[1], SIZE[0]) and label.shape == (SIZE[1], SIZE[0])
        values = label.numpy()
        counts += np.bincount(values[values != 255], minlength=num_classes)
    np.testing.assert_array_equal(counts, expected_counts(samples["val"], kind, num_classes))


def test_cityscapes_prefers_train_id_files_and_reads_list_files(layouts, samples, tmp_path):
    import shutil
    root = tmp_path / "cityscapes"
    shutil.copytree(layouts["cityscapes"], root)
    # createTrainIdLabelImgs output beside the labelIds files is used directly.
    table = CAMVID_TO_TRAIN_ID[("cityscapes", 19)]
    for i, _, label in samples["val"]:
        train_ids = remap(label, {k: (255 if v is None else v) for k, v in table.items()})
        write_palette_png(root / "gtFine" / "val" / "camvid" / f"{i}_gtFine_labelTrainIds.png", train_ids, VOC_PALETTE)
    ds = build_dataset(Flags("cityscapes", root), "val", None, None)
    assert all(p.endswith("_labelTrainIds.png") for p in ds._label_paths)
    counts = sum(np.bincount(ds[k][1].numpy().ravel(), minlength=256)[:19] for k in range(len(ds)))
    np.testing.assert_array_equal(counts, expected_counts(samples["val"], "cityscapes", 19))
    # SemSegPaddle's list file (with a BOM and CRLF line ends) takes precedence.
    first = samples["val"][0][0]
    (root / "valLabels.txt").write_bytes(
        f"\ufeffleftImg8bit/val/camvid/{first}_leftImg8bit.png gtFine/val/camvid/{first}_gtFine_labelIds.png \r\n"
        .encode("utf-8"))
    listed = build_dataset(Flags("cityscapes", root), "val", 19, None)
    assert len(listed) == 1 and listed.label_path(0).endswith(f"{first}_gtFine_labelIds.png")
    torch.testing.assert_close(listed[0][1], build_dataset(Flags("cityscapes", layouts["cityscapes"]), "val", 19,
                                                           None)[0][1])


def test_pascal_context_semsegpaddle_layout(layouts, samples, tmp_path):
    root = tmp_path / "pascal_context"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "GroundTruth_trainval_png").mkdir()
    src = layouts["pascal_context"] / "VOC2010"
    for i, _, _ in samples["val"]:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes((src / "JPEGImages" / f"{i}.jpg").read_bytes())
        (root / "GroundTruth_trainval_png" / f"{i}.png").write_bytes(
            (src / "SegmentationClassContext" / f"{i}.png").read_bytes())
    (root / "pascal_context_val.txt").write_text(
        "".join(f"JPEGImages/{i}.jpg GroundTruth_trainval_png/{i}.png\n" for i, _, _ in samples["val"]))
    ds = build_dataset(Flags("pascal_context", tmp_path), "val", 59, None)  # found in pascal_context/
    reference = build_dataset(Flags("pascal_context", layouts["pascal_context"]), "val", 59, None)
    assert len(ds) == len(reference) == VAL_IDS
    for k in range(len(ds)):
        torch.testing.assert_close(ds[k][1], reference[k][1])


# ----------------------------------------------------------------------------------------- bad input

def test_bad_layouts_are_one_line_errors(layouts, tmp_path):
    import shutil
    city = tmp_path / "city"
    shutil.copytree(layouts["cityscapes"], city)
    shutil.rmtree(city / "gtFine")
    with pytest.raises(UserError, match=r"gtFine.*gtFine_trainvaltest"):
        build_dataset(Flags("cityscapes", city), "val", None, None)
    ade = tmp_path / "ade"
    shutil.copytree(layouts["ade20k"], ade)
    shutil.rmtree(ade / "ADEChallengeData2016" / "annotations")
    with pytest.raises(UserError, match=r"annotations"):
        build_dataset(Flags("ade20k", ade), "val", None, None)
    with pytest.raises(UserError, match="does not fit PASCAL-Context"):
        build_dataset(Flags("pascal_context", layouts["pascal_context"]), "val", 21, None)
    with pytest.raises(UserError, match="does not fit Cityscapes"):
        build_dataset(Flags("cityscapes", layouts["cityscapes"]), "val", 20, None)


def test_pascal_context_label_above_59_names_file_and_value(layouts, tmp_path):
    import shutil
    root = tmp_path / "ctx"
    shutil.copytree(layouts["pascal_context"], root)
    ds = build_dataset(Flags("pascal_context", root), "val", 59, None)
    path = Path(ds.label_path(1))
    label = read_label(path)
    label[:3, :3] = 60
    write_palette_png(path, label, VOC_PALETTE)
    with pytest.raises(UserError, match=rf"{path}.*label value 60") as info:
        ds[1]
    assert "\n" not in str(info.value)


def test_dataset_flag_lists_the_known_datasets(tmp_path):
    result = run_launcher("--device", "cpu", "--dataset", "coco", "--dataset_path", tmp_path, "--work_dir",
                          tmp_path / "work", timeout=60)
    line = assert_one_line_error(result, "--dataset", "coco")
    assert all(name in line for name in DATASETS.names())
    assert snapshot(tmp_path / "work") == {}


# ------------------------------------------------------------------- through train.py, 1 and 2 processes

def random_checkpoint(num_classes: int, path: Path) -> Path:
    from segzoo.models import build_model
    torch.manual_seed(0)
    torch.save(build_model("pspnet", num_classes, backbone="resnet18").state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind, num_classes", [("cityscapes", 19), ("ade20k", 150), ("pascal_context", 59)])
def test_evaluation_counts_every_labelled_pixel_on_1_and_2_processes(kind, num_classes, layouts, samples, tmp_path):
    ckpt = random_checkpoint(num_classes, tmp_path / "random.pth")
    common = ("--device", "cpu", "--backbone", "resnet18", "--workers", "0", "--dataset", kind, "--dataset_path",
              layouts[kind], "--test_only", "True", "--ckpt", ckpt)
    matrices = []
    for extra in ((), ("--distributed", "True", "--nproc_per_node", "2", "--master_port", str(free_port()))):
        work = tmp_path / f"work{len(matrices)}"
        result = run_launcher(*common, "--work_dir", work, *extra, timeout=300)
        assert result.rc == 0, result.describe()
        metrics = json.loads((work / "metrics" / "test.json").read_text())
        cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
        np.testing.assert_array_equal(cm.sum(1), expected_counts(samples["val"], kind, num_classes))
        # The per-class table names the dataset's classes.
        assert list(metrics["per_class_iou"]) == build_dataset(Flags(kind, layouts[kind]), "val", num_classes,
                                                               None).class_names
        matrices.append(cm)
    np.testing.assert_array_equal(matrices[0], matrices[1])
