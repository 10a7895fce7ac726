"""The quick-start workflow on scikit-learn's bundled digits data set.

float training -> calibration -> QAT -> convert, printing the accuracy of
each stage, as the seeds' quick start does with CIFAR-10.  No download is
needed: the 8x8 digits images ship with scikit-learn.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .march import march as march_scope
from .quantization import DeQuantStub, FakeQuantState, QuantStub, convert_fx, prepare_qat_fx, set_fake_quantize
from .quantization.qconfig import (
    default_calib_8bit_fake_quant_qconfig,
    default_calib_8bit_weight_32bit_out_fake_quant_qconfig,
    default_qat_8bit_fake_quant_qconfig,
    default_qat_8bit_weight_32bit_out_fake_quant_qconfig,
)


class DigitsNet(nn.Module):
    """A small residual CNN for 1x8x8 digits, made only of ops both marches run.

    The input is in [-1, 1) and quantized with the fixed camera scale 1/128;
    the classifier is a conv over the whole 4x4 map with a high-precision output.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.quant = QuantStub(scale=1 / 128)
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu3 = nn.ReLU()
        self.classifier = nn.Conv2d(2 * width, 10, 4)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)) + x)
        x = self.dequant(self.classifier(x))
        return x.flatten(1)


def digits_loaders(batch_size: int = 64, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Train/test loaders of the digits set: 1x8x8 images scaled to [-1, 1), 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0 * 2.0 - 1.0
    x = x.clamp(max=127 / 128)
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    n_train = int(0.8 * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    train = DataLoader(TensorDataset(x[tr], y[tr]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    test = DataLoader(TensorDataset(x[te], y[te]), batch_size=256)
    return train, test


def _progress(it: Any, desc: str, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, leave=False)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent."""
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def _train(model: nn.Module, loader: DataLoader, epochs: int, lr: float, desc: str, progress: bool,
           before_epoch: Optional[Any] = None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in _progress(range(epochs), desc, progress):
        model.train()
        if before_epoch is not None:
            before_epoch(model)
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()


def run_quickstart(march: str, epochs: int = 15, qat_epochs: int = 2, seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
    """Run the whole workflow on ``march``; return the models and accuracies (percent)."""
    torch.manual_seed(seed)
    train, test = digits_loaders(seed=seed)
    float_model = DigitsNet()
    _train(float_model, train, epochs, 1e-2, "float training", progress)
    float_model.eval()
    result: dict[str, Any] = {"march": march, "float_model": float_model, "float_acc": accuracy(float_model, test)}
    with march_scope(march):
        calib = prepare_qat_fx(copy.deepcopy(float_model), {
            "": default_calib_8bit_fake_quant_qconfig,
            "module_name": {"classifier": default_calib_8bit_weight_32bit_out_fake_quant_qconfig}})
        calib.eval()
        set_fake_quantize(calib, FakeQuantState.CALIBRATION)
        with torch.no_grad():
            for x, _ in _progress(train, "calibration", progress):
                calib(x)
        set_fake_quantize(calib, FakeQuantState.VALIDATION)
        result["calib_model"] = calib
        result["calib_acc"] = accuracy(calib, test)

        qat = prepare_qat_fx(copy.deepcopy(float_model), {
            "": default_qat_8bit_fake_quant_qconfig,
            "module_name": {"classifier": default_qat_8bit_weight_32bit_out_fake_quant_qconfig}})
        qat.load_state_dict(calib.state_dict())
        _train(qat, train, qat_epochs, 1e-4, "QAT", progress,
               before_epoch=lambda m: set_fake_quantize(m, FakeQuantState.QAT))
        qat.eval()
        set_fake_quantize(qat, FakeQuantState.VALIDATION)
        result["qat_model"] = qat
        result["qat_acc"] = accuracy(qat, test)
        quantized = convert_fx(qat)
        result["quantized_model"] = quantized
        result["quantized_acc"] = accuracy(quantized, test)
    result["test_loader"] = test
    return result
