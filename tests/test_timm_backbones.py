"""timm backbones (ResNeXt, HRNet, EfficientNet): the backbone contract, dilation, HRNetV2 fusion,
local pretrained files and the user errors. Small members and small inputs."""
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

from segzoo.models import build_model
from segzoo.models.backbones import build_backbone
from segzoo.runtime.errors import OptionError, UserError, flag_message
from tests.helpers import TINY_RUN, run_launcher


@pytest.mark.parametrize("name", ["resnext50_32x4d", "efficientnet_b0", "tf_efficientnet_b0"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_dilated_families_meet_the_contract(name, output_stride):
    backbone = build_backbone(name, output_stride=output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert len(features) == len(backbone.feature_info) == 4
    for feature, info in zip(features, backbone.feature_info):
        assert feature.shape[1] == info.channels
        assert feature.shape[-1] == 64 // info.reduction
    assert [i.reduction for i in backbone.feature_info] == [4, 8, min(16, output_stride), output_stride]
    assert (backbone.main_index, backbone.aux_index) == (3, 2)


def test_hrnet_fuses_all_branches_at_stride_4():
    backbone = build_backbone("hrnet_w18", output_stride=32).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 96))
    branches, fused = features[:4], features[backbone.main_index]
    assert [f.shape[1] for f in branches] == [18, 36, 72, 144]
    assert [i.reduction for i in backbone.feature_info] == [4, 8, 16, 32, 4]
    assert fused.shape == (1, 270, 16, 24) and backbone.feature_info[-1].channels == 270
    # HRNetV2: every branch bilinearly upsampled to the first one's size, then concatenated.
    expected = torch.cat([F.interpolate(f, size=(16, 24), mode="bilinear", align_corners=False)
                          for f in branches], dim=1)
    torch.testing.assert_close(fused, expected)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_hrnet_refuses_dilation_in_one_line(output_stride):
    with pytest.raises(OptionError) as err:
        build_backbone("hrnet_w18", output_stride=output_stride)
    message = flag_message(err.value)
    assert message.startswith(f"--output_stride {output_stride}") and "stride 4" in message
    assert "use --output_stride 32" in message and "\n" not in message


def test_default_output_stride_is_the_family_default():
    """--output_stride not given: HRNet keeps its native stride, a dilatable backbone goes to 8."""
    from segzoo.engine.config import parse_train_args
    from segzoo.engine.setup import model_from_args
    for backbone, main_stride in (("hrnet_w18", 4), ("efficientnet_b0", 8), ("resnet18", 8)):
        args = parse_train_args(["--device", "cpu", "--dataset", "demo", "--backbone", backbone, "--model_name",
                                 "deeplabv3", "--crop_size", "64"])
        trunk = model_from_args(args, 5).backbone
        assert args.output_stride is None and trunk.feature_info[trunk.main_index].reduction == main_stride


def test_unknown_backbone_lists_every_family():
    with pytest.raises(OptionError) as err:
        build_model("pspnet", 5, backbone="resnext50_64x4d")
    message = str(err.value)
    for family in ("resnet50", "resnext50_32x4d", "hrnet_w18", "efficientnet_b0", "tf_efficientnet_b7"):
        assert family in message


def test_missing_timm_asks_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(UserError, match="pip install timm"):
        build_backbone("efficientnet_b0", output_stride=8)


def _classifier_state(name):
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict+module"])
def test_pretrained_timm_classifier_checkpoint_loads(wrap, tmp_path):
    state = _classifier_state("efficientnet_b0")
    if wrap != "plain":
        state = {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": torch.tensor(3)}
    path = tmp_path / "effb0.pth"
    torch.save(state, path)
    backbone = build_backbone("efficientnet_b0", output_stride=8, pretrained=str(path))
    reference = _classifier_state("efficientnet_b0")
    own = backbone.body.state_dict()
    assert own and all(torch.equal(v, reference[k]) for k, v in own.items())


def test_pretrained_file_of_another_backbone_is_one_line(tmp_path):
    path = tmp_path / "b1.pth"
    torch.save(_classifier_state("efficientnet_b1"), path)
    with pytest.raises(UserError) as err:
        build_backbone("efficientnet_b0", output_stride=8, pretrained=str(path))
    message = flag_message(err.value)
    assert message.startswith(f"--pretrained {path}") and "efficientnet_b0" in message
    assert "missing" in message or "unexpected" in message or "other shape" in message
    assert "\n" not in message


@pytest.mark.slow
@pytest.mark.parametrize("flags,expected", [
    (("--backbone", "hrnet_w18", "--output_stride", "8"), "--output_stride 8"),
    (("--backbone", "resnext50_64x4d"), "hrnet_w18"),
])
def test_bad_backbone_flags_exit_in_one_line(flags, expected, tiny_dataset, tmp_path):
    work = tmp_path / "work"
    res = run_launcher(*TINY_RUN, "--dataset_path", tiny_dataset, "--work_dir", work, "--epoch", "1", *flags,
                       timeout=120)
    assert res.rc != 0, res.describe()
    assert len(res.stderr_lines) == 1 and expected in res.stderr, res.describe()
    assert not work.exists() or not any(work.rglob("*.pth"))
