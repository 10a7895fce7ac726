"""Quantized Conv2d/Linear pack their weights once and stay correct through
state_dict, deepcopy, pickle and in-place weight changes."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from qframe_core.march import march
from qframe_core.nn.quantized import weighted
from qframe_core.quantization import (
    DeQuantStub,
    FakeQuantState,
    QuantStub,
    convert_fx,
    prepare_qat_fx,
    set_fake_quantize,
)
from qframe_core.quantization.qconfig import default_calib_8bit_fake_quant_qconfig as Q8


class Net(nn.Module):
    def __init__(self, linear: bool):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.linear = nn.Linear(16 * 6 * 6, 8) if linear else None
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.dw(self.relu(self.conv(self.quant(x))))
        if self.linear is not None:
            x = self.linear(x.flatten(1))
        return self.dequant(x)


def _convert(m: str, seed: int = 0):
    torch.manual_seed(seed)
    model = Net(linear=m == "bayes").eval()
    x = torch.randn(4, 3, 6, 6)
    with march(m):
        q = prepare_qat_fx(copy.deepcopy(model), {"": Q8})
    q.eval()
    set_fake_quantize(q, FakeQuantState.CALIBRATION)
    with torch.no_grad():
        q(x)
    set_fake_quantize(q, FakeQuantState.VALIDATION)
    with torch.no_grad():
        want = q(x)
    return convert_fx(q), x, want


def _weighted(model):
    return [mod for mod in model.modules() if isinstance(mod, weighted._WeightedQuantized)]


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_weights_packed_at_convert_and_reused(m):
    qm, x, want = _convert(m)
    mods = _weighted(qm)
    assert mods and all(mod._packed is not None for mod in mods)
    packs = [mod.packed_weight() for mod in mods]
    with torch.no_grad():
        y1 = qm(x)
        y2 = qm(x)
    assert all(mod.packed_weight() is p for mod, p in zip(mods, packs))  # no repacking per forward
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(y1, want, rtol=0, atol=0)  # integer model == QAT validation


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_deepcopy_pickle_state_dict(m):
    qm, x, _ = _convert(m)
    with torch.no_grad():
        want = qm(x)
    buf = io.BytesIO()
    torch.save(qm.state_dict(), buf)
    assert not any("packed" in k for k in qm.state_dict())
    for clone in (copy.deepcopy(qm), pickle.loads(pickle.dumps(qm))):
        with torch.no_grad():
            torch.testing.assert_close(clone(x), want, rtol=0, atol=0)
    # load another model's state: the pack follows the new weights
    other, _, _ = _convert(m, seed=1)
    with torch.no_grad():
        want_other = other(x)
    buf.seek(0)
    qm.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(qm(x), want_other, rtol=0, atol=0)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    with torch.no_grad():
        torch.testing.assert_close(other(x), want, rtol=0, atol=0)


def test_in_place_weight_change_repacks():
    qm, x, _ = _convert("bayes")
    conv = _weighted(qm)[0]
    before = conv.packed_weight()
    with torch.no_grad():
        conv.weight.zero_()
    after = conv.packed_weight()
    assert after is not before
    assert int(torch.from_numpy(after.weight()).abs().sum()) == 0
    with torch.no_grad():
        qm(x)
    # replacing a buffer (not in place) is seen too
    conv.bias = conv.bias.clone() + 5
    assert conv._kernel_args()[2][0] == int(conv.bias[0])


def test_in_place_requantization_change_is_seen_by_the_cached_plan():
    """The kernel plan caches its epilogue (bias, multipliers, shifts as vectors): an in-place change of
    those buffers, or a storage swap through ``.data``, must rebuild it, so the output equals a fresh
    module with the same buffers."""
    qm, x, _ = _convert("bayes")
    conv = _weighted(qm)[0]
    with torch.no_grad():
        before = qm(x)
        conv.bias.add_(20000)
        changed = qm(x)
        assert not torch.equal(changed, before)
        assert torch.equal(changed, copy.deepcopy(qm)(x))  # a deep copy packs and plans from scratch
        conv.shift.data = conv.shift.clone() + 1
        shifted = qm(x)
        assert not torch.equal(shifted, changed)
        assert torch.equal(shifted, copy.deepcopy(qm)(x))
