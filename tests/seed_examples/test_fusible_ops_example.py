"""advanced.zh.md "可以融合的算子": the seed's ``register_fusion_patterns`` lists, for every conv in
(Conv2d, ConvTranspose2d, Conv3d, Linear), bn in (BatchNorm1d/2d/3d, SyncBatchNorm), add in
(nn.quantized.FloatFunctional.add, horizon's FloatFunctional.add, torch.add, ``+``) and relu in
(nn.ReLU, nn.ReLU6, F.relu, F.relu6): conv-bn, conv-relu, conv-add (the conv's output as either operand),
conv-bn-relu, conv-bn-add, conv-add-relu and conv-bn-add-relu.

Each chain is built and fused with ``fuse_fx`` (no march set: every installed march's patterns): it must
become one module — the conv's, or ``_generated_add_0`` when an add is fused — with the absorbed modules
Identity, computing what the float chain computed.
"""

import copy
import operator

import pytest
import torch
from torch import nn

import qframe_core.nn.quantized  # noqa: F401  (horizon_nn.quantized)
from qframe_core import nn as horizon_nn
from qframe_core.quantization import DeQuantStub, QuantStub, fuse_fx

CONVS = {
    nn.Conv2d: (lambda: nn.Conv2d(3, 3, 1), (nn.BatchNorm2d, nn.SyncBatchNorm), (2, 3, 4, 4)),
    nn.ConvTranspose2d: (lambda: nn.ConvTranspose2d(3, 3, 2, stride=2), (nn.BatchNorm2d, nn.SyncBatchNorm),
                         (2, 3, 4, 4)),
    nn.Conv3d: (lambda: nn.Conv3d(3, 3, 1), (nn.BatchNorm3d, nn.SyncBatchNorm), (2, 3, 2, 4, 4)),
    nn.Linear: (lambda: nn.Linear(3, 3), (nn.BatchNorm1d, nn.SyncBatchNorm), (2, 3)),
}
ADDS = ("horizon_nn.quantized.FloatFunctional.add", "nn.quantized.FloatFunctional.add", "torch.add", "operator.add")
RELUS = (nn.ReLU, nn.ReLU6, nn.functional.relu, nn.functional.relu6)


class Chain(nn.Module):
    def __init__(self, conv, bn, add, relu, conv_second):
        super().__init__()
        self.quant = QuantStub()
        self.quant_other = QuantStub()
        self.conv = CONVS[conv][0]()
        self.bn = bn(3) if bn is not None else None
        self.add = add
        self.conv_second = conv_second
        self.ff = {ADDS[0]: horizon_nn.quantized.FloatFunctional, ADDS[1]: nn.quantized.FloatFunctional}.get(
            add, lambda: None)()
        self.relu_fn = relu if relu in (nn.functional.relu, nn.functional.relu6) else None
        self.relu = relu() if relu in (nn.ReLU, nn.ReLU6) else None
        self.dequant = DeQuantStub()

    def forward(self, x, other):
        x = self.conv(self.quant(x))
        if self.bn is not None:
            x = self.bn(x)
        if self.add is not None:
            other = self.quant_other(other)
            a, b = (other, x) if self.conv_second else (x, other)
            if self.ff is not None:
                x = self.ff.add(a, b)
            elif self.add == "torch.add":
                x = torch.add(a, b)
            else:
                x = operator.add(a, b)
        if self.relu is not None:
            x = self.relu(x)
        elif self.relu_fn is not None:
            x = self.relu_fn(x)
        return self.dequant(x)


def _chains(conv):
    adds = [None, *ADDS]
    for bn in (None, *CONVS[conv][1]):
        for add in adds:
            for relu in (None, *RELUS):
                for conv_second in ((False, True) if add else (False,)):
                    if bn is None and add is None and relu is None:
                        continue
                    yield bn, add, relu, conv_second


@pytest.mark.parametrize("conv", list(CONVS), ids=lambda c: c.__name__)
def test_every_listed_chain_fuses_into_one_module(conv):
    torch.manual_seed(0)
    shape = CONVS[conv][2]
    x, other = torch.randn(shape), torch.randn(CONVS[conv][0]()(torch.randn(shape)).shape)
    count = 0
    for bn, add, relu, conv_second in _chains(conv):
        model = Chain(conv, bn, add, relu, conv_second).eval()
        if model.bn is not None:
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.5, 2.0)
            model.bn.weight.data.uniform_(0.5, 1.5)
        what = (conv.__name__, bn and bn.__name__, add, getattr(relu, "__name__", None), conv_second)
        fused = fuse_fx(copy.deepcopy(model))
        calls = [n.target for n in fused.graph.nodes if n.op in ("call_module", "call_function", "call_method")]
        where = "_generated_add_0" if add in ("torch.add", "operator.add") else ("ff" if add else "conv")
        if add in ADDS[:2]:
            assert calls[-2:] == ["ff", "dequant"], (what, calls)  # the FloatFunctional holds the fusion
        else:
            assert calls[-2:] == [where, "dequant"], (what, calls)
        assert len(calls) == (4 if add else 3), (what, calls)
        assert type(fused.get_submodule(where)).__module__ in ("qframe_core.nn.intrinsic", "torch.nn.modules.conv",
                                                               "torch.nn.modules.linear"), what
        for absorbed in ("bn", "relu"):
            if getattr(model, absorbed) is not None:
                assert isinstance(getattr(fused, absorbed), nn.Identity), what
        if where != "conv":
            assert isinstance(fused.conv, nn.Identity), what
        torch.testing.assert_close(fused(x, other), model(x, other), atol=1e-5, rtol=1e-5, msg=str(what))
        count += 1
    # no add: 4 relus (bn None) + 2 bns x 5 relu options; with an add: 3 bn options x 4 adds x 5 relu options x 2 operands
    assert count == 4 + 2 * 5 + 3 * 4 * 5 * 2
