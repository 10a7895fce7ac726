# ruff: noqa: UP004, UP032  (the seed's helper code is kept as written)
"""quick-start.zh.md, the whole flow: float model -> Calibration -> 量化训练 -> 转定点模型 -> 模型部署.

The seed's code with its imports renamed (horizon_plugin_pytorch -> qframe_core) and these swaps:

* CIFAR-10 -> scikit-learn's digits, served as the same (uint8 HxWx3 image, label) examples through the
  seed's own ``collate_fn`` (``rgb2centered_yuv`` then ``Normalize(mean=0, std=128)``, written out since
  torchvision is not installed); no RandAugment/flip (torchvision, and digits are not flip-invariant);
* torchvision's MobileNetV2 -> the same class reproduced in ``torchvision_mobilenetv2.py``, at
  ``width_mult=0.25`` with three inverted-residual stages for the 8x8 images;
* fewer epochs and a smaller batch.

The deployment step runs as the seed writes it: ``torch.jit.trace``/``torch.jit.save``, then ``check_model``,
``compile_model`` (``hbm=".../model.hbm"``, ``input_source="pyramid"``, ``opt="O1"``), ``perf_model`` with
``layer_details=True`` and ``visualize_model``. qframe prints its own names where the seed shows HBDK's
("qframe model check PASS", "qframe model compilation SUCCESS"), and perf_model's figures are measured on
the host CPU's integer kernels (the seed's are HBDK's BPU estimates).
"""

import contextlib
import copy
import io
import json
import os
import xml.etree.ElementTree as ET
from typing import Callable, List, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.quantization
from torch import Tensor
from torch.quantization import DeQuantStub
from torch.utils import data

from qframe_core.functional import rgb2centered_yuv
from qframe_core.march import March, set_march
from qframe_core.quantization import (
    FakeQuantState,
    QuantStub,
    check_model,
    compile_model,
    convert_fx,
    perf_model,
    prepare_qat_fx,
    set_fake_quantize,
    visualize_model,
)
from qframe_core.quantization.deploy import load_compiled
from qframe_core.quantization.qconfig import (
    default_calib_8bit_fake_quant_qconfig,
    default_calib_8bit_weight_32bit_out_fake_quant_qconfig,
    default_qat_8bit_fake_quant_qconfig,
    default_qat_8bit_weight_32bit_out_fake_quant_qconfig,
)

from .torchvision_mobilenetv2 import MobileNetV2

pytestmark = [
    pytest.mark.slow,
    # the seed's own output shows these: tracing records shapes and scales as constants
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
]


class AverageMeter(object):
    """Computes and stores the average and current value"""

    def __init__(self, name: str, fmt=":f"):
        self.name = name
        self.fmt = fmt
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count

    def __str__(self):
        fmtstr = "{name} {val" + self.fmt + "} ({avg" + self.fmt + "})"
        return fmtstr.format(**self.__dict__)


def accuracy(output: Tensor, target: Tensor, topk=(1,)) -> List[Tensor]:
    """Computes the accuracy over the k top predictions for the specified
    values of k
    """
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.size(0)

        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))

        res = []
        for k in topk:
            correct_k = correct[:k].float().sum()
            res.append(correct_k.mul_(100.0 / batch_size))
        return res


def evaluate(
    model: nn.Module, data_loader: data.DataLoader, device: torch.device
) -> Tuple[AverageMeter, AverageMeter]:
    top1 = AverageMeter("Acc@1", ":6.2f")
    top5 = AverageMeter("Acc@5", ":6.2f")

    with torch.no_grad():
        for image, target in data_loader:
            image, target = image.to(device), target.to(device)
            output = model(image)
            output = output.view(-1, 10)
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            top1.update(acc1, image.size(0))
            top5.update(acc5, image.size(0))
            print(".", end="", flush=True)
        print()

    return top1, top5


