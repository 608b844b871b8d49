"""Every config in configs/ parses as the flags it sets, and trains for two iterations on tiny data.

The seeds' recipes only rot silently if nothing runs them: each one is run through the launcher
with size overrides (ResNet-18, 48 px crops, batch 2, two iterations, CPU) on a dataset of its
layout built from CamVid images (tests/layouts.py), so its dataset, model and schedule flags are
all exercised.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segzoo.engine.config import parse_train_args
from tests.helpers import TINY_CLASSES, run_launcher

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
SMALL = ("--device", "cpu", "--backbone", "resnet18", "--crop_size", "48", "--batch_size", "2", "--workers", "0",
         "--autocast", "False", "--print_interval", "1", "--sync_bn", "auto")


def overrides(values: dict) -> tuple:
    """Flags that shrink a recipe to two iterations; its own schedule kind (epochs or iterations) is kept."""
    flags = ["--iters", "2", "--val_interval", "2", "--save_interval", "2"] if "iters" in values else ["--epoch", "1"]
    if values.get("eval_mode") == "slide":
        flags += ["--eval_crop", "40", "--eval_stride", "30"]
    return tuple(flags)


def test_there_is_a_config_per_seed_row():
    names = {p.stem for p in CONFIGS}
    assert {"psanet_resnet50_os8_cityscapes_1024x512_80k", "ccnet_resnet101_os8_cityscapes_769x769_60k",
            "encnet_resnet101_cityscapes_1024x512_80k", "pspnet_resnet101_cityscapes", "glore_resnet101_cityscapes",
            "pspnet_resnet101_pascal_context", "glore_resnet101_pascal_context", "pspnet50_voc2007"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_values_are_the_flags_values(config, tmp_path):
    values = yaml.safe_load(config.read_text())
    args = parse_train_args(["--config", str(config), "--device", "cpu", "--dataset_path", str(tmp_path)])
    for key, value in values.items():
        parsed = getattr(args, key)
        if key == "crop_size" and isinstance(value, str):
            value = [int(v) for v in value.split(",")]
        if key == "sync_bn":
            value = value.lower()
        assert parsed == value or (isinstance(parsed, tuple) and list(parsed) == value), key


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_two_iterations(config, layouts, tiny_dataset, tmp_path):
    values = yaml.safe_load(config.read_text())
    dataset = values.get("dataset", "voc")
    if dataset == "demo":
        data = ("--dataset_path", tiny_dataset)
    elif dataset == "voc":
        # The tiny VOC-format data carries class_names.txt, whose class count takes precedence.
        data = ("--dataset_path", tiny_dataset, "--num_classes", str(TINY_CLASSES))
    else:
        data = ("--dataset_path", layouts[dataset])
    work = tmp_path / "work"
    result = run_launcher("--config", config, *SMALL, *overrides(values), *data, "--work_dir", work, timeout=400)
    assert result.rc == 0, result.describe()
    assert list(work.glob("latest_*.pth")), result.describe()
    assert (work / "args.yaml").is_file()
