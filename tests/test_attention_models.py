"""PSANet and CCNet: shapes of the models on their attention ops, and training + evaluation through
the launcher on demo data (one process, DDP, bf16 autocast) and on real CamVid data."""
from __future__ import annotations

import math

import pytest
import torch

from segzoo.models import build_model
from segzoo.models.psanet import shrunk_size
from segzoo.runtime.errors import UserError, flag_message
from tests.helpers import (TINY_CLASSES, TINY_RUN, free_port, logged_values, read_json, run_launcher)


@pytest.mark.parametrize("psa_type", ["collect", "distribute", "bi"])
def test_psanet_shapes_any_input_size(psa_type, device_name):
    model = build_model("psanet", 5, backbone="resnet18", crop_size=(40, 56), psa_type=psa_type).to(device_name)
    out = model(torch.randn(2, 3, 40, 56, device=device_name))
    assert out["out"].shape == (2, 5, 40, 56) and out["aux"].shape == (2, 5, 40, 56)
    out["out"].mean().backward()
    grads = [p.grad for p in model.decode_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():  # whole-image evaluation at another size works with the crop's mask
        assert model(torch.randn(1, 3, 61, 45, device=device_name))["out"].shape == (1, 5, 61, 45)


def test_psanet_mask_size_follows_the_crop():
    # The seed's shape, width x height: a 1024x512 crop at OS8 -> feature 128x64 -> shrunk 64x32 -> mask 127x63.
    assert (shrunk_size(512, 8, 2), shrunk_size(1024, 8, 2)) == (32, 64)
    model = build_model("psanet", 19, backbone="resnet18", crop_size=(512, 1024), psa_type="collect")
    assert model.decode_head.branches[0].mask == (63, 127)  # (mask_h, mask_w): 127 wide, 63 high


def test_psanet_compact_needs_the_training_size():
    model = build_model("psanet", 3, backbone="resnet18", crop_size=32, psa_compact=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["out"].shape == (1, 3, 32, 32)
        with pytest.raises(UserError) as info:
            model(torch.randn(1, 3, 48, 48))
        assert "--crop_val True" in flag_message(info.value)


@pytest.mark.parametrize("recurrence", [1, 2])
def test_ccnet_shapes_and_recurrence(recurrence, device_name):
    model = build_model("ccnet", 4, backbone="resnet18", recurrence=recurrence).to(device_name)
    out = model(torch.randn(2, 3, 33, 47, device=device_name))
    assert out["out"].shape == (2, 4, 33, 47)
    out["out"].mean().backward()
    # gamma starts at 0, so the attention block starts as the identity but still gets a gradient.
    assert model.decode_head.attention.gamma.grad is not None


def _train_and_check(tmp_path, data, *flags, epochs=1):
    work = tmp_path / "work"
    res = run_launcher(*TINY_RUN, "--dataset_path", data, "--work_dir", work, "--epoch", str(epochs),
                       "--val_epoch", "1", "--print_interval", "1", *flags, timeout=300)
    assert res.rc == 0, res.describe()
    losses = [v for _, v in logged_values(work / "train_log.json", "train.loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    return work, res


@pytest.mark.slow
@pytest.mark.parametrize("model,extra", [
    ("psanet", ("--psa_type", "bi")),
    ("ccnet", ("--autocast", "True")),  # bf16 on cpu
    ("psanet", ("--psa_type", "collect", "--autocast", "True")),
])
def test_attention_models_train_and_evaluate(model, extra, tiny_dataset, tmp_path):
    work, res = _train_and_check(tmp_path, tiny_dataset, "--model_name", model, *extra)
    metrics = read_json(work / "metrics" / "epoch_001.json")
    assert metrics["images"] == 5
    # The mean IoU is the mean of the per-class IoUs of the classes present (null = absent).
    present = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert present and metrics["mean_iou"] == pytest.approx(sum(present) / len(present), abs=1e-9)
    assert len(metrics["per_class_iou"]) == TINY_CLASSES
    assert (work / f"best_{model}_voc.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["psanet", "ccnet"])
def test_attention_models_under_ddp(model, tiny_dataset, tmp_path):
    work, _ = _train_and_check(tmp_path, tiny_dataset, "--model_name", model, "--batch_size", "2",
                               "--distributed", "True", "--nproc_per_node", "2", "--master_port", str(free_port()))
    assert read_json(work / "metrics" / "epoch_001.json")["images"] == 5  # every val image exactly once


@pytest.mark.slow
@pytest.mark.parametrize("model", ["psanet", "ccnet"])
def test_attention_models_on_camvid(model, camvid_root, tmp_path):
    # Real data: 367 train / 233 val street scenes, 11 classes; tiny centre crops keep it to seconds.
    work, _ = _train_and_check(tmp_path, camvid_root, "--model_name", model, "--batch_size", "8",
                               "--crop_val", "True", "--scale_min", "0.25", "--scale_max", "0.5")
    metrics = read_json(work / "metrics" / "epoch_001.json")
    assert metrics["images"] == 233 and len(metrics["per_class_iou"]) == 11
