"""QAT in VALIDATION state vs the integer model, layer by layer, on MobileNetV2- and ResNet-18-shaped nets.

SPEC: at most 1 LSB per element, in at most 0.1% of elements.  qframe's
VALIDATION state reproduces the march's integer arithmetic, so the measured
figure is 0 LSB (bit-exact); the assertions keep the SPEC's bound.
"""

import copy

import pytest
import torch

from qframe_core.march import march
from qframe_core.quantization import FakeQuantState, convert_fx, prepare_qat_fx, set_fake_quantize
from qframe_core.quantization.qconfig import default_calib_8bit_fake_quant_qconfig as C8
from qframe_core.quantization.qconfig import default_calib_8bit_weight_32bit_out_fake_quant_qconfig as C32
from qframe_profiler import featuremap_similarity

from .zoo import MobileNetV2Like, ResNet18Like, randomize_batchnorm

pytestmark = pytest.mark.slow

CASES = [
    ("bayes", MobileNetV2Like, True, "classifier"),
    ("bernoulli2", MobileNetV2Like, False, None),  # no Linear / AdaptiveAvgPool2d on bernoulli2: float head
    ("bayes", ResNet18Like, True, "fc"),
    ("bernoulli2", ResNet18Like, False, None),
]


@pytest.mark.parametrize("m,cls,qhead,out_layer", CASES, ids=["mbv2-bayes", "mbv2-bernoulli2", "r18-bayes",
                                                               "r18-bernoulli2"])
def test_layer_by_layer(m, cls, qhead, out_layer):
    torch.manual_seed(0)
    model = randomize_batchnorm(cls(quantized_head=qhead))
    calib_x = torch.rand(8, 3, 64, 64) * 2 - 1
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    qconfig = {"": C8, "module_name": {out_layer: C32}} if out_layer else {"": C8}
    with march(m):
        q = prepare_qat_fx(copy.deepcopy(model), qconfig)
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        q(calib_x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    qm = convert_fx(q)
    rows = featuremap_similarity(q, qm, (x,), print_table=False)
    checked = [r for r in rows if r.max_lsb_diff is not None]
    assert len(checked) > 15
    for r in checked:
        assert r.max_lsb_diff <= 1.0 + 1e-6, r
        assert r.mismatch_ratio <= 1e-3, r
    with torch.no_grad():
        assert torch.equal(q(x), qm(x))
        cos = torch.nn.functional.cosine_similarity(qm(x).flatten(), model(x).flatten(), dim=0)
    assert cos > 0.9
