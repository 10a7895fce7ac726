"""Bad input for every observer: NaN/Inf, empty and all-zero tensors, wrong arguments, no data, update_interval."""

import warnings

import pytest
import torch

from qframe_core.errors import QuantizationStateError
from qframe_core.quantization import FakeQuantize, load_observer_params
from qframe_observers import (
    FixedScaleObserver,
    KLObserver,
    MinMaxObserver,
    MixObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)

MEASURING = [MinMaxObserver, PercentileObserver, MSEObserver, KLObserver, MixObserver]


@pytest.mark.parametrize("cls", MEASURING)
def test_nan_and_inf_are_ignored_with_a_warning_naming_the_module(cls):
    obs = cls()
    obs.qframe_name = "backbone.conv1.activation_post_process"
    x = torch.tensor([0.5, float("nan"), float("inf"), -0.25, float("-inf"), 0.1])
    with pytest.warns(RuntimeWarning, match="backbone.conv1.activation_post_process: 3 NaN/Inf"):
        obs(x)
    scale = obs.calculate_qparams()[0]
    assert torch.isfinite(scale).all() and 0 < scale.item() <= 0.5 / 127.5 + 1e-7
    if hasattr(obs, "hist"):
        assert obs.hist.sum().item() == 3  # only the finite values were counted


@pytest.mark.parametrize("cls", MEASURING)
def test_nan_per_channel_leaves_other_channels_alone(cls):
    obs = cls(qscheme=torch.per_channel_symmetric, ch_axis=0)
    w = torch.tensor([[1.0, -2.0, 0.5], [float("nan"), 0.25, -0.125]])
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        obs(w)
    scale = obs.calculate_qparams()[0]
    assert torch.isfinite(scale).all() and scale[0].item() <= 2.0 / 127.5 + 1e-7 and scale[1].item() <= 0.25 / 127.5 + 1e-7


@pytest.mark.parametrize("cls", MEASURING)
def test_all_zero_gives_a_valid_scale(cls):
    obs = cls(averaging_constant=1.0)  # min_max: follow the latest batch
    obs(torch.zeros(1000))
    scale = obs.calculate_qparams()[0]
    assert torch.isfinite(scale).all() and scale.item() > 0
    obs(torch.full((10,), 3.0))  # and data after zeros grows the range from nothing
    assert obs.calculate_qparams()[0].item() == pytest.approx(3.0 / 127.5, rel=0.02)


@pytest.mark.parametrize("cls", MEASURING)
def test_empty_tensors_record_nothing(cls):
    obs = cls()
    obs(torch.zeros(0, 3))
    with pytest.raises(QuantizationStateError, match="no data has been observed"):
        obs.calculate_qparams()
    obs(torch.ones(4))
    obs(torch.zeros(0))
    assert obs.calculate_qparams()[0].item() == pytest.approx(1 / 127.5, rel=0.01)


@pytest.mark.parametrize("cls", MEASURING)
def test_calculate_qparams_before_data_names_the_module_and_the_way_out(cls):
    obs = cls()
    obs.qframe_name = "head.fc"
    with pytest.raises(QuantizationStateError, match=r"head\.fc: no data .* Run calibration"):
        obs.calculate_qparams()
    assert not obs.has_data()


@pytest.mark.parametrize("cls", MEASURING)
def test_wrong_ch_axis_and_dtype_are_clear_errors(cls):
    with pytest.raises(ValueError, match="ch_axis >= 0"):
        cls(qscheme=torch.per_channel_symmetric, ch_axis=-1)
    with pytest.raises(ValueError, match="unknown quantized dtype"):
        cls(dtype="qint4")
    with pytest.raises(ValueError, match="symmetric"):
        cls(qscheme=torch.per_tensor_affine)
    obs = cls(qscheme=torch.per_channel_symmetric, ch_axis=3)
    obs.qframe_name = "layer3"
    with pytest.raises(ValueError, match="layer3: ch_axis=3 is out of range"):
        obs(torch.randn(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        cls()(torch.ones(3, dtype=torch.int32))


@pytest.mark.parametrize("cls", [PercentileObserver, MSEObserver, KLObserver, MixObserver])
def test_channel_count_may_not_change(cls):
    obs = cls(qscheme=torch.per_channel_symmetric, ch_axis=1)
    obs.qframe_name = "conv2.weight_fake_quant"
    obs(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match=r"conv2.weight_fake_quant: got 5 channels .* earlier batches had 4"):
        obs(torch.randn(2, 5, 3))


def test_observer_specific_arguments_are_checked():
    with pytest.raises(ValueError, match=r"percentile must lie in \(0, 100\]"):
        PercentileObserver(percentile=100.5)
    with pytest.raises(ValueError, match="bins must be an integer >= 2"):
        PercentileObserver(bins=1)
    with pytest.raises(ValueError, match=r"stride must be an integer in \[1, 50\]"):
        MSEObserver(stride=0)
    with pytest.raises(ValueError, match="update_interval must be an integer >= 1"):
        KLObserver(update_interval=0)
    with pytest.raises(ValueError, match="per tensor"):
        MovingAverageMinMaxObserver(qscheme=torch.per_channel_symmetric, ch_axis=0)
    with pytest.raises(ValueError, match="per channel"):
        MovingAveragePerChannelMinMaxObserver(qscheme=torch.per_tensor_symmetric)
    with pytest.raises(ValueError, match="positive finite"):
        FixedScaleObserver(scale=0.0)
    with pytest.raises(ValueError, match="zero_point must be 0"):
        FixedScaleObserver(scale=0.1, zero_point=3)


def test_update_interval_larger_than_the_steps_seen_is_reported_not_garbage():
    obs = KLObserver(update_interval=10)
    obs.qframe_name = "neck.add"
    for s in (1.0, 2.0, 4.0):
        obs(torch.randn(5000) * s)
    scale = obs.calculate_qparams()[0]  # parameters exist: the first step's search
    assert torch.isfinite(scale).all() and scale.item() > 0
    assert obs.unused_steps == 2
    with pytest.warns(RuntimeWarning, match=r"neck.add: KLObserver update_interval=10 is larger than the 3 step"):
        obs.state_dict()
    obs.update_threshold()  # the way out named by the message
    assert obs.unused_steps == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs.state_dict()


def test_update_interval_warning_reaches_load_observer_params():
    src, dst = torch.nn.Sequential(FakeQuantize(KLObserver, update_interval=50)), \
        torch.nn.Sequential(FakeQuantize(KLObserver, update_interval=50))
    src[0].set_name("stem")
    src(torch.randn(100))
    src(torch.randn(100))
    with pytest.warns(RuntimeWarning, match="stem: KLObserver update_interval=50"):
        load_observer_params(src, dst)
    torch.testing.assert_close(dst[0].quant_params().scale, src[0].quant_params().scale)


def test_kl_with_more_levels_than_bins_keeps_the_full_range_and_says_so():
    obs = KLObserver(dtype="qint16")
    obs.qframe_name = "sub"
    x = torch.randn(10_000)
    with pytest.warns(RuntimeWarning, match="sub: KLObserver with bins=512 cannot resolve 32768"):
        obs(x)
    assert obs.calculate_qparams()[0].item() == pytest.approx(x.abs().max().item() / 32767.5, rel=1e-6)
