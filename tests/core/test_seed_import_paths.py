"""Names the seeds import from horizon_plugin_pytorch.quantization resolve on qframe_core.quantization."""

import pytest
import torch

import qframe_core.quantization as quantization
from qframe_core.quantization import FakeQuantize
from qframe_core.quantization.fixed_scale import FixedScaleObserver


def test_observer_classes_resolve_through_the_registry():
    from qframe_core.quantization import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    assert MovingAverageMinMaxObserver.__module__.startswith("qframe_observers")
    assert MovingAveragePerChannelMinMaxObserver().ch_axis == 0
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchObserver'"):
        quantization.NoSuchObserver  # noqa: B018


def test_a_fixed_scale_reaches_a_fixed_scale_observer():
    fq = FakeQuantize(observer=FixedScaleObserver, scale=1 / 2 ** 15, dtype="qint16")
    assert fq.scale.item() == fq.activation_post_process.calculate_qparams()[0].item() == 1 / 2 ** 15
    fq(torch.randn(10))  # never moves
    assert fq.scale.item() == 1 / 2 ** 15
