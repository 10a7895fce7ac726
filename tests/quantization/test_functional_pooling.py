"""Functional pooling (``F.adaptive_avg_pool2d``, ``F.avg_pool2d``, ``F.max_pool2d``) with constant arguments
becomes the matching ``nn`` module at prepare, so it quantizes exactly as the module form does
(torchvision's MobileNetV2 writes its global pooling as ``nn.functional.adaptive_avg_pool2d(x, (1, 1))``)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_calib_8bit_fake_quant_qconfig

#: case -> (functional form, module form, stem of the generated module's name)
CASES = {
    "adaptive_avg": (lambda x: F.adaptive_avg_pool2d(x, (1, 1)), nn.AdaptiveAvgPool2d((1, 1)), "adaptive_avg_pool2d"),
    "avg": (lambda x: F.avg_pool2d(x, 2), nn.AvgPool2d(2), "avg_pool2d"),
    "avg_kwargs": (lambda x: F.avg_pool2d(x, kernel_size=3, stride=1, padding=1), nn.AvgPool2d(3, 1, 1), "avg_pool2d"),
    "max": (lambda x: F.max_pool2d(x, 3, 2, 1), nn.MaxPool2d(3, 2, 1), "max_pool2d"),
}
#: bernoulli2's table has no AdaptiveAvgPool2d (refusal tested below)
RUNS = [(m, c) for m in ("bernoulli2", "bayes") for c in sorted(CASES) if (m, c) != ("bernoulli2", "adaptive_avg")]


class Net(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = pool
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.conv(self.quant(x))
        x = self.pool(x)
        return self.dequant(x)


class _Functional(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _integer(model, m, x):
    with march(m):
        q = prepare_qat_fx(copy.deepcopy(model), {"": default_calib_8bit_fake_quant_qconfig})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    return q, convert_fx(q)


@pytest.mark.parametrize("m,case", RUNS)
def test_functional_pool_quantizes_as_its_module(m, case):
    fn, module, stem = CASES[case]
    torch.manual_seed(0)
    functional = Net(_Functional(fn)).eval()
    modular = Net(module).eval()
    modular.conv.load_state_dict(functional.conv.state_dict())
    x = torch.randn(2, 3, 8, 8)
    qf, int_f = _integer(functional, m, x)
    qm, int_m = _integer(modular, m, x)
    generated = [n for n, _ in qf.named_modules() if n.startswith("pool._generated_")]
    assert generated and generated[0] == f"pool._generated_{stem}_0"
    assert torch.equal(int_f(x), int_m(x))
    assert torch.equal(int_f(x), qf(x))  # the integer model is what QAT validation predicted
    torch.testing.assert_close(int_f(x), functional(x), atol=0.1, rtol=0.1)


def test_adaptive_avg_pool_on_bernoulli2_is_refused_by_its_table():
    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match="AdaptiveAvgPool2d"):
        prepare_qat_fx(Net(_Functional(CASES["adaptive_avg"][0])), {"": default_calib_8bit_fake_quant_qconfig})


def test_non_constant_arguments_stay_functional():
    class Dynamic(nn.Module):
        def forward(self, x):
            return F.adaptive_avg_pool2d(x, x.shape[-1] // 2)

    with march("bayes"), pytest.raises(UnsupportedOpError, match="adaptive_avg_pool2d"):
        prepare_qat_fx(Net(Dynamic()), {"": default_calib_8bit_fake_quant_qconfig})
