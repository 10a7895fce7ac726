"""dev-guide.zh.md "伪量化算子": ``fake_quant_x = clip(round(x / scale), -128, 127) * scale``, the
straight-through ``round_ste`` of "基于学习的方法", and the two qconfigs the section points to
(``default_qat_8bit_fake_quant_qconfig``: statistics; ``default_qat_8bit_lsq_quant_qconfig``: learned scale).

The section's ``compute_scale`` snippet is not run: as written it does not execute (``xmin, xmax = x.max(),
maxv = x.min()`` unpacks a 0-d tensor) and its ``/ 256.0`` is not the symmetric rule qframe follows
(``amax / 127.5``, as torch computes it and as the seeds' printed scales show).
"""

import pytest
import torch
from torch import Tensor, nn

from qframe_core.march import March, set_march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantize,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.lsq import LSQFakeQuantize
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig, default_qat_8bit_lsq_quant_qconfig


def round_ste(x: Tensor):
    return (x.round() - x).detach() + x


def test_fake_quant_is_the_seeds_formula_with_the_straight_through_gradient():
    scale = 0.05
    fq = FakeQuantize(observer="min_max", scale=scale)  # a fixed scale: the formula alone
    fq.set_state(FakeQuantState.QAT)
    x = (torch.randn(1000) * 4).requires_grad_()  # many values beyond 127 * scale = 6.35
    y = fq(x)
    fake_quant_x = torch.clip(torch.round(x.detach() / scale), -128, 127) * scale
    assert torch.equal(y.detach(), fake_quant_x)
    # the gradient of clip(round_ste(x / scale), -128, 127) * scale: 1 inside the range, 0 outside
    y.sum().backward()
    xr = x.detach().clone().requires_grad_()
    (torch.clip(round_ste(xr / scale), -128, 127) * scale).sum().backward()
    assert torch.equal(x.grad, xr.grad)
    assert 0 < int((x.grad == 0).sum()) < len(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.relu(self.conv(self.quant(x))))


@pytest.mark.parametrize("qconfig,cls", [(default_qat_8bit_fake_quant_qconfig, FakeQuantize),
                                         (default_qat_8bit_lsq_quant_qconfig, LSQFakeQuantize)],
                         ids=["statistics", "lsq"])
def test_the_sections_qconfigs_train_and_convert(qconfig, cls):
    torch.manual_seed(0)
    set_march(March.BAYES)
    model = prepare_qat_fx(Net(), {"": qconfig})
    fq = model.conv.activation_post_process
    assert type(fq) is cls
    model.train()
    set_fake_quantize(model, FakeQuantState.QAT)
    x = torch.randn(8, 3, 6, 6)
    model(x)  # first batch: the scale from the statistics
    scale = fq.scale.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (model(x) - 1.0).pow(2).mean().backward()
        opt.step()
    if cls is LSQFakeQuantize:
        assert any(p is fq.scale for p in model.parameters())  # learned: a parameter the optimizer moves
    else:
        assert not any(p is fq.scale for p in model.parameters())  # statistics: a buffer
    assert not torch.equal(fq.scale.detach(), scale)
    model.eval()
    set_fake_quantize(model, FakeQuantState.VALIDATION)
    with torch.no_grad():
        assert torch.equal(convert_fx(model)(x), model(x))
