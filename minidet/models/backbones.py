"""Backbones returning multi-scale feature maps (C3, C4, C5 at strides 8, 16, 32; VGG-16 two maps).

- ``resnet18`` / ``resnet34`` / ``resnet50``: torchvision's ResNets (random init by default;
  ``pretrained=True`` loads torchvision's ImageNet weights when they can be downloaded).
- ``vgg16``: the SSD variant of VGG-16 (conv4_3 at stride 8 and the dilated fc6/fc7 convs at
  stride 16), with SSD's L2 normalisation of conv4_3.
- ``tiny``: a small CSP-style net (~1.2M parameters) for CPU work; the default for shapes.

Every backbone exposes ``out_channels`` (one per returned map) and ``strides``.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["ResNetBackbone", "VGG16Backbone", "TinyBackbone", "build_backbone", "BACKBONES"]


def _pretrained_weights(name: str):
    """torchvision's default ImageNet weights of a model (needs the network or a cached file)."""
    return torchvision.models.get_model_weights(name).DEFAULT


class PretrainedWeightsError(RuntimeError):
    """torchvision's ImageNet weights could not be loaded (no network and no cached file)."""


def _load_pretrained(builder, name: str, **kwargs) -> nn.Module:
    weights = _pretrained_weights(name)
    try:
        return builder(weights=weights, **kwargs)
    except Exception as err:  # noqa: BLE001 - any download failure gets the same advice
        file = weights.url.rsplit("/", 1)[-1]
        raise PretrainedWeightsError(
            f"could not load torchvision's ImageNet weights for {name} ({err.__class__.__name__}: {err}). "
            f"Without network access either train from scratch (pretrained=False / no --pretrained) or put "
            f"the weight file {file} ({weights.url}) into {torch.hub.get_dir()}/checkpoints/ on this machine first."
        ) from None


class ResNetBackbone(nn.Module):
    """torchvision ResNet -> [C3, C4, C5]; ``frozen_stages`` freezes the stem (1) and the
    first k - 1 residual stages; ``frozen_bn`` uses FrozenBatchNorm2d (fine-tuning)."""

    def __init__(self, depth: int = 50, pretrained: bool = False, frozen_stages: int = 0,
                 frozen_bn: bool = False) -> None:
        super().__init__()
        name = f"resnet{depth}"
        builder = getattr(torchvision.models, name)
        kwargs = {"norm_layer": FrozenBatchNorm2d} if frozen_bn else {}
        net = _load_pretrained(builder, name, **kwargs) if pretrained else builder(weights=None, **kwargs)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [128 * expansion, 256 * expansion, 512 * expansion]
        self.strides = [8, 16, 32]
        stages = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]
        for stage in stages[:frozen_stages]:
            for p in stage.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(self.stem(x))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class L2Norm(nn.Module):
    """SSD's channel-wise L2 normalisation with a learned scale (init 20)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight[None, :, None, None] * nn.functional.normalize(x, dim=1)


class VGG16Backbone(nn.Module):
    """SSD's VGG-16: conv4_3 (L2-normalised, stride 8) and fc7 (stride 16)."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        vgg = _load_pretrained(torchvision.models.vgg16, "vgg16") if pretrained else torchvision.models.vgg16(weights=None)
        features = list(vgg.features)
        features[16] = nn.MaxPool2d(2, 2, ceil_mode=True)  # pool3 with ceil mode, as SSD
        self.conv4_3 = nn.Sequential(*features[:23])  # up to relu4_3
        self.l2norm = L2Norm(512)
        self.fc7 = nn.Sequential(
            *features[23:30],  # pool4, conv5_x
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True),
        )
        self.out_channels = [512, 1024]
        self.strides = [8, 16]

    def forward(self, x: Tensor) -> list[Tensor]:
        c4 = self.conv4_3(x)
        return [self.l2norm(c4), self.fc7(c4)]


def conv_bn_act(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class CSPStage(nn.Module):
    """Downsample by 2, then a cross-stage-partial block: half the channels go through
    ``depth`` residual 3x3 pairs, the other half bypass; both are fused by a 1x1 conv."""

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        half = cout // 2
        self.down = conv_bn_act(cin, cout, 3, 2)
        self.split_a, self.split_b = conv_bn_act(cout, half, 1), conv_bn_act(cout, half, 1)
        self.blocks = nn.ModuleList(nn.Sequential(conv_bn_act(half, half, 1), conv_bn_act(half, half, 3))
                                    for _ in range(depth))
        self.fuse = conv_bn_act(2 * half, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        a, b = self.split_a(x), self.split_b(x)
        for block in self.blocks:
            a = a + block(a)
        return self.fuse(torch.cat([a, b], dim=1))


class TinyBackbone(nn.Module):
    """A small CSP-style backbone for CPU training: strides 8 / 16 / 32 with 64 / 128 / 256
    channels (``width`` scales them)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = [max(8, int(round(v * width))) for v in (16, 32, 64, 128, 256)]
        self.stem = conv_bn_act(3, c[0], 3, 2)  # stride 2
        self.stage2 = CSPStage(c[0], c[1], 1)  # stride 4
        self.stage3 = CSPStage(c[1], c[2], 2)  # stride 8
        self.stage4 = CSPStage(c[2], c[3], 2)  # stride 16
        self.stage5 = CSPStage(c[3], c[4], 1)  # stride 32
        self.out_channels = [c[2], c[3], c[4]]
        self.strides = [8, 16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stage3(self.stage2(self.stem(x)))
        c4 = self.stage4(c3)
        return [c3, c4, self.stage5(c4)]


BACKBONES = {
    "tiny": lambda pretrained=False, **kw: TinyBackbone(**{k: v for k, v in kw.items() if k == "width"}),
    "resnet18": lambda pretrained=False, **kw: ResNetBackbone(18, pretrained, **kw),
    "resnet34": lambda pretrained=False, **kw: ResNetBackbone(34, pretrained, **kw),
    "resnet50": lambda pretrained=False, **kw: ResNetBackbone(50, pretrained, **kw),
    "vgg16": lambda pretrained=False, **kw: VGG16Backbone(pretrained),
}


def build_backbone(name: str, pretrained: bool = False, **options) -> nn.Module:
    """Backbone by name (a key of BACKBONES); options: frozen_stages, frozen_bn (ResNets), width (tiny)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if pretrained and name == "tiny":
        raise ValueError("the tiny backbone has no ImageNet weights; drop --pretrained or pick a ResNet / VGG")
    return BACKBONES[name](pretrained=pretrained, **options)
