"""Every decoder on every backbone family: builds, one training step with the project's
criterion reaches every parameter of the decode and aux heads, and evaluation gives logits of the
input size. Tiny inputs (32x32, batch 2) keep the whole matrix to about a minute on 2 cores."""
import pytest
import torch

from segzoo.models import MODELS, build_model
from segzoo.runtime.losses import SegmentationCriterion

DECODERS = ("pspnet", "deeplabv3", "psanet", "ccnet", "encnet", "glore", "ginet")
# (backbone, output_stride): one small member per family; HRNet only has its native stride.
# OS8 everywhere else: at 32x32 a stride-16 map shrinks to PSANet's 1x1 attention, which has
# nothing to attend to (softmax over one position) and so no gradient.
BACKBONES = (("resnet18", 8), ("resnet50", 8), ("resnext50_32x4d", 8), ("hrnet_w18", 32),
             ("efficientnet_b0", 8))
NUM_CLASSES, SIZE = 5, 32


def test_matrix_covers_every_registered_decoder():
    # A new decoder must join the matrix (and the model-zoo table).
    assert set(MODELS.names()) == set(DECODERS)


@pytest.mark.parametrize("backbone,output_stride", BACKBONES, ids=[b for b, _ in BACKBONES])
@pytest.mark.parametrize("decoder", DECODERS)
def test_decoder_on_backbone_trains_and_evaluates(decoder, backbone, output_stride, device_name):
    torch.manual_seed(0)
    model = build_model(decoder, NUM_CLASSES, backbone=backbone, output_stride=output_stride,
                        crop_size=SIZE).to(device_name).train()
    # CCNet's gamma and GINet's interaction gates start at zero (identity start), which blocks
    # the gradient of what they scale on the very first step; open them so every path is checked.
    with torch.no_grad():
        for name, p in model.decode_head.named_parameters():
            last = name.rsplit(".", 1)[-1]
            if last == "gamma" or last.startswith("gate_"):
                p.fill_(0.5)
    criterion = SegmentationCriterion(NUM_CLASSES, extra_losses=model.extra_losses)
    images = torch.randn(2, 3, SIZE, SIZE, device=device_name)
    target = torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE), device=device_name)

    outputs = model(images)
    assert outputs["out"].shape == outputs["aux"].shape == (2, NUM_CLASSES, SIZE, SIZE)
    loss = criterion(outputs, target)
    assert torch.isfinite(loss)
    loss.backward()
    heads = [("decode_head." + n, p) for n, p in model.decode_head.named_parameters()]
    heads += [("aux_head." + n, p) for n, p in model.aux_head.named_parameters()]
    no_grad = [n for n, p in heads if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, f"no gradient reached {no_grad}"
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        evaluated = model(images)
    assert set(evaluated) == {"out"} and evaluated["out"].shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert torch.isfinite(evaluated["out"]).all()


def test_main_feature_stride_per_family():
    # What the model-zoo table reports as output stride, from the backbone contract.
    expected = {"resnet18": 8, "resnext50_32x4d": 16, "efficientnet_b0": 32, "hrnet_w18": 4}
    strides = {"resnet18": 8, "resnext50_32x4d": 16, "efficientnet_b0": 32, "hrnet_w18": 32}
    for backbone, output_stride in strides.items():
        model = build_model("pspnet", NUM_CLASSES, backbone=backbone, output_stride=output_stride, aux=False).eval()
        info = model.backbone.feature_info[model.backbone.main_index]
        assert info.reduction == expected[backbone], backbone
        features = model.backbone(torch.randn(1, 3, 32, 32))
        assert features[model.backbone.main_index].shape[-1] == 32 // expected[backbone]
        assert features[model.backbone.main_index].shape[1] == info.channels


@pytest.mark.parametrize("backbone", ["resnext101_32x8d", "resnext101_64x4d", "hrnet_w48", "efficientnet_b7",
                                      "tf_efficientnet_b3"])
def test_large_variants_build(backbone):
    # Build-only (no forward) for the big members: their contract is read from timm.
    model = build_model("pspnet", NUM_CLASSES, backbone=backbone,
                        output_stride=32 if backbone.startswith("hrnet") else 8)
    info = model.backbone.feature_info
    assert len(info) >= 4 and all(i.channels > 0 for i in info)
    assert model.decode_head.in_channels == info[model.backbone.main_index].channels


def test_model_zoo_table_matches_real_models(tmp_path, capsys):
    # The tool counts under FakeTensorMode; recount on a real model and a real forward pass.
    from torch.utils.flop_counter import FlopCounterMode

    from tools.model_zoo import main

    out = tmp_path / "zoo.md"
    main(["--decoders", "ginet,ccnet", "--backbones", "resnet18@8", "--size", "64,96", "--num_classes", "7",
          "--out", str(out)])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[2:]]
    assert out.read_text() == capsys.readouterr().out and len(rows) == 2
    for decoder, row in zip(("ginet", "ccnet"), rows):
        extra = {"ops_impl": "portable"} if decoder == "ccnet" else {}
        model = build_model(decoder, 7, backbone="resnet18", output_stride=8, aux=False, **extra).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, 64, 96))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert [c.strip() for c in row] == [decoder, "resnet18 OS8", f"{params:.1f}",
                                            f"{counter.get_total_flops() / 1e9:.1f}", "8"]
