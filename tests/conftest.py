"""Shared fixtures. The device comes from SEG_TEST_DEVICE (default cpu), as timm's tests do."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid_voc"


@pytest.fixture(scope="session")
def device_name() -> str:
    return os.environ.get("SEG_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "ImageSets" / "Segmentation" / "train.txt").is_file():
        pytest.skip(f"real CamVid data not found at {CAMVID} (it lives in ../shared beside the repo)")
    return CAMVID


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """8 train / 5 val demo images of 48x64 (an odd val count), written once per session."""
    from tests.helpers import tiny_dataset_root
    return tiny_dataset_root(tmp_path_factory)


@pytest.fixture(scope="session")
def camvid_samples(camvid_root) -> dict:
    """A few real CamVid images and labels, scaled down (tests/layouts.py)."""
    from tests.layouts import TRAIN_IDS, VAL_IDS, camvid_samples as load
    return {"train": load(camvid_root, "train", TRAIN_IDS), "val": load(camvid_root, "val", VAL_IDS)}


@pytest.fixture(scope="session")
def layouts(camvid_samples, tmp_path_factory) -> dict:
    """{dataset name: root} of Cityscapes, ADE20K and PASCAL-Context layouts built from CamVid."""
    from tests.layouts import CAMVID_TO_STORED, write_layout
    roots = {}
    for kind in CAMVID_TO_STORED:
        roots[kind] = tmp_path_factory.mktemp(kind)
        write_layout(kind, roots[kind], camvid_samples)
    return roots
