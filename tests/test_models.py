"""Backbone, heads, segmentor and registry: shapes across configurations, dilation semantics,
parameter groups, gradients and user errors. Small ResNet-18 models on small inputs."""
import pytest
import torch
from torch import nn

from segzoo.models import MODELS, build_model
from segzoo.models.deeplabv3 import atrous_rates_for
from segzoo.models.encnet import Encoding
from segzoo.models.pspnet import PyramidPooling
from segzoo.models.backbones.resnet import BasicBlock, Bottleneck, build_resnet
from segzoo.runtime.errors import OptionError, UserError, flag_message

OUR_MODELS = ("pspnet", "deeplabv3", "encnet")
NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _expected_keys(name: str, training: bool, aux: bool = True) -> set:
    if not training:
        return {"out"}
    return {"out"} | ({"aux"} if aux else set()) | ({"se"} if name == "encnet" else set())


def _check_outputs(outputs: dict, name: str, n: int, h: int, w: int, training: bool) -> None:
    assert set(outputs) == _expected_keys(name, training)
    assert outputs["out"].shape == (n, NUM_CLASSES, h, w)
    if training:
        assert outputs["aux"].shape == (n, NUM_CLASSES, h, w)
    if "se" in outputs:
        assert outputs["se"].shape == (n, NUM_CLASSES)
    assert all(torch.isfinite(v).all() for v in outputs.values())


# ---------------------------------------------------------------------------------- models

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("stem", ["deep", "plain"])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", OUR_MODELS)
def test_output_shapes(name, output_stride, stem, training, device_name):
    model = build_model(name, NUM_CLASSES, backbone="resnet18", output_stride=output_stride, stem=stem)
    model.to(device_name).train(training)
    with torch.set_grad_enabled(training):
        outputs = model(torch.randn(2, 3, 63, 97, device=device_name))
    _check_outputs(outputs, name, 2, 63, 97, training)


@pytest.mark.parametrize("size", [(33, 33), (65, 65), (17, 40)], ids=str)
@pytest.mark.parametrize("name", OUR_MODELS)
def test_small_and_odd_inputs(name, size, device_name):
    # Feature maps smaller than the largest pyramid bin (6) or ASPP rate must still work.
    model = build_model(name, NUM_CLASSES, backbone="resnet18", output_stride=32).to(device_name).train()
    _check_outputs(model(torch.randn(2, 3, *size, device=device_name)), name, 2, *size, True)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_resnet50_pspnet_shape(training, device_name):
    model = build_model("pspnet", NUM_CLASSES, backbone="resnet50").to(device_name).train(training)
    assert model.decode_head.ppm.out_channels == 4096
    assert model.aux_head.in_channels == 1024
    with torch.set_grad_enabled(training):
        outputs = model(torch.randn(2, 3, 65, 65, device=device_name))
    _check_outputs(outputs, "pspnet", 2, 65, 65, training)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_without_aux_head(name):
    model = build_model(name, NUM_CLASSES, backbone="resnet18", aux=False).train()
    assert model.aux_head is None
    assert set(model(torch.randn(2, 3, 33, 33))) == _expected_keys(name, True, aux=False)


@pytest.mark.parametrize("name", OUR_MODELS)
def test_parameter_groups_cover_every_parameter_once(name):
    model = build_model(name, NUM_CLASSES, backbone="resnet18")
    backbone = [id(p) for p in model.backbone_parameters()]
    heads = [id(p) for p in model.head_parameters()]
    assert len(backbone) == len(set(backbone)) and len(heads) == len(set(heads))
    assert not set(backbone) & set(heads)
    assert set(backbone) | set(heads) == {id(p) for p in model.parameters()}
    assert set(backbone) == {id(p) for p in model.backbone.parameters()}
    assert heads, "the heads have parameters"


