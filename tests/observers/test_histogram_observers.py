"""percentile, mse, kl and mix: the histogram, each search against an independent reference, per channel."""

import numpy as np
import pytest
import torch

from qframe_core.quantization.histogram import histogram_quantization_error
from qframe_observers import KLObserver, MinMaxObserver, MixObserver, MSEObserver, PercentileObserver

from .reference import fake_quant_mse, trt_entropy_threshold

HIST_OBSERVERS = [PercentileObserver, MSEObserver, KLObserver, MixObserver]


def _np_hist(x: torch.Tensor, bins: int, hist_max: float) -> np.ndarray:
    a = np.abs(x.double().numpy().ravel())
    return np.histogram(a, bins=bins, range=(0.0, hist_max))[0].astype(np.float64)


# -- the online histogram -----------------------------------------------------------------
def test_range_growth_keeps_every_count_and_matches_one_histogram_of_all_data():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(5000, generator=g) * s for s in (0.01, 1.0, 0.5, 37.0, 3.0, 400.0)]
    obs = PercentileObserver(bins=256)
    for b in batches:
        obs(b)
    assert obs.hist.shape == (1, 256)  # memory bounded: never more than `bins` counts
    assert obs.hist.sum().item() == 6 * 5000  # nothing lost over four range doublings
    everything = torch.cat(batches)
    assert obs.amax.item() == pytest.approx(everything.abs().max().item())
    assert everything.abs().max().item() <= obs.hist_max.item() < 2 * everything.abs().max().item()
    ref = _np_hist(everything, 256, obs.hist_max.item())
    # the exact bin merge equals histogramming all data in the final range (edge rounding aside)
    assert np.abs(obs.hist[0].numpy() - ref).sum() <= 4


def test_histogram_of_one_batch_equals_numpy():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(2))
    obs = KLObserver(bins=512)
    obs(x)
    np.testing.assert_array_equal(obs.hist[0].numpy(), _np_hist(x, 512, obs.hist_max.item()))


def test_closed_form_error_matches_fake_quantizing_the_data():
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(3)) * 2
    obs = MSEObserver()
    obs(x)
    amax = obs.amax.item()
    thresholds = torch.tensor([[0.05, 0.2, 0.5, 0.8, 1.0]], dtype=torch.float64) * amax
    err = histogram_quantization_error(obs.hist, obs.hist_max, thresholds, -128, 127)[0] / x.numel()
    for t, e in zip(thresholds[0].tolist(), err.tolist()):
        ref = fake_quant_mse(x.numpy(), t / 127.5)
        # the histogram only loses the sign (qmin = -128 clips one step later on the negative side)
        assert e == pytest.approx(ref, rel=0.02), t


# -- each search against its reference ----------------------------------------------------
def test_percentile_matches_numpy_within_one_bin():
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    for q in (99.0, 99.9, 99.99):
        obs = PercentileObserver(percentile=q)
        obs(x)
        width = obs.hist_max.item() / obs.bins
        ref = np.percentile(np.abs(x.numpy()), q)
        assert obs.calculate_qparams()[0].item() * 127.5 == pytest.approx(ref, abs=width)


def test_percentile_100_is_min_max():
    x = torch.randn(10_000)
    p, m = PercentileObserver(percentile=100), MinMaxObserver()
    p(x)
    m(x)
    assert p.calculate_qparams()[0].item() == pytest.approx(m.calculate_qparams()[0].item(), rel=1e-6)


@pytest.mark.parametrize("dist", ["gaussian", "laplace_outliers", "relu"])
def test_mse_is_as_good_as_a_brute_force_search_on_the_data(dist):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(100_000, generator=g)
    if dist == "laplace_outliers":
        x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
        x[:30] = 50.0
    elif dist == "relu":
        x = torch.relu(x)
    obs = MSEObserver()
    obs(x)
    amax = x.abs().max().item()
    ref = min(fake_quant_mse(x.numpy(), amax * k / 100 / 127.5) for k in np.arange(0.2, 100.01, 0.2))
    got = fake_quant_mse(x.numpy(), obs.calculate_qparams()[0].item())
    assert got <= ref * 1.02


def test_mse_stride_trades_candidates_not_much_accuracy():
    x = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    errs = {}
    for stride in (1, 5, 20):
        obs = MSEObserver(stride=stride)
        obs(x)
        errs[stride] = fake_quant_mse(x.numpy(), obs.calculate_qparams()[0].item())
    assert errs[5] <= errs[1] * 1.05 and errs[20] <= errs[1] * 1.2