def train_one_epoch(
    model: nn.Module,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler._LRScheduler],
    data_loader: data.DataLoader,
    device: torch.device,
) -> None:
    top1 = AverageMeter("Acc@1", ":6.3f")
    top5 = AverageMeter("Acc@5", ":6.3f")
    avgloss = AverageMeter("Loss", ":1.5f")

    model.to(device)

    for image, target in data_loader:
        image, target = image.to(device), target.to(device)
        output = model(image)
        output = output.view(-1, 10)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        top1.update(acc1, image.size(0))
        top5.update(acc5, image.size(0))
        avgloss.update(loss, image.size(0))
        print(".", end="", flush=True)
    print()

    print(
        "Full cifar-10 train set: Loss {:.3f} Acc@1"
        " {:.3f} Acc@5 {:.3f}".format(avgloss.avg, top1.avg, top5.avg)
    )


def _digits_as_cifar_examples(train: bool):
    """(uint8 HxWx3 image, label) pairs, as torchvision's CIFAR10 yields them: digits, 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.repeat((digits.images * 16).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    perm = np.random.RandomState(0).permutation(len(images))
    n_train = int(0.8 * len(images))
    idx = perm[:n_train] if train else perm[n_train:]
    return [(images[i], int(digits.target[i])) for i in idx]


# 准备数据集，请注意 collate_fn 中对 rgb2centered_yuv 的使用
def prepare_data_loaders(
    data_path: str, train_batch_size: int, eval_batch_size: int
) -> Tuple[data.DataLoader, data.DataLoader]:
    def normalize(x):  # transforms.Normalize(mean=0.0, std=128.0)
        return (x - 0.0) / 128.0

    def collate_fn(batch):
        batched_img = torch.stack(
            [
                torch.from_numpy(np.array(example[0], np.uint8, copy=True))
                for example in batch
            ]
        ).permute(0, 3, 1, 2)
        batched_target = torch.tensor([example[1] for example in batch])

        batched_img = rgb2centered_yuv(batched_img)
        batched_img = normalize(batched_img.float())

        return batched_img, batched_target

    train_dataset = _digits_as_cifar_examples(True)
    eval_dataset = _digits_as_cifar_examples(False)

    train_data_loader = data.DataLoader(
        train_dataset,
        batch_size=train_batch_size,
        sampler=data.RandomSampler(train_dataset, generator=torch.Generator().manual_seed(0)),
        collate_fn=collate_fn,
    )

    eval_data_loader = data.DataLoader(
        eval_dataset,
        batch_size=eval_batch_size,
        sampler=data.SequentialSampler(eval_dataset),
        collate_fn=collate_fn,
    )

    return train_data_loader, eval_data_loader


# 对浮点模型做必要的改造
class FxQATReadyMobileNetV2(MobileNetV2):
    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        inverted_residual_setting: Optional[List[List[int]]] = None,
        round_nearest: int = 8,
    ):
        super().__init__(
            num_classes, width_mult, inverted_residual_setting, round_nearest
        )
        self.quant = QuantStub(scale=1 / 128)
        self.dequant = DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        x = self.quant(x)
        x = super().forward(x)
        x = self.dequant(x)

        return x


@pytest.fixture(scope="module")
def one_thread():
    """Two cores shared with other work: one intra-op thread is several times faster for these tiny convs."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def flow(tmp_path_factory, one_thread):
    torch.manual_seed(0)
    log = io.StringIO()
    results = {}
    with contextlib.redirect_stdout(log):
        # ---- 获取浮点模型 --------------------------------------------------------
        model_path = str(tmp_path_factory.mktemp("model") / "mobilenetv2")
        data_path = "data"
        train_batch_size = 64
        eval_batch_size = 256
        epoch_num = 6
        device = torch.device("cpu")

        if not os.path.exists(model_path):
            os.makedirs(model_path, exist_ok=True)

        # 浮点模型初始化
        float_model = FxQATReadyMobileNetV2(width_mult=0.25, inverted_residual_setting=[
            [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 1]])

        # 准备数据集
        train_data_loader, eval_data_loader = prepare_data_loaders(
            data_path, train_batch_size, eval_batch_size
        )

        optimizer = torch.optim.Adam(
            float_model.parameters(), lr=0.01, weight_decay=1e-4
        )
        best_acc = 0

        for nepoch in range(epoch_num):
            float_model.train()
            train_one_epoch(
                float_model,
                nn.CrossEntropyLoss(),
                optimizer,
                None,
                train_data_loader,
                device,
            )

            # 浮点精度测试
            float_model.eval()
            top1, top5 = evaluate(float_model, eval_data_loader, device)

            print(
                "Float Epoch {}: evaluation Acc@1 {:.3f} Acc@5 {:.3f}".format(
                    nepoch, top1.avg, top5.avg
                )
            )

            if top1.avg > best_acc:
                best_acc = top1.avg
                # 保存最佳浮点模型参数
                torch.save(
                    float_model.state_dict(),
                    os.path.join(model_path, "float-checkpoint.ckpt"),
                )
        float_model.load_state_dict(torch.load(os.path.join(model_path, "float-checkpoint.ckpt")))
        float_model.eval()
        results["float"] = float(evaluate(float_model, eval_data_loader, device)[0].avg)

        # ---- Calibration ---------------------------------------------------------
        calib_batch_size = 256
        eval_batch_size = 256
        num_examples = float("inf")
        march = March.BAYES

        # 在进行模型转化前，必须设置好模型将要执行的硬件平台
        set_march(march)

        # 将模型转化为 Calibration 状态，以统计各处数据的数值分布特征
        calib_model = prepare_qat_fx(
            copy.deepcopy(float_model),
            {
                "": default_calib_8bit_fake_quant_qconfig,
                "module_name": {
                    # 在模型的输出层为 Conv 或 Linear 时，可以使用 out_qconfig
                    # 配置为高精度输出
                    "classifier": default_calib_8bit_weight_32bit_out_fake_quant_qconfig,
                },
            },
        ).to(
            device
        )  # prepare_qat_fx 接口不保证输出模型的 device 和输入模型完全一致

        # 准备数据集
        calib_data_loader, eval_data_loader = prepare_data_loaders(
            data_path, calib_batch_size, eval_batch_size
        )

        # 执行 Calibration 过程（不需要 backward）
        calib_model.eval()
        set_fake_quantize(calib_model, FakeQuantState.CALIBRATION)
        with torch.no_grad():
            cnt = 0
            for image, target in calib_data_loader:
                image, target = image.to(device), target.to(device)
                calib_model(image)
                print(".", end="", flush=True)
                cnt += image.size(0)
                if cnt >= num_examples:
                    break
            print()

        # 测试伪量化精度
        calib_model.eval()
        set_fake_quantize(calib_model, FakeQuantState.VALIDATION)

        top1, top5 = evaluate(
            calib_model,
            eval_data_loader,
            device,
        )
        print(
            "Calibration: evaluation Acc@1 {:.3f} Acc@5 {:.3f}".format(
                top1.avg, top5.avg
            )
        )
        results["calib"] = float(top1.avg)

        # 保存 Calibration 模型参数
        torch.save(
            calib_model.state_dict(),
            os.path.join(model_path, "calib-checkpoint.ckpt"),
        )

        # ---- 量化训练 ------------------------------------------------------------
        train_batch_size = 64
        eval_batch_size = 256
        epoch_num = 1

        train_data_loader, eval_data_loader = prepare_data_loaders(
            data_path, train_batch_size, eval_batch_size
        )

        # 将模型转为 QAT 状态
        qat_model = prepare_qat_fx(
            copy.deepcopy(float_model),
            {
                "": default_qat_8bit_fake_quant_qconfig,
                "module_name": {
                    "classifier": default_qat_8bit_weight_32bit_out_fake_quant_qconfig,
                },
            },
        ).to(device)

        # 加载 Calibration 模型中的量化参数
        qat_model.load_state_dict(calib_model.state_dict())

        optimizer = torch.optim.Adam(
            qat_model.parameters(), lr=1e-4, weight_decay=1e-4
        )

        best_acc = 0

        for nepoch in range(epoch_num):
            # 注意此处对 QAT 模型 training 状态的控制方法
            qat_model.train()
            set_fake_quantize(qat_model, FakeQuantState.QAT)

            train_one_epoch(
                qat_model,
                nn.CrossEntropyLoss(),
                optimizer,
                None,
                train_data_loader,
                device,
            )

            # 注意此处对 QAT 模型 eval 状态的控制方法
            qat_model.eval()
            set_fake_quantize(qat_model, FakeQuantState.VALIDATION)

            top1, top5 = evaluate(
                qat_model,
                eval_data_loader,
                device,
            )
            print(
                "QAT Epoch {}: evaluation Acc@1 {:.3f} Acc@5 {:.3f}".format(
                    nepoch, top1.avg, top5.avg
                )
            )

            if top1.avg > best_acc:
                best_acc = top1.avg

                torch.save(
                    qat_model.state_dict(),
                    os.path.join(model_path, "qat-checkpoint.ckpt"),
                )
        results["qat"] = float(top1.avg)

        # ---- 转定点模型 ----------------------------------------------------------
        base_model = qat_model

        # 将模型转为定点状态
        quantized_model = convert_fx(base_model).to(device)

        # 测试定点模型精度
        top1, top5 = evaluate(
            quantized_model,
            eval_data_loader,
            device,
        )
        print(
            "Quantized model: evaluation Acc@1 {:.3f} Acc@5 {:.3f}".format(
                top1.avg, top5.avg
            )
        )
        results["quantized"] = float(top1.avg)

        # ---- 模型部署 ------------------------------------------------------------
        compile_opt = "O1"

        # 这里的 example_input 也可以是随机生成的数据，但是推荐使用真实数据，以提高
        # 性能测试的准确性
        example_input = next(iter(eval_data_loader))[0]

        # 通过 trace 将模型序列化并生成计算图，注意模型和数据要放在 CPU 上
        script_model = torch.jit.trace(quantized_model.cpu(), example_input)
        torch.jit.save(script_model, os.path.join(model_path, "int_model.pt"))

        # 模型检查
        check_model(script_model, [example_input])

        # 模型编译，生成的 hbm 文件即为可部署的模型
        compile_model(
            script_model,
            [example_input],
            hbm=os.path.join(model_path, "model.hbm"),
            input_source="pyramid",
            opt=compile_opt,
        )

        # 模型性能测试
        perf_model(
            script_model,
            [example_input],
            out_dir=os.path.join(model_path, "perf_out"),
            input_source="pyramid",
            opt=compile_opt,
            layer_details=True,
        )

        # 模型可视化
        visualize_model(
            script_model,
            [example_input],
            save_path=os.path.join(model_path, "model.svg"),
            show=False,
        )

    return {"log": log.getvalue(), "acc": results, "float_model": float_model, "calib_model": calib_model,
            "qat_model": qat_model, "quantized_model": quantized_model, "model_path": model_path,
            "example_input": example_input, "eval_loader": eval_data_loader, "script_model": script_model}


