"""Cityscapes, ADE20K and PASCAL-Context layouts, built in the test from real CamVid images.

Each layout is written the way the official download (or its conversion) lays it out, with CamVid's
classes mapped to the target dataset's stored label values. The expected per-class pixel counts
are computed here from CamVid's own labels and a CamVid -> training-id table written in this file,
independently of the datasets' label tables; an evaluation through train.py must count exactly
those pixels (the rows of its confusion matrix), on 1 and on 2 processes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segzoo.datasets import DATASETS
from segzoo.datasets.classes import VOC_PALETTE
from segzoo.datasets.image_io import read_label, write_palette_png
from segzoo.engine.data import build_dataset
from segzoo.runtime.errors import UserError
from tests.helpers import assert_one_line_error, free_port, run_launcher, snapshot
from tests.layouts import CAMVID_TO_TRAIN_ID, SIZE, VAL_IDS, expected_counts, remap

class Flags:
    """The few flags build_dataset reads."""

    def __init__(self, dataset, path):
        self.dataset, self.dataset_path = dataset, str(path)


@pytest.mark.parametrize("kind, num_classes", list(CAMVID_TO_TRAIN_ID))
def test_labels_become_training_ids(kind, num_classes, layouts, camvid_samples):
    ds = build_dataset(Flags(kind, layouts[kind]), "val", num_classes, None)
    assert ds.num_classes == num_classes and len(ds.class_names) == num_classes and len(ds) == VAL_IDS
    assert ds.palette.shape[0] >= num_classes
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.shape == (3, SIZE[1], SIZE[0]) and label.shape == (SIZE[1], SIZE[0])
        values = label.numpy()
        counts += np.bincount(values[values != 255], minlength=num_classes)
    np.testing.assert_array_equal(counts, expected_counts(camvid_samples["val"], kind, num_classes))


def test_cityscapes_prefers_train_id_files_and_reads_list_files(layouts, camvid_samples, tmp_path):
    root = tmp_path / "cityscapes"
    shutil.copytree(layouts["cityscapes"], root)
    # createTrainIdLabelImgs output beside the labelIds files is used directly.
    table = CAMVID_TO_TRAIN_ID[("cityscapes", 19)]
    for i, _, label in camvid_samples["val"]:
        train_ids = remap(label, {k: (255 if v is None else v) for k, v in table.items()})
        write_palette_png(root / "gtFine" / "val" / "camvid" / f"{i}_gtFine_labelTrainIds.png", train_ids, VOC_PALETTE)
    ds = build_dataset(Flags("cityscapes", root), "val", None, None)
    assert all(p.endswith("_labelTrainIds.png") for p in ds._label_paths)
    counts = sum(np.bincount(ds[k][1].numpy().ravel(), minlength=256)[:19] for k in range(len(ds)))
    np.testing.assert_array_equal(counts, expected_counts(camvid_samples["val"], "cityscapes", 19))
    # SemSegPaddle's list file (with a BOM and CRLF line ends) takes precedence.
    first = camvid_samples["val"][0][0]
    (root / "valLabels.txt").write_bytes(
        f"\ufeffleftImg8bit/val/camvid/{first}_leftImg8bit.png gtFine/val/camvid/{first}_gtFine_labelIds.png \r\n"
        .encode("utf-8"))
    listed = build_dataset(Flags("cityscapes", root), "val", 19, None)
    assert len(listed) == 1 and listed.label_path(0).endswith(f"{first}_gtFine_labelIds.png")
    torch.testing.assert_close(listed[0][1], build_dataset(Flags("cityscapes", layouts["cityscapes"]), "val", 19,
                                                           None)[0][1])


def test_pascal_context_semsegpaddle_layout(layouts, camvid_samples, tmp_path):
    root = tmp_path / "pascal_context"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "GroundTruth_trainval_png").mkdir()
    src = layouts["pascal_context"] / "VOC2010"
    for i, _, _ in camvid_samples["val"]:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes((src / "JPEGImages" / f"{i}.jpg").read_bytes())
        (root / "GroundTruth_trainval_png" / f"{i}.png").write_bytes(
            (src / "SegmentationClassContext" / f"{i}.png").read_bytes())
    (root / "pascal_context_val.txt").write_text(
        "".join(f"JPEGImages/{i}.jpg GroundTruth_trainval_png/{i}.png\n" for i, _, _ in camvid_samples["val"]))
    ds = build_dataset(Flags("pascal_context", tmp_path), "val", 59, None)  # found in pascal_context/
    reference = build_dataset(Flags("pascal_context", layouts["pascal_context"]), "val", 59, None)
    assert len(ds) == len(reference) == VAL_IDS
    for k in range(len(ds)):
        torch.testing.assert_close(ds[k][1], reference[k][1])


# ----------------------------------------------------------------------------------------- bad input

def test_bad_layouts_are_one_line_errors(layouts, tmp_path):
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
def test_evaluation_counts_every_labelled_pixel_on_1_and_2_processes(kind, num_classes, layouts, camvid_samples, tmp_path):
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
        np.testing.assert_array_equal(cm.sum(1), expected_counts(camvid_samples["val"], kind, num_classes))
        # The per-class table names the dataset's classes.
        assert list(metrics["per_class_iou"]) == build_dataset(Flags(kind, layouts[kind]), "val", num_classes,
                                                               None).class_names
        matrices.append(cm)
    np.testing.assert_array_equal(matrices[0], matrices[1])
