"""Building blocks shared by the benchmark scripts (imported from this folder: run them as
``python benchmarks/<script>.py``)."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6), conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2Shaped(nn.Module):
    """MobileNetV2 (width 1.0) for 32x32 inputs: stride-1 stem and second stage, as CIFAR versions do."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, quant: nn.Module, dequant: nn.Module, num_classes: int = 10) -> None:
        super().__init__()
        self.quant = quant
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 1, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        self.dequant = dequant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        return self.dequant(self.classifier(torch.flatten(self.pool(x), 1)))


class UNetShaped(nn.Module):
    """A small segmentation net: a conv encoder (stride-2 downsampling), a decoder of ConvTranspose2d upsampling
    with concatenated skips, and a bilinear resize of the logits: the integer ops beyond convs in one model."""

    def __init__(self, quant: nn.Module, dequant: nn.Module, classes: int = 8) -> None:
        super().__init__()
        self.quant, self.dequant = quant, dequant
        self.enc1 = nn.Sequential(conv_bn(3, 32, 3), conv_bn(32, 32, 3))
        self.enc2 = nn.Sequential(conv_bn(32, 64, 3, 2), conv_bn(64, 64, 3))
        self.enc3 = nn.Sequential(conv_bn(64, 128, 3, 2), conv_bn(128, 128, 3))
        self.up2 = nn.ConvTranspose2d(128, 64, 2, 2)
        self.dec2 = conv_bn(128, 64, 3)
        self.up1 = nn.ConvTranspose2d(64, 32, 2, 2)
        self.dec1 = conv_bn(64, 32, 3)
        self.head = nn.Conv2d(32, classes, 1)
        self.resize = nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.dequant(self.resize(self.head(d1)))