def test_prints_each_stage_as_the_seed_does(flow):
    log = flow["log"]
    for line in ("Full cifar-10 train set: Loss ", "Float Epoch 0: evaluation Acc@1 ", "Float Epoch 5: evaluation Acc@1 ",
                 "Calibration: evaluation Acc@1 ", "QAT Epoch 0: evaluation Acc@1 ",
                 "Quantized model: evaluation Acc@1 "):
        assert line in log, log[-2000:]
    for name in ("float-checkpoint.ckpt", "calib-checkpoint.ckpt", "qat-checkpoint.ckpt", "int_model.pt"):
        assert os.path.exists(os.path.join(flow["model_path"], name))


def test_accuracies_behave_as_the_seed_shows(flow):
    acc = flow["acc"]
    # the seed: float 75.94, calibration 76.19, QAT 77.95, quantized 78.00 — quantization costs (almost) nothing
    assert acc["float"] > 85.0, acc
    assert acc["calib"] >= acc["float"] - 2.0, acc
    assert acc["qat"] >= acc["float"] - 2.0, acc
    assert abs(acc["quantized"] - acc["qat"]) <= 1.0, acc


def test_the_prepared_models_have_the_seeds_configuration(flow):
    calib, qat = flow["calib_model"], flow["qat_model"]
    for m in (calib, qat):
        # QuantStub(scale=1 / 128) keeps its fixed scale; the classifier's Linear has a high-precision output
        assert m.quant.activation_post_process.fixed_scale
        assert m.quant.activation_post_process.scale.item() == 1 / 128
        linear = m.get_submodule("classifier.1")
        assert type(linear).__module__.startswith("qframe_core.nn.qat") and linear.activation_post_process is None
        assert linear.weight_fake_quant.ch_axis == 0  # per-output-channel weights
        # torchvision's conv -> BN -> ReLU6 blocks are fused; BN and ReLU6 became Identity
        assert isinstance(m.get_submodule("features.0.1"), nn.Identity)
        assert isinstance(m.get_submodule("features.0.2"), nn.Identity)
    assert isinstance(calib.get_submodule("classifier.0"), nn.Dropout)