@pytest.mark.parametrize("name", OUR_MODELS)
def test_gradient_reaches_every_parameter(name, device_name):
    model = build_model(name, NUM_CLASSES, backbone="resnet18").to(device_name).train()
    outputs = model(torch.randn(2, 3, 41, 57, device=device_name))
    sum(v.float().square().mean() for v in outputs.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    for group in (model.backbone_parameters(), model.head_parameters()):
        assert sum(p.grad.abs().sum().item() for p in group) > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0  # through the whole trunk


def test_encnet_semantic_encoding_output_is_image_level():
    model = build_model("encnet", NUM_CLASSES, backbone="resnet18").train()
    se = model(torch.randn(3, 3, 33, 45))["se"]
    assert se.shape == (3, NUM_CLASSES)


def test_model_runs_under_bfloat16_autocast(device_name):
    model = build_model("encnet", NUM_CLASSES, backbone="resnet18").to(device_name).train()
    with torch.autocast(device_type=torch.device(device_name).type, dtype=torch.bfloat16):
        outputs = model(torch.randn(2, 3, 33, 33, device=device_name))
    _check_outputs(outputs, "encnet", 2, 33, 33, True)


def test_encnet_traces_as_one_graph():
    # torch.compile must see no graph break (dict outputs, the float32 autocast-free region).
    model = build_model("encnet", NUM_CLASSES, backbone="resnet18").eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 33, 45)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)["out"], model(x)["out"])


# -------------------------------------------------------------------------------- backbone

@pytest.mark.parametrize("output_stride, reductions", [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16]),
                                                       (32, [4, 8, 16, 32])])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_backbone_stage_shapes(arch, output_stride, reductions):
    backbone = build_resnet(arch, output_stride=output_stride).eval()
    assert [info.reduction for info in backbone.feature_info] == reductions
    expected_channels = [64, 128, 256, 512] if arch == "resnet18" else [256, 512, 1024, 2048]
    assert backbone.out_channels == expected_channels
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, c, 64 // r, 96 // r) for c, r in zip(expected_channels, reductions)]


def _spatial_convs(block: nn.Module) -> list:
    """(the conv that would carry the stride, the other 3x3 conv or None)."""
    if isinstance(block, Bottleneck):
        return [block.conv2]
    assert isinstance(block, BasicBlock)
    return [block.conv1, block.conv2]


@pytest.mark.parametrize("contract, first_dilations", [(True, (1, 2)), (False, (2, 4))])
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dilation_placement_at_output_stride_8(arch, contract, first_dilations):
    backbone = build_resnet(arch, output_stride=8, contract_dilation=contract)
    for layer, dilation, first in ((backbone.layer3, 2, first_dilations[0]), (backbone.layer4, 4, first_dilations[1])):
        first_block, *rest = layer
        assert first_block.downsample[0].stride == (1, 1)
        assert _spatial_convs(first_block)[0].dilation == (first, first)
        assert _spatial_convs(first_block)[0].stride == (1, 1)
        for conv in _spatial_convs(first_block)[1:] + [c for b in rest for c in _spatial_convs(b)]:
            assert conv.dilation == (dilation, dilation) and conv.padding == (dilation, dilation)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_dilated_backbone_is_the_dense_version_of_the_strided_one(arch):
    # Replacing a stride by dilation computes the strided network's outputs at every pixel
    # (with the first block's conv at the previous dilation): subsampling the OS8 features
    # must give the OS32 features exactly, for the same weights.
    # float64 so that summation order (which differs between the two) cannot blur the check.
    strided = build_resnet(arch, output_stride=32).double().eval()
    dense = build_resnet(arch, output_stride=8).double().eval()
    with torch.no_grad():
        for m in strided.modules():  # non-trivial BN statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    dense.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        f_strided, f_dense = strided(x), dense(x)
    torch.testing.assert_close(f_dense[2][..., ::2, ::2], f_strided[2])
    torch.testing.assert_close(f_dense[3][..., ::4, ::4], f_strided[3])


def test_deep_stem_has_semseg_names_and_shapes():
    state = build_resnet("resnet50", stem="deep").state_dict()
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["conv2.weight"].shape == (64, 64, 3, 3)
    assert state["conv3.weight"].shape == (128, 64, 3, 3)
    assert {"bn1.weight", "bn2.weight", "bn3.weight"} <= set(state)
    assert state["layer1.0.conv1.weight"].shape == (64, 128, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 128, 1, 1)
    assert not any(k.startswith("fc.") for k in state)


def test_plain_stem_matches_torchvision_resnet50():
    backbone = build_resnet("resnet50", stem="plain")
    state = backbone.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert "conv2.weight" not in state and not any(k.startswith("fc.") for k in state)
    # torchvision's resnet50 has 25,557,032 parameters, of which fc holds 2048*1000 + 1000.
    assert sum(p.numel() for p in backbone.parameters()) == 25_557_032 - 2_049_000
    assert len(state) == 318


