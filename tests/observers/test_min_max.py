"""MinMaxObserver: statistics, averaging, per-channel, bad input, state loading."""

import pytest
import torch

from qframe_core.errors import QuantizationStateError
from qframe_observers import MinMaxObserver


def test_per_tensor_scale_matches_the_seeds_figure():
    obs = MinMaxObserver()
    obs(torch.tensor([-0.5, 0.9996]))
    scale, zp = obs.calculate_qparams()
    assert scale.shape == (1,) and zp.tolist() == [0]
    assert scale.item() == pytest.approx(0.9996 / 127.5)  # 0.0078400 as the seeds print


def test_averaging_constant_moves_the_statistic():
    obs = MinMaxObserver(averaging_constant=0.5)
    obs(torch.tensor([-1.0, 1.0]))
    obs(torch.tensor([-3.0, 3.0]))
    assert obs.min_val.item() == -2.0 and obs.max_val.item() == 2.0
    frozen = MinMaxObserver(averaging_constant=0.0)
    frozen(torch.tensor([1.0]))
    frozen(torch.tensor([100.0]))
    assert frozen.max_val.item() == 1.0


def test_per_channel_against_reference():
    w = torch.randn(6, 3, 3, 3)
    obs = MinMaxObserver(averaging_constant=1.0, ch_axis=0, qscheme=torch.per_channel_symmetric)
    obs(w)
    scale, _ = obs.calculate_qparams()
    ref = w.reshape(6, -1).abs().amax(1) / 127.5
    torch.testing.assert_close(scale, ref)


def test_nan_and_inf_are_ignored_with_a_named_warning():
    obs = MinMaxObserver()
    obs.qframe_name = "backbone.conv1.activation_post_process"
    with pytest.warns(RuntimeWarning, match="backbone.conv1.activation_post_process: 2 NaN/Inf"):
        obs(torch.tensor([0.5, float("nan"), float("inf"), -0.25]))
    scale, _ = obs.calculate_qparams()
    assert torch.isfinite(scale).all() and scale.item() == pytest.approx(0.5 / 127.5)


def test_all_zero_and_empty_give_a_valid_scale():
    obs = MinMaxObserver()
    obs(torch.zeros(10))
    scale, _ = obs.calculate_qparams()
    assert scale.item() > 0 and torch.isfinite(scale).all()
    empty = MinMaxObserver()
    empty(torch.zeros(0))
    with pytest.raises(QuantizationStateError, match="no data"):
        empty.calculate_qparams()


def test_all_nan_batch_does_not_poison_previous_statistic():
    obs = MinMaxObserver(averaging_constant=0.5)
    obs(torch.tensor([1.0]))
    with pytest.warns(RuntimeWarning):
        obs(torch.tensor([float("nan")]))
    assert obs.max_val.item() == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="ch_axis >= 0"):
        MinMaxObserver(qscheme=torch.per_channel_symmetric, ch_axis=-1)
    with pytest.raises(ValueError, match="symmetric"):
        MinMaxObserver(qscheme=torch.per_tensor_affine)
    with pytest.raises(ValueError, match="unknown quantized dtype"):
        MinMaxObserver(dtype="qint4")
    obs = MinMaxObserver(qscheme=torch.per_channel_symmetric, ch_axis=3)
    with pytest.raises(ValueError, match="ch_axis=3 is out of range"):
        obs(torch.randn(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        MinMaxObserver()(torch.ones(3, dtype=torch.int32))


def test_qint16_range():
    obs = MinMaxObserver(dtype="qint16")
    obs(torch.tensor([-2.0, 1.0]))
    assert obs.calculate_qparams()[0].item() == pytest.approx(2.0 / 32767.5)


def test_per_channel_state_loads_into_a_fresh_observer():
    a = MinMaxObserver(ch_axis=0, qscheme=torch.per_channel_symmetric)
    a(torch.randn(4, 5))
    b = MinMaxObserver(ch_axis=0, qscheme=torch.per_channel_symmetric)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.calculate_qparams()[0], b.calculate_qparams()[0])