def test_traced_integer_model_round_trips_through_torch_jit_save(flow):
    x = flow["example_input"]
    loaded = torch.jit.load(os.path.join(flow["model_path"], "int_model.pt"))
    with torch.no_grad():
        expected = flow["quantized_model"](x)
        assert torch.equal(loaded(x), expected)
        # the integer model is what QAT in VALIDATION state predicted
        assert torch.equal(flow["qat_model"](x), expected)
    assert expected.shape == (len(x), 10)


def test_deployment_runs_as_the_seed_shows(flow):
    log, path = flow["log"], flow["model_path"]
    # the seed's printed lines, with qframe's names for HBDK's
    for line in ("This model is supported!", "qframe model check PASS", "qframe model compilation SUCCESS",
                 "FPS=", "latency = ", "DDR = ", "perf_out/FxQATReadyMobileNetV2.html",
                 "qframe performance measurement SUCCESS"):
        assert line in log, log[-3000:]
    assert log.index("qframe model check PASS") < log.index("qframe model compilation SUCCESS") < log.index("FPS=")
    for name in ("model.hbm", "model.svg", "perf_out/FxQATReadyMobileNetV2.html", "perf_out/FxQATReadyMobileNetV2.json",
                 "perf_out/FxQATReadyMobileNetV2.hbm"):
        assert os.path.exists(os.path.join(path, name)), name


