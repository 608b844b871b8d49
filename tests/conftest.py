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
