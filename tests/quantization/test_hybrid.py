"""Hybrid models: the seeds' example, boundaries named as the seeds print them, integer == QAT validation."""

import copy

import pytest
import torch
from torch import nn

from qframe_core.errors import UnsupportedOpError
from qframe_core.march import march
from qframe_core.quantization import (
    FakeQuantState,
    convert_fx,
    load_observer_params,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import (
    default_calib_8bit_fake_quant_qconfig,
    default_calib_out_8bit_fake_quant_qconfig,
    default_qat_8bit_fake_quant_qconfig,
    default_qat_out_8bit_fake_quant_qconfig,
)
from tests.seed_examples.test_hybrid_guide_example import HybridModel, _SeluModule  # the seeds' model

HYBRID_DICT = {"module_name": ["conv1.conv", "conv3"], "module_type": [_SeluModule]}


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_seed_hybrid_example(m):
    torch.manual_seed(0)
    data = torch.rand(1, 3, 16, 16)
    model = HybridModel()
    float_res = model(data)
    with march(m):
        calib = prepare_qat_fx(copy.deepcopy(model), {
            "": default_calib_8bit_fake_quant_qconfig,
            "module_name": [("conv4", default_calib_out_8bit_fake_quant_qconfig)]}, hybrid=True, hybrid_dict=HYBRID_DICT)
        qat = prepare_qat_fx(copy.deepcopy(model), {
            "": default_qat_8bit_fake_quant_qconfig,
            "module_name": [("conv4", default_qat_out_8bit_fake_quant_qconfig)]}, hybrid=True, hybrid_dict=HYBRID_DICT)
    children = dict(qat.named_children())
    if m == "bernoulli2":
        # PReLU and selu are not in bernoulli2's table: the boundaries of the seeds' printout
        assert {"prelu_input_dequant", "conv3_input_dequant", "conv3_activation_post_process",
                "selu_2_input_dequant", "selu_1_activation_post_process"} <= set(children)
        assert type(qat.prelu) is nn.PReLU and "prelu" in qat.meta["qframe_cpu_ops"]
    else:
        # bayes runs PReLU and selu: only the ops of hybrid_dict go to the CPU
        assert {"conv1_conv_input_dequant", "conv1_conv_activation_post_process", "conv3_input_dequant",
                "conv3_activation_post_process", "selu_2_input_dequant"} <= set(children)
        assert qat.meta["qframe_cpu_ops"] == ["conv1.conv", "conv3", "selu._generated_selu_0"]
    assert qat.graph.find_nodes(op="call_module", target="conv3_activation_post_process")[0].next.target == "identity"
    # user-chosen CPU ops stay float modules; march ops are QAT modules
    assert type(qat.conv3) is nn.Conv2d and type(qat.conv1.conv) is nn.Conv2d
    assert type(qat.conv0).__module__.startswith("qframe_core.nn.qat")
    assert type(qat.conv2).__module__.startswith("qframe_core.nn.qat")
    assert qat.conv4.activation_post_process is None  # high-precision BPU output

    calib.eval()
    set_fake_quantize(calib, FakeQuantState.CALIBRATION)
    for _ in range(3):
        calib(torch.rand(1, 3, 16, 16))
    load_observer_params(calib, qat)
    qat.eval()
    set_fake_quantize(qat, FakeQuantState.VALIDATION)
    expected = qat(data)
    quantized = convert_fx(qat)
    got = quantized(data)
    assert torch.equal(got, expected), (got - expected).abs().max()
    assert torch.nn.functional.cosine_similarity(got.flatten(), float_res.flatten(), dim=0) > 0.99
    assert type(quantized.conv3) is nn.Conv2d  # still float after convert


def test_without_hybrid_the_unsupported_op_is_an_error_that_suggests_it():
    with march("bernoulli2"), pytest.raises(UnsupportedOpError, match=r"'prelu' \(torch.nn.PReLU\).*hybrid=True"):
        prepare_qat_fx(HybridModel(), {"": default_qat_8bit_fake_quant_qconfig})


def test_hybrid_dict_needs_hybrid_and_known_keys():
    with march("bayes"), pytest.raises(ValueError, match="only used with hybrid=True"):
        prepare_qat_fx(HybridModel(), {"": default_qat_8bit_fake_quant_qconfig}, hybrid_dict=HYBRID_DICT)
    with march("bayes"), pytest.raises(ValueError, match="unknown keys"):
        prepare_qat_fx(HybridModel(), {"": default_qat_8bit_fake_quant_qconfig}, hybrid=True,
                       hybrid_dict={"module_names": ["conv3"]})
