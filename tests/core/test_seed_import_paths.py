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


def test_the_seeds_per_tensor_name_resolves_too():
    from qframe_core.quantization import MovingAverageMinMaxObserver, MovingAveragePerTensorMinMaxObserver

    assert issubclass(MovingAveragePerTensorMinMaxObserver, MovingAverageMinMaxObserver)
    obs = MovingAveragePerTensorMinMaxObserver(averaging_constant=0, ch_axis=0)
    assert not obs.per_channel
    with pytest.raises(ValueError, match="per tensor"):
        MovingAveragePerTensorMinMaxObserver(qscheme=torch.per_channel_symmetric)


def test_subpackages_are_attributes_of_the_package_as_the_seeds_use_them():
    """``import horizon_plugin_pytorch as horizon; horizon.quantization.fuse_fx(...)``, in a fresh interpreter
    (so nothing imported the subpackages first)."""
    import subprocess
    import sys

    code = (
        "import sys, qframe_core as horizon\n"
        "assert 'qframe_core.quantization' not in sys.modules\n"
        "assert horizon.quantization.fuse_fx is not None\n"
        "assert horizon.qconfig.default_calib_8bit_fake_quant_qconfig.kind == 'calibration'\n"
        "assert horizon.qconfig is horizon.quantization.qconfig\n"
        "assert horizon.nn.quantized.FloatFunctional and horizon.functional.rgb2centered_yuv and horizon.jit.save\n"
        "assert horizon.march.March.BAYES == 'bayes'\n"
        "try:\n    horizon.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