def test_initialisation():
    backbone = build_resnet("resnet18")
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)
    zeroed = build_resnet("resnet50", zero_init_residual=True)
    for block in zeroed.modules():
        if isinstance(block, Bottleneck):
            assert (block.bn3.weight == 0).all() and (block.bn2.weight == 1).all()


# ----------------------------------------------------------------------------------- heads

def test_atrous_rates_follow_output_stride():
    assert atrous_rates_for(8) == (12, 24, 36)
    assert atrous_rates_for(16) == (6, 12, 18)
    assert atrous_rates_for(32) == (3, 6, 9)
    model = build_model("deeplabv3", NUM_CLASSES, backbone="resnet18", output_stride=16)
    assert [b[0].dilation[0] for b in model.decode_head.aspp.branches[1:4]] == [6, 12, 18]


def test_pyramid_pooling_concatenates_reduced_branches():
    ppm = PyramidPooling(64, bins=(1, 2, 3, 6)).eval()
    x = torch.randn(2, 64, 7, 5)
    out = ppm(x)
    assert out.shape == (2, 128, 7, 5)
    torch.testing.assert_close(out[:, :64], x)
    # The 1x1 bin is global context: constant over the map.
    global_branch = out[:, 64:80]
    torch.testing.assert_close(global_branch, global_branch[..., :1, :1].expand_as(global_branch))


def _literal_encoding(x, codewords, scale):
    """The paper's formulas written out with an (N, HW, K, C) residual tensor."""
    features = x.flatten(2).transpose(1, 2)  # (N, HW, C)
    residual = features[:, :, None, :] - codewords[None, None]  # (N, HW, K, C)
    assign = torch.softmax(scale * residual.square().sum(-1), dim=-1)  # (N, HW, K)
    return (assign[..., None] * residual).sum(1)  # (N, K, C)


def test_encoding_matches_the_paper_formula():
    encoding = Encoding(channels=6, num_codes=4).double()
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(encoding(x), _literal_encoding(x, encoding.codewords, encoding.scale))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(encoding, (x,))


def test_encoding_keeps_input_dtype_and_stays_accurate_in_bfloat16():
    encoding = Encoding(channels=16, num_codes=8)
    x = torch.randn(2, 16, 6, 6)
    out = encoding(x.bfloat16())
    assert out.dtype == torch.bfloat16
    reference = _literal_encoding(x.bfloat16().double(), encoding.codewords.double(), encoding.scale.double())
    torch.testing.assert_close(out.double(), reference, rtol=2e-2, atol=2e-2)


# -------------------------------------------------------------------------------- registry

def test_registry_holds_our_models():
    assert set(OUR_MODELS) <= set(MODELS.names())


@pytest.mark.parametrize("kwargs, flag", [
    (dict(name="segformer"), "--model_name"),
    (dict(backbone="resnet7"), "--backbone"),
    (dict(output_stride=4), "--output_stride"),
    (dict(stem="wide"), "--stem"),
    (dict(num_classes=0), "--num_classes"),
    (dict(dropout=1.5), "--dropout"),
])
def test_bad_arguments_are_user_errors_naming_the_flag(kwargs, flag):
    args = dict(name="pspnet", num_classes=NUM_CLASSES, backbone="resnet18") | kwargs
    with pytest.raises(OptionError) as info:
        build_model(**args)
    # Library errors name the setting; the entry point spells it as the flag.
    assert info.value.key == flag[2:]
    assert flag_message(info.value).startswith(flag) and "\n" not in flag_message(info.value)


def test_unknown_model_error_lists_the_models():
    with pytest.raises(UserError) as info:
        build_model("segformer", NUM_CLASSES)
    assert all(name in str(info.value) for name in MODELS.names())


def test_model_options_are_explicit():
    model = build_model("pspnet", NUM_CLASSES, backbone="resnet18", bins=(1, 2))
    assert len(model.decode_head.ppm.stages) == 2
    # An option of another model is refused (the engine passes each model only its own).
    with pytest.raises(UserError, match="no option .*recurrence"):
        build_model("pspnet", NUM_CLASSES, backbone="resnet18", recurrence=2)
    with pytest.raises(UserError, match="no option .*num_codes"):
        build_model("pspnet", NUM_CLASSES, backbone="resnet18", num_codes=32)