@pytest.mark.parametrize("case", ["gaussian", "laplace_outliers", "growing_range", "post_relu"])
def test_kl_picks_the_reference_tensorrt_threshold(case):
    g = torch.Generator().manual_seed(5)
    if case == "gaussian":
        batches = [torch.randn(60_000, generator=g)]
    elif case == "laplace_outliers":
        x = torch.distributions.Laplace(0.0, 1.0).sample((60_000,))
        x[:10] = 40.0
        batches = [x]
    elif case == "growing_range":
        batches = [torch.randn(20_000, generator=g) * s for s in (1.0, 1.5, 3.0)]
    else:
        batches = [torch.relu(torch.randn(60_000, generator=g))]
    obs = KLObserver()
    for b in batches:
        obs(b)
    x = torch.cat(batches)
    width = obs.hist_max.item() / obs.bins
    nonzero = x[x != 0]  # exact zeros are exact at any scale: left out of the divergence
    ref = trt_entropy_threshold(_np_hist(nonzero, obs.bins, obs.hist_max.item()), width)
    ref = min(ref, x.abs().max().item())
    got = obs.divergence_threshold.item()  # TensorRT's answer, before the L2 guard
    assert got == pytest.approx(ref, abs=width * 1.001)
    guarded = obs.calculate_qparams()[0].item() * 127.5
    assert guarded == pytest.approx(got) or guarded == pytest.approx(x.abs().max().item())
    err = fake_quant_mse(x.numpy(), guarded / 127.5)
    assert err <= fake_quant_mse(x.numpy(), x.abs().max().item() / 127.5) * 1.01  # never worse than min_max


def test_mix_keeps_the_best_percentile_candidate():
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    x[:20] = 80.0
    obs = MixObserver()
    obs(x)
    a = np.abs(x.numpy())
    errs = [fake_quant_mse(x.numpy(), min(np.percentile(a, q), a.max()) / 127.5) for q in MixObserver.PERCENTILES]
    got = fake_quant_mse(x.numpy(), obs.calculate_qparams()[0].item())
    assert got <= min(errs) * 1.02
    assert got <= fake_quant_mse(x.numpy(), a.max() / 127.5) * 1.001  # 100 is a candidate: never worse


@pytest.mark.parametrize("cls", HIST_OBSERVERS)
def test_per_channel_equals_per_tensor_on_each_channel(cls):
    g = torch.Generator().manual_seed(6)
    w = torch.randn(4, 3, 16, 16, generator=g) * torch.tensor([0.1, 1.0, 5.0, 30.0]).reshape(4, 1, 1, 1)
    pc = cls(qscheme=torch.per_channel_symmetric, ch_axis=0)
    pc(w)
    scale, zp = pc.calculate_qparams()
    assert scale.shape == (4,) and zp.tolist() == [0] * 4
    for c in range(4):
        pt = cls()
        pt(w[c])
        assert scale[c].item() == pytest.approx(pt.calculate_qparams()[0].item(), rel=1e-5)


@pytest.mark.parametrize("cls", HIST_OBSERVERS)
def test_state_dict_round_trip_per_channel(cls):
    a = cls(qscheme=torch.per_channel_symmetric, ch_axis=1)
    a(torch.randn(2, 5, 7))
    a(torch.randn(2, 5, 7) * 3)
    b = cls(qscheme=torch.per_channel_symmetric, ch_axis=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.calculate_qparams()[0], b.calculate_qparams()[0])
    b(torch.randn(2, 5, 7))  # and it keeps accumulating
    assert b.hist.sum().item() == 3 * 14 * 5


def test_kl_update_interval_recomputes_every_n_steps():
    obs = KLObserver(update_interval=3)
    obs(torch.randn(1000))
    first = obs.threshold.clone()
    assert obs.threshold_step.item() == 1  # the first step always has parameters
    obs(torch.randn(1000) * 4)
    torch.testing.assert_close(obs.threshold, first)  # step 2: not yet
    assert obs.unused_steps == 1
    obs(torch.randn(1000) * 4)
    assert obs.threshold_step.item() == 3 and obs.unused_steps == 0
    assert obs.threshold.item() > first.item()


def test_histogram_observers_accept_float64_and_float16():
    for cls in HIST_OBSERVERS:
        for dt in (torch.float64, torch.float16):
            obs = cls()
            obs(torch.linspace(-2, 2, 1001, dtype=dt))
            s = obs.calculate_qparams()[0]
            assert s.dtype == torch.float32 and 0 < s.item() <= 2 / 127.5 + 1e-6
