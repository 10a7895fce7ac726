"""Segmented deployment: a mid-model QuantStub(scale=None) records the incoming scale; stages chain exactly."""

import copy

import pytest
import torch
from torch import nn
from torch.fx.passes.split_module import split_module

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
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig as Q8


class TwoStage(nn.Module):
    def __init__(self, boundary_scale=None):
        super().__init__()
        self.quant = QuantStub()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.stage2_quant = QuantStub(scale=boundary_scale)  # where stage 2 starts
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU())
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.backbone(self.quant(x))
        return self.dequant(self.head(self.stage2_quant(x)))


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_stages_chain_bit_exactly(m):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    with march(m):
        q = prepare_qat_fx(TwoStage(), {"": Q8})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    # the boundary recorded the backbone's output scale instead of calibrating its own
    assert torch.equal(q.stage2_quant.output_params().scale, q.get_submodule("backbone.2").activation_post_process.scale)
    whole = convert_fx(q)
    expected = whole(x)
    assert torch.equal(expected, q(x))

    stage_of = {}

    def split_at_boundary(node):
        stage = 1 if node.target in ("stage2_quant", "head.0", "head.1", "dequant") else 0
        stage_of[node.name] = stage
        return stage

    parts = split_module(copy.deepcopy(whole), whole, split_at_boundary)
    stage1_out = parts.submod_0(x)
    assert stage1_out.dtype == torch.int8  # stage 1 hands integers to stage 2
    assert torch.equal(parts.submod_1(stage1_out), expected)
    # stage 2 traced alone takes float input: its QuantStub quantizes with the recorded scale
    scale = whole.stage2_quant.scale
    assert torch.equal(parts.submod_1(stage1_out.float() * scale), expected)


def test_a_fixed_scale_at_a_segment_boundary_is_refused():
    with march("bayes"), pytest.raises(UnsupportedOpError, match=r"'stage2_quant'.*QuantStub\(scale=None\)"):
        prepare_qat_fx(TwoStage(boundary_scale=1 / 128), {"": Q8})
