"""--contract_dilation and --align_corners against independent re-implementations of the two choices.

* Dilation: torchvision's ResNet-50 with ``replace_stride_with_dilation=[False, True, True]`` is the
  contracted variant (first block of a dilated stage keeps the previous dilation); hszhao/semseg
  builds the same torchvision network and then sets every 3x3 conv of layer3/layer4 to dilation
  2/4 and stride 1 - that loop is re-written here from semseg's ``model/pspnet.py``. Our ResNet
  (plain stem, torchvision's parameter names) gets the same weights and must give the same
  features in both modes.
* align_corners: semseg's PPM and final upsampling use ``F.interpolate(..., align_corners=True)``;
  the PPM forward below is written from semseg's code and run on our PPM's weights.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segzoo.models import build_model
from segzoo.models.backbones.resnet import build_resnet
from segzoo.models.pspnet import PyramidPooling

torchvision = pytest.importorskip("torchvision", reason="torchvision is the independent ResNet to compare with")


def semseg_dilate(net) -> None:
    """hszhao/semseg model/pspnet.py: every conv2 (and downsample) of layer3/4 dilated fully, stride 1."""
    for n, m in net.layer3.named_modules():
        if "conv2" in n:
            m.dilation, m.padding, m.stride = (2, 2), (2, 2), (1, 1)
        elif "downsample.0" in n:
            m.stride = (1, 1)
    for n, m in net.layer4.named_modules():
        if "conv2" in n:
            m.dilation, m.padding, m.stride = (4, 4), (4, 4), (1, 1)
        elif "downsample.0" in n:
            m.stride = (1, 1)


def torchvision_features(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer2(net.layer1(x))
    layer3 = net.layer3(x)
    return layer3, net.layer4(layer3)


@pytest.mark.parametrize("contract", [True, False])
def test_dilation_matches_torchvision_and_semseg(contract):
    torch.manual_seed(0)
    ours = build_resnet("resnet50", output_stride=8, stem="plain", contract_dilation=contract).eval()
    if contract:
        reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    else:
        reference = torchvision.models.resnet50(weights=None)
        semseg_dilate(reference)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"fc.weight", "fc.bias"}
    reference.eval()
    x = torch.randn(1, 3, 65, 81)
    with torch.no_grad():
        features = ours(x)
        layer3, layer4 = torchvision_features(reference, x)
    torch.testing.assert_close(features[2], layer3, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features[3], layer4, rtol=1e-4, atol=1e-4)


def test_the_two_dilation_choices_differ():
    """Otherwise the test above could not tell them apart."""
    torch.manual_seed(0)
    a = build_resnet("resnet18", output_stride=8, stem="plain", contract_dilation=True).eval()
    b = build_resnet("resnet18", output_stride=8, stem="plain", contract_dilation=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x)[3], b(x)[3])


def semseg_ppm(ppm: PyramidPooling, x):
    """semseg's PPM.forward: AdaptiveAvgPool2d, 1x1 conv, BN, ReLU, upsample with align_corners=True."""
    out = [x]
    for stage in ppm.stages:
        pool, conv_bn_relu = stage
        y = conv_bn_relu(pool(x))
        out.append(F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=True))
    return torch.cat(out, 1)


@pytest.mark.parametrize("align_corners", [True, False])
def test_ppm_align_corners(align_corners):
    torch.manual_seed(0)
    ppm = PyramidPooling(64, align_corners=align_corners).eval()
    x = torch.randn(2, 64, 13, 17)
    with torch.no_grad():
        same = torch.allclose(ppm(x), semseg_ppm(ppm, x), atol=1e-6)
    assert same == align_corners


def test_model_output_upsampling_follows_align_corners():
    torch.manual_seed(0)
    model = build_model("pspnet", 4, backbone="resnet18", align_corners=True).eval()
    x = torch.randn(1, 3, 57, 71)
    with torch.no_grad():
        features = model.backbone(x)
        logits = model.decode_head(features)
        expected = F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=True)
        torch.testing.assert_close(model(x)["out"], expected)
        assert model.decode_head.ppm.align_corners