def test_compiled_model_is_the_integer_model(flow):
    loaded, manifest = load_compiled(os.path.join(flow["model_path"], "model.hbm"))
    assert manifest["march"] == "bayes" and manifest["opt"] == "O1" and manifest["input_source"] == ["pyramid"]
    assert manifest["inputs"][0]["shape"] == list(flow["example_input"].shape)
    assert manifest["outputs"][0]["shape"] == [len(flow["example_input"]), 10]
    # bit-identical to the converted model on every eval batch (not only the example)
    with torch.no_grad():
        for image, _ in flow["eval_loader"]:
            assert torch.equal(loaded(image), flow["quantized_model"](image))


def test_perf_and_visualization_outputs(flow):
    path = flow["model_path"]
    with open(os.path.join(path, "perf_out", "FxQATReadyMobileNetV2.json")) as f:
        perf = json.load(f)
    _, manifest = load_compiled(os.path.join(path, "model.hbm"))
    assert perf["fps"] > 0 and perf["latency_us"]["median"] > 0 and perf["ddr_bytes"] > perf["weight_bytes"] > 0
    assert perf["macs"] == manifest["macs"] > 0
    assert len(perf["layers"]) == manifest["num_ops"] and all(r["time_us"] > 0 for r in perf["layers"])
    assert perf["input_source"] == ["pyramid"] and "host CPU" in perf["measured_on"]
    with open(os.path.join(path, "perf_out", "FxQATReadyMobileNetV2.html"), encoding="utf-8") as f:
        html = f.read()
    assert "<svg" in html and "<script" not in html and "<link" not in html
    root = ET.parse(os.path.join(path, "model.svg")).getroot()
    nodes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    assert len(nodes) == manifest["num_ops"] + 2  # the input, every op, the output
    report = check_model(flow["script_model"], [flow["example_input"]], advice=1)
    assert report.march == "bayes" and len(report.layers) == manifest["num_ops"]
    assert report.total_macs == manifest["macs"]
