"""optimize_graph=True: cat inputs and output share one fake-quantize, so the integer cat is a copy."""

import torch
from torch import nn

from qframe_core.march import march
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class CatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        return self.dequant(self.head(torch.cat([self.a(x), self.b(x)], dim=1)))


def test_cat_scales_are_shared_and_the_result_is_exact():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    with march("bernoulli2"):
        q = prepare_qat_fx(CatNet(), {"": Q8}, optimize_graph=True)
        plain = prepare_qat_fx(CatNet(), {"": Q8})
    cat = q._generated_cat_0
    assert q.a.activation_post_process is cat.activation_post_process  # shared module
    assert q.b.activation_post_process is cat.activation_post_process
    assert plain.a.activation_post_process is not plain._generated_cat_0.activation_post_process
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    params = cat.integer_params()
    # one scale: every input is rescaled by exactly 1 (m == 2**s)
    assert all(m == 2 ** s for m, s in zip(params.multipliers, params.shifts))
    assert torch.equal(convert_fx(q)(x), q(x))
    assert len(q.state_dict()) > 0 and q.load_state_dict(q.state_dict()) is not None
