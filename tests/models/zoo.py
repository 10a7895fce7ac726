"""Model shapes used by the tests: MobileNetV2- and ResNet-18-shaped networks built from torch.nn.

Widths are scaled down so the suite stays fast on 2 cores; the structure
(inverted residuals with ReLU6, basic blocks with downsampling shortcuts,
max pooling, global average pooling, classifier) is the real one.
"""

from __future__ import annotations

import torch
from torch import nn

from qframe_core.quantization import DeQuantStub, QuantStub


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU6) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2Like(nn.Module):
    """MobileNetV2 topology (width 0.25-ish), float classifier head after the DeQuantStub when asked."""

    def __init__(self, num_classes: int = 10, quantized_head: bool = True) -> None:
        super().__init__()
        setting = [(1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2), (6, 24, 2, 2), (6, 32, 1, 1)]
        self.quant = QuantStub(scale=1 / 128)
        layers: list[nn.Module] = [conv_bn(3, 8, 3, 2)]
        cin = 8
        for t, c, n, s in setting:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 64, 1))
        self.features = nn.Sequential(*layers)
        self.quantized_head = quantized_head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        if self.quantized_head:
            return self.dequant(self.classifier(torch.flatten(self.pool(x), 1)))
        return self.classifier(torch.flatten(self.pool(self.dequant(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + identity)


class ResNet18Like(nn.Module):
    """ResNet-18 topology (4 stages x 2 basic blocks) at width ``base``."""

    def __init__(self, base: int = 16, num_classes: int = 10, quantized_head: bool = True) -> None:
        super().__init__()
        self.quant = QuantStub(scale=1 / 128)
        self.stem = conv_bn(3, base, 7, 2, act=nn.ReLU)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, cin = [], base
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = base * mult
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.quantized_head = quantized_head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.maxpool(self.stem(self.quant(x))))
        if self.quantized_head:
            return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))
        return self.fc(torch.flatten(self.pool(self.dequant(x)), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.8 + 0.6)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()
