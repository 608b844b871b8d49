"""Dilated ResNet backbones for dense prediction (He et al., CVPR 2016; dilation as in
DeepLab, Chen et al. 2017, and PSPNet, Zhao et al. CVPR 2017).

Parameter names follow torchvision (plain stem) and hszhao/semseg (deep stem) exactly, so
their ImageNet checkpoints load one to one (see ``segzoo.models.backbones.resnet_weights``). There is no fc layer:
the forward pass returns the four stage outputs.
"""
from __future__ import annotations

from typing import Type, Union

import logging

import torch
from torch import nn

from segzoo.models.backbones import BACKBONES, DILATED_DEFAULT_STRIDE, OUTPUT_STRIDE, PRETRAINED, StageInfo
from segzoo.registry import Option
from segzoo.runtime.config_types import str2bool
from segzoo.runtime.errors import OptionError

log = logging.getLogger(__name__)

STEMS = ("deep", "plain")
OUTPUT_STRIDES = (8, 16, 32)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding == dilation keeps the spatial size for stride 1 at any dilation.
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). ``first_dilation`` applies to the conv that would carry
    the stride, ``dilation`` to the other."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (ResNet-50/101/152), stride on the 3x3 conv ("ResNet v1.5", as
    torchvision and semseg). ``first_dilation`` is the 3x3 conv's dilation."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        del dilation  # a bottleneck has one spatial conv; it takes first_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]

# name -> (block, blocks per stage)
ARCHS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk returning ``[layer1, layer2, layer3, layer4]`` outputs.

    Args:
        block, layers: block type and number of blocks per stage (see ``ARCHS``).
        output_stride: 8, 16 or 32. Once the input has been reduced by this factor, the
            remaining stages replace their stride 2 with dilation (x2 per stage), so layer3
            and layer4 get dilation 2 and 4 at OS8, and layer4 dilation 2 at OS16.
        stem: "deep" -- semseg's deep base, three 3x3 convs 3->64->64->128 (stride 2 on the
            first) each with BN+ReLU, then 3x3/2 max-pool, layer1 fed 128 channels;
            "plain" -- torchvision's 7x7/2 conv + BN + ReLU + max-pool, layer1 fed 64.
        contract_dilation: the first block of a dilated stage uses the previous stage's
            dilation on its (would-be strided) 3x3 conv, as torchvision, timm and mmseg's
            PSPNet/DeepLab configs do: in the undilated network that conv sees the previous
            resolution, so this keeps the pretrained filter's geometry. False gives every
            block of the stage the full dilation, as hszhao/semseg does.
        zero_init_residual: start the last BN gamma of each block at 0 so every residual
            branch starts as identity (Goyal et al. 2017). Off by default; irrelevant when
            loading pretrained weights.

    Shapes: input (N, 3, H, W); stage i output (N, feature_info[i].channels,
    ceil-ish(H / reduction), ceil-ish(W / reduction)) -- any H, W >= 1 works.
    """

    def __init__(self, block: Block, layers: tuple[int, int, int, int], output_stride: int = 8,
                 stem: str = "deep", contract_dilation: bool = True, zero_init_residual: bool = False):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise OptionError("output_stride", output_stride, f"is not supported; use one of {OUTPUT_STRIDES}")
        if stem not in STEMS:
            raise OptionError("stem", stem, f"is not supported; use one of {STEMS}")
        self.stem = stem
        self.output_stride = output_stride

        if stem == "plain":
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.inplanes = 64
        else:
            self.conv1 = _conv3x3(3, 64, stride=2)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = _conv3x3(64, 64)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = _conv3x3(64, 128)
            self.bn3 = nn.BatchNorm2d(128)
            self.inplanes = 128
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        reduction, dilation = 4, 1  # after the stem
        self.feature_info: list[StageInfo] = []
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            wanted_stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if reduction * wanted_stride > output_stride:
                stride, dilation = 1, dilation * wanted_stride
            else:
                stride, reduction = wanted_stride, reduction * wanted_stride
            first_dilation = previous_dilation if contract_dilation else dilation
            name = f"layer{index + 1}"
            self.add_module(name, self._make_stage(block, planes, blocks, stride, dilation, first_dilation))
            self.feature_info.append(StageInfo(name, planes * block.expansion, reduction, dilation))

        self.main_index, self.aux_index = 3, 2  # layer4 for the decode head, layer3 for the aux head
        self._init_weights(zero_init_residual)

    def _make_stage(self, block: Block, planes: int, blocks: int, stride: int, dilation: int,
                    first_dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, dilation, first_dilation, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes, 1, dilation, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    @property
    def out_channels(self) -> list[int]:
        """Channels of the four stage outputs, e.g. [256, 512, 1024, 2048] for ResNet-50."""
        return [info.channels for info in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        features = []
        for info in self.feature_info:
            x = getattr(self, info.name)(x)
            features.append(x)
        return features


RESNET_OPTIONS = (
    OUTPUT_STRIDE,
    PRETRAINED,
    Option("stem", str, "deep", "ResNet stem: deep = three 3x3 convs 64-64-128 (semseg); plain = torchvision's 7x7",
           choices=STEMS),
    Option("contract_dilation", str2bool, True,
           "ResNet: first block of a dilated stage keeps the previous dilation (torchvision, mmseg); "
           "False dilates every block fully (hszhao/semseg, the PSPNet/PSANet/CCNet authors)"),
)


def build_resnet(name: str, output_stride: int | None = None, stem: str = "deep", pretrained: str | None = None,
                 **kwargs) -> ResNet:
    """ResNet trunk by name ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152");
    ``kwargs`` go to ``ResNet`` (contract_dilation, zero_init_residual). ``pretrained``: a local
    torchvision- or semseg-layout ImageNet file (see ``resnet_weights``)."""
    if name not in ARCHS:
        raise OptionError("backbone", name, f"is not a ResNet; use one of {', '.join(ARCHS)}")
    block, layers = ARCHS[name]
    model = ResNet(block, layers, output_stride=output_stride or DILATED_DEFAULT_STRIDE, stem=stem, **kwargs)
    if pretrained:
        from segzoo.models.backbones.resnet_weights import load_backbone_weights
        log.info("%s", load_backbone_weights(model, pretrained))
    return model


for _arch in ARCHS:
    BACKBONES.register(_arch, options=RESNET_OPTIONS, summary="dilated ResNet (He et al., CVPR 2016)")(build_resnet)
