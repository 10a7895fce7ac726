"""appendix-eager-and-op-tables.zh.md "Eager 模式": fusion, prepare_qat, QAT, convert, trace, and the
example's compile_quantized_model (check_model with advice, compile_model, perf_model, visualize_model).

Imports renamed (horizon_plugin_pytorch -> qframe_core); MNIST replaced by
scikit-learn's digits, upsampled to the example's 1x28x28 input.
"""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.quantization import DeQuantStub

import qframe_core as horizon
import qframe_core.errors  # noqa: F401
import qframe_core.quantization  # noqa: F401  (the seeds reach it as horizon.quantization)
from qframe_core.nn.intrinsic import ConvReLU2d
from qframe_core.quantization import FakeQuantState, QuantStub, load_compiled, set_fake_quantize
from qframe_core.quickstart import digits_loaders


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels, out_channels, kernel_size):
        super(ConvBNReLU, self).__init__(
            nn.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size),
            nn.BatchNorm2d(num_features=out_channels),
            nn.ReLU(),
        )

    def fuse_model(self):
        torch.quantization.fuse_modules(
            self, ["0", "1", "2"], inplace=True, fuser_func=horizon.quantization.fuse_known_modules,
        )


class ClassiFier(nn.Module):
    def __init__(self, in_channels, out_channels):
        super(ClassiFier, self).__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, data):
        return self.conv(data)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv0 = ConvBNReLU(1, 10, 5)
        self.max_pool = nn.MaxPool2d(kernel_size=2)
        self.conv1 = ConvBNReLU(10, 20, 5)
        self.avg_pool = nn.AvgPool2d(kernel_size=8)
        self.classifier = ClassiFier(20, 10)
        self.quant = QuantStub(scale=1 / 128)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.conv0(x)
        x = self.max_pool(x)
        x = self.conv1(x)
        x = self.avg_pool(x)
        x = self.classifier(x)
        x = self.dequant(x)
        return x

    def fuse_model(self):
        for m in self.modules():
            if type(m) == ConvBNReLU:
                m.fuse_model()


def test_fuse_example_prints_as_the_seed():
    float_model = ConvBNReLU(1, 1, 1).eval()
    x = torch.randn(2, 1, 4, 4)
    ref = float_model(x)
    float_model.fuse_model()
    assert [type(m) for m in float_model] == [ConvReLU2d, nn.Identity, nn.Identity]
    assert isinstance(float_model[0].conv, nn.Conv2d)
    torch.testing.assert_close(float_model(x), ref, atol=1e-5, rtol=1e-5)  # BN folded, ReLU kept


def _mnist_like(loader):
    for x, y in loader:
        yield F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(-1, 1), y


