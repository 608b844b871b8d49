"""Loading ImageNet backbone weights from torchvision- and semseg-layout files, and the
user errors for files that do not fit."""
import argparse
import re

import pytest
import torch

from segzoo.models import build_model
from segzoo.models.backbones.resnet_weights import load_backbone_weights
from segzoo.models.backbones.resnet import build_resnet
from segzoo.runtime.errors import UserError, flag_message


def _trained_state(arch: str, stem: str) -> dict:
    """A backbone state dict with every tensor random (BN statistics and counters too), so
    that 'loaded' cannot be confused with 'freshly initialised', plus an ImageNet fc layer."""
    torch.manual_seed(1)
    state = {}
    for key, value in build_resnet(arch, stem=stem).state_dict().items():
        if value.is_floating_point():
            state[key] = torch.rand_like(value) + 0.5  # positive: valid for running_var too
        else:
            state[key] = torch.randint_like(value, 1, 1000)
    channels = 512 if arch in ("resnet18", "resnet34") else 2048
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, channels), torch.randn(1000)
    return state


def _assert_loaded(backbone, state: dict, counters_from_file: bool = True) -> None:
    for key, value in backbone.state_dict().items():
        if key.endswith("num_batches_tracked") and not counters_from_file:
            continue
        torch.testing.assert_close(value, state[key], msg=key)


def _save(obj, tmp_path, name="weights.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _one_line_error(match: str, backbone, path) -> str:
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(UserError) as info:
        load_backbone_weights(backbone, path)
    message = flag_message(info.value)  # as the command line prints it
    assert re.search(match, message), message
    assert "\n" not in message and "--pretrained" in message and str(path) in message
    # A refused file leaves the backbone untouched.
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    return message


WRAPPINGS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 90},
    "model": lambda sd: {"model": sd, "optimizer": {"state": {}}},
    "ddp": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "compiled_ddp": lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    # A whole segmentor: the backbone is taken, the heads ignored.
    "segmentor": lambda sd: {"model": {**{f"backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")},
                                       "decode_head.classifier.1.weight": torch.zeros(3, 8, 1, 1)}},
}


@pytest.mark.parametrize("wrapping", WRAPPINGS)
@pytest.mark.parametrize("stem, layout", [("plain", "torchvision layout"), ("deep", "semseg layout")])
def test_loads_both_layouts_in_any_wrapping(stem, layout, wrapping, tmp_path):
    state = _trained_state("resnet18", stem)
    path = _save(WRAPPINGS[wrapping](state), tmp_path)
    backbone = build_resnet("resnet18", stem=stem)
    summary = load_backbone_weights(backbone, path)
    _assert_loaded(backbone, state)
    assert summary == f"loaded {len(backbone.state_dict())} tensors from {path} ({layout})"


def test_file_without_batchnorm_counters_loads(tmp_path):
    # torchvision's original ResNet files predate num_batches_tracked.
    state = {k: v for k, v in _trained_state("resnet50", "plain").items() if "num_batches_tracked" not in k}
    path = _save(state, tmp_path)
    backbone = build_resnet("resnet50", stem="plain")
    summary = load_backbone_weights(backbone, path)
    _assert_loaded(backbone, state, counters_from_file=False)
    assert re.match(r"loaded 265 tensors from ", summary)  # 318 minus 53 counters


def test_build_model_loads_pretrained_backbone(tmp_path):
    state = _trained_state("resnet18", "deep")
    path = _save(state, tmp_path)
    model = build_model("pspnet", 4, backbone="resnet18", stem="deep", pretrained=str(path))
    _assert_loaded(model.backbone, state)


@pytest.mark.parametrize("file_stem, backbone_stem", [("plain", "deep"), ("deep", "plain")])
def test_wrong_stem_points_at_the_stem_flag(file_stem, backbone_stem, tmp_path):
    path = _save(_trained_state("resnet18", file_stem), tmp_path)
    message = _one_line_error("stem", build_resnet("resnet18", stem=backbone_stem), path)
    assert f"use --stem {file_stem}" in message


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = _trained_state("resnet18", "plain")
    del state["layer1.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = _save(state, tmp_path)
    message = _one_line_error("does not fit", build_resnet("resnet18", stem="plain"), path)
    assert "missing 1 (layer1.0.conv1.weight)" in message
    assert "unexpected 1 (layer5.0.conv1.weight)" in message


def test_other_depth_reports_shapes_and_counts(tmp_path):
    path = _save(_trained_state("resnet18", "plain"), tmp_path)
    message = _one_line_error("does not fit", build_resnet("resnet50", stem="plain"), path)
    assert "layer1.0.conv1.weight file [64, 64, 3, 3] vs model [64, 64, 1, 1]" in message
    assert re.search(r"missing \d+ \(.*more\)", message)
    assert "--backbone" in message


def test_other_backbone_with_same_names_but_other_shape(tmp_path):
    state = _trained_state("resnet18", "plain")
    state["bn1.weight"] = torch.ones(32)
    path = _save(state, tmp_path)
    message = _one_line_error("does not fit", build_resnet("resnet18", stem="plain"), path)
    assert "other shape 1 (bn1.weight file [32] vs model [64])" in message


@pytest.mark.parametrize("content", [b"", b"hello, I am not a checkpoint\n", bytes(range(256)) * 8],
                         ids=["empty", "text", "binary"])
def test_not_a_checkpoint(content, tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    _one_line_error("not a PyTorch checkpoint", build_resnet("resnet18"), path)


def test_truncated_checkpoint(tmp_path):
    # The usual result of an interrupted copy or download.
    data = _save(_trained_state("resnet18", "deep"), tmp_path).read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    _one_line_error("not a PyTorch checkpoint", build_resnet("resnet18"), path)


def test_missing_file_and_directory(tmp_path):
    backbone = build_resnet("resnet18")
    _one_line_error("no such file", backbone, tmp_path / "absent.pth")
    _one_line_error("not a file", backbone, tmp_path)


def test_checkpoint_needing_unsafe_unpickling_is_refused(tmp_path):
    state = _trained_state("resnet18", "deep")
    path = _save({"state_dict": state, "args": argparse.Namespace(lr=0.01)}, tmp_path)
    message = _one_line_error("weights_only=False", build_resnet("resnet18"), path)
    assert "argparse.Namespace" in message


@pytest.mark.parametrize("obj", [[torch.zeros(1)], {"conv1.weight": torch.zeros(1), "note": "hi"}, {}],
                         ids=["list", "non_tensor_entry", "empty_dict"])
def test_not_a_state_dict(obj, tmp_path):
    _one_line_error("state dict|not tensors", build_resnet("resnet18"), _save(obj, tmp_path))
