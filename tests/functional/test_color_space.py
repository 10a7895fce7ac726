"""RGB888 deployment helpers: BT.601 conversions and the seeds' centered_yuv2rgb insertion."""

import pytest
import torch

from qframe_core.functional import bgr2centered_yuv, centered_yuv2bgr, centered_yuv2rgb, rgb2centered_yuv
from qframe_core.march import march
from qframe_core.quantization import QuantStub, convert_fx, prepare_qat_fx
from qframe_core.quantization.qconfig import default_qat_8bit_fake_quant_qconfig


def test_known_colours_full_and_studio_swing():
    img = torch.tensor([[255.0, 255.0, 255.0], [0.0, 0.0, 0.0], [255.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    full = rgb2centered_yuv(img, "full")[0, :, :, 0].T.tolist()
    assert full[0] == [127.0, 0.0, 0.0] and full[1] == [-128.0, 0.0, 0.0]
    assert full[2] == [round(0.299 * 255 - 128), round(-0.168736 * 255), 127.0]  # red: V saturates at 127
    studio = rgb2centered_yuv(img, "studio")[0, :, :, 0].T.tolist()
    assert studio[0][0] == 107.0 and studio[1][0] == -112.0
    bgr = img.flip(1)
    assert torch.equal(bgr2centered_yuv(bgr, "full"), rgb2centered_yuv(img, "full"))


@pytest.mark.parametrize("swing", ["full", "studio"])
def test_round_trip_float(swing):
    rgb = torch.randint(0, 256, (2, 3, 5, 7)).float()
    yuv = rgb2centered_yuv(rgb, swing)
    back = centered_yuv2rgb(yuv, swing, mean=(0.0,), std=(1.0,), q_scale=1.0)
    assert (back - rgb).abs().max() < 2.5
    back_bgr = centered_yuv2bgr(yuv, swing, mean=(0.0,), std=(1.0,), q_scale=1.0)
    assert torch.equal(back_bgr, back.flip(1))


@pytest.mark.parametrize("m", ["bernoulli2", "bayes"])
def test_integer_path_matches_the_float_formula(m):
    yuv = torch.randint(-128, 128, (1, 3, 4, 4))
    mean, std, q = [123.0, 117.0, 104.0], [58.0, 57.0, 57.5], 1 / 64
    got = centered_yuv2rgb(yuv.to(torch.int8), "full", mean, std, q, march=m)
    ref = torch.round(centered_yuv2rgb(yuv.float(), "full", mean, std, q) / q).clamp(-128, 127)
    assert got.dtype == torch.int8
    assert (got.float() - ref).abs().max() <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="swing must be 'full'"):
        rgb2centered_yuv(torch.zeros(1, 3, 2, 2), "wide")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        rgb2centered_yuv(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="mean takes 1 or 3 values"):
        centered_yuv2rgb(torch.zeros(1, 3, 2, 2), "full", mean=[1.0, 2.0])


def test_seed_example_insert_after_quantstub_in_the_converted_model():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub(scale=1 / 128)
            self.conv = torch.nn.Conv2d(3, 3, 3)
            self.bn = torch.nn.BatchNorm2d(3)
            self.relu = torch.nn.ReLU()

        def forward(self, input):
            return self.relu(self.bn(self.conv(self.quant(input))))

        def set_qconfig(self):
            self.qconfig = default_qat_8bit_fake_quant_qconfig

    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 12, 12)).float()
    normalized = (rgb - 128.0) / 128.0
    net = Net()
    net.set_qconfig()
    with march("bayes"):
        qat_net = prepare_qat_fx(net)
        qat_net(normalized)
        traced = convert_fx(qat_net)
    rgb_out = traced(normalized)
    for n in traced.graph.nodes:
        if n.target == "quant":
            with traced.graph.inserting_after(n):
                new_node = traced.graph.call_function(centered_yuv2rgb, (n,), {"swing": "full", "march": "bayes"})
                n.replace_all_uses_with(new_node)
                new_node.args = (n,)
    traced.quant.scale.fill_(1.0)
    traced.recompile()
    yuv_out = traced(rgb2centered_yuv(rgb, "full"))
    assert yuv_out.dtype == rgb_out.dtype == torch.int8
    diff = (yuv_out.int() - rgb_out.int()).abs()
    assert diff.float().mean() < 1.0 and diff.max() <= 6  # YUV is an 8-bit re-encoding of RGB: small rounding