def _accuracy(model, loader):
    correct = total = 0
    with torch.no_grad():
        for x, y in _mnist_like(loader):
            correct += (model(x).view(-1, 10).argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * correct / total


def test_bernoulli2_refuses_the_examples_avg_pool():
    """The example targets bayes: bernoulli2's op table limits AvgPool2d kernels to 7."""
    horizon.march.set_march(horizon.march.March.BERNOULLI2)
    model = Net().eval()
    model.fuse_model()
    model.qconfig = horizon.quantization.get_default_qat_qconfig()
    with pytest.raises(horizon.errors.UnsupportedOpError, match=r"'avg_pool'.*kernel_size=8.*bernoulli2"):
        horizon.quantization.prepare_qat(model)


def compile_quantized_model(quantized_model, hbdk_dir, neval_batches=1):
    """The example's 对定点预测模型进行检查和编译 step (its evaluate call is done by the caller)."""
    example_input = torch.ones(size=(neval_batches, 1, 28, 28))
    traced_model = torch.jit.trace(quantized_model, example_input)

    # 检查模型是否能够被编译
    horizon.quantization.check_model(quantized_model, example_input, advice=1)
    if not os.path.exists(hbdk_dir):
        os.mkdir(hbdk_dir)

    # 编译模型，hbdk_model 目录下的 model.hbm 就是编译得到的上板模型
    horizon.quantization.compile_model(
        traced_model, [example_input], opt=2, hbm=hbdk_dir + "/model.hbm"
    )
    # 对模型进行性能分析 (measured on the host CPU integer kernels)
    horizon.quantization.perf_model(
        traced_model,
        [example_input],
        opt=2,
        input_source=["pyramid"],
        layer_details=True,
        out_dir=hbdk_dir,
    )
    horizon.quantization.visualize_model(
        traced_model,
        [example_input],
        save_path=hbdk_dir + "/model.svg",
        show=False,
    )
    return traced_model


@pytest.mark.slow
def test_eager_workflow(tmp_path, capsys):
    march = horizon.march.March.BAYES
    torch.manual_seed(0)
    train, test = digits_loaders()
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for x, y in _mnist_like(train):
            opt.zero_grad()
            F.cross_entropy(model(x).view(-1, 10), y).backward()
            opt.step()
    float_model = model.eval()
    float_acc = _accuracy(float_model, test)

    horizon.march.set_march(march)
    qat_model = copy.deepcopy(float_model)
    qat_model.fuse_model()
    assert type(qat_model.conv0[0]).__name__ == "ConvReLU2d"
    qat_model.qconfig = horizon.quantization.get_default_qat_qconfig()
    qat_model.classifier.qconfig = horizon.quantization.get_default_qat_out_qconfig()
    returned = horizon.quantization.prepare_qat(qat_model, inplace=True)
    assert returned is qat_model and type(qat_model) is Net  # eager: the model keeps its class and forward
    assert type(qat_model.conv0[0]).__module__.startswith("qframe_core.nn.qat")
    assert qat_model.classifier.conv.activation_post_process is None  # int32 output
    assert qat_model.quant.activation_post_process.scale.item() == pytest.approx(1 / 128)

    qat_model.train()
    set_fake_quantize(qat_model, FakeQuantState.QAT)
    opt = torch.optim.SGD(qat_model.parameters(), lr=1e-4)
    for x, y in _mnist_like(train):
        opt.zero_grad()
        F.cross_entropy(qat_model(x).view(-1, 10), y).backward()
        opt.step()
    qat_model.eval()
    set_fake_quantize(qat_model, FakeQuantState.VALIDATION)
    qat_acc = _accuracy(qat_model, test)

    quantized_model = horizon.quantization.convert(qat_model.eval(), inplace=False)
    assert type(quantized_model) is Net and quantized_model is not qat_model
    assert type(quantized_model.conv0[0]).__module__.startswith("qframe_core.nn.quantized")
    example_input = torch.ones(size=(1, 1, 28, 28))
    traced_model = torch.jit.trace(quantized_model, example_input)
    int_acc = _accuracy(traced_model, test)
    print(f"{march}: float {float_acc:.2f}% QAT-validation {qat_acc:.2f}% integer (traced) {int_acc:.2f}%")
    assert float_acc > 80
    assert qat_acc >= float_acc - 2.0 and int_acc == pytest.approx(qat_acc, abs=0.3)
    x = next(_mnist_like(test))[0]
    with torch.no_grad():
        q, r = quantized_model(x), qat_model(x)
    # int32 outputs: the integer model and VALIDATION-state simulation agree to within one output step
    assert (q - r).abs().max().item() <= 1e-4 + 1e-3 * r.abs().max().item()

    capsys.readouterr()
    hbdk_dir = str(tmp_path / "hbdk_model")
    compile_quantized_model(quantized_model, hbdk_dir)
    out = capsys.readouterr().out
    for line in ("qframe model check PASS", "MACs", "conv0.0", "qframe model compilation SUCCESS", "FPS=",
                 "qframe performance measurement SUCCESS"):
        assert line in out, out[-2000:]
    loaded, manifest = load_compiled(hbdk_dir + "/model.hbm")
    assert manifest["march"] == march and manifest["opt"] == "O2" and manifest["model"] == "Net"
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized_model(x))  # another batch size than the example's
    with open(os.path.join(hbdk_dir, "Net.json")) as f:
        perf = json.load(f)
    assert perf["input_source"] == ["pyramid"] and perf["fps"] > 0 and len(perf["layers"]) == manifest["num_ops"]
    # conv0: 1 -> 10 channels, 5x5 kernel on 28x28 -> 24x24
    assert perf["layers"][1]["layer"] == "conv0.0" and perf["layers"][1]["macs"] == 10 * 24 * 24 * 25
    assert os.path.getsize(os.path.join(hbdk_dir, "model.svg")) > 0
