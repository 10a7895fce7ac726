"""advanced.zh.md "RGB888 数据部署": rgb2centered_yuv / centered_yuv2rgb signatures, and the example that
inserts centered_yuv2rgb after the QuantStub of the converted model, printing the graph before and after.

The example runs as written (imports renamed); the printed tables are compared with the seed's, the
function's address aside.
"""

import copy
import inspect
import re

import torch

from qframe_core import set_march
from qframe_core.functional import centered_yuv2rgb, rgb2centered_yuv
from qframe_core.quantization import (
    QuantStub,
    convert_fx,
    prepare_qat_fx,
)
from qframe_core.quantization.qconfig import (
    default_qat_8bit_fake_quant_qconfig,
)

SEED_BEFORE = """
opcode       name     target    args        kwargs
-----------  -------  --------  ----------  --------
placeholder  input_1  input     ()          {}
call_module  quant    quant     (input_1,)  {}
call_module  conv     conv      (quant,)    {}
output       output   output    (conv,)     {}
"""

SEED_AFTER = """
opcode         name              target                                         args                 kwargs
-------------  ----------------  ---------------------------------------------  -------------------  -----------------
placeholder    input_1           input                                          ()                   {}
call_module    quant             quant                                          (input_1,)           {}
call_function  centered_yuv2rgb  <function centered_yuv2rgb at 0x7fa1c2b48040>  (quant,)             {'swing': 'full'}
call_module    conv              conv                                           (centered_yuv2rgb,)  {}
output         output            output                                         (conv,)              {}
"""


def _rows(text):
    """Table rows, columns split on runs of spaces, the function address masked."""
    text = re.sub(r" at 0x[0-9a-f]+>", " at 0x...>", text)
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines() if line.strip()]


def test_signatures_are_the_seeds():
    assert list(inspect.signature(rgb2centered_yuv).parameters) == ["input", "swing"]
    assert inspect.signature(rgb2centered_yuv).parameters["swing"].default == "studio"
    params = inspect.signature(centered_yuv2rgb).parameters
    assert list(params)[:5] == ["input", "swing", "mean", "std", "q_scale"]
    assert params["swing"].default == "studio"
    assert tuple(params["mean"].default) == (128.0,) and tuple(params["std"].default) == (128.0,)
    assert params["q_scale"].default == 1.0 / 128.0


def test_seed_example(capsys):
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.conv = torch.nn.Conv2d(3, 3, 3)
            self.bn = torch.nn.BatchNorm2d(3)
            self.relu = torch.nn.ReLU()

        def forward(self, input):
            x = self.quant(input)
            x = self.conv(x)
            x = self.bn(x)
            x = self.relu(x)
            return x

        def set_qconfig(self):
            self.qconfig = default_qat_8bit_fake_quant_qconfig

    data = torch.rand(1, 3, 28, 28)
    net = Net()

    # 设置 march **RDK X3** 设置为bernoulli2， **RDK Ultra** 设置为bayes。
    set_march("bayes")

    net.set_qconfig()
    qat_net = prepare_qat_fx(net)
    qat_net(data)
    quantized_net = convert_fx(qat_net)
    rgb_model = copy.deepcopy(quantized_net)  # kept to compare with below
    traced = quantized_net
    print("Before centered_yuv2rgb")
    traced.graph.print_tabular()

    # Replace QuantStub nodes with centered_yuv2rgb
    patterns = ["quant"]
    for n in traced.graph.nodes:
        if any(n.target == pattern for pattern in patterns):
            with traced.graph.inserting_after(n):
                new_node = traced.graph.call_function(centered_yuv2rgb, (n,), {"swing": "full"})
                n.replace_all_uses_with(new_node)
                new_node.args = (n,)

    traced.quant.scale.fill_(1.0)
    traced.recompile()
    print("\nAfter centered_yuv2rgb")
    traced.graph.print_tabular()

    out = capsys.readouterr().out
    before, after = out.split("After centered_yuv2rgb")
    assert _rows(before.split("Before centered_yuv2rgb")[1]) == _rows(SEED_BEFORE)
    assert _rows(after) == _rows(SEED_AFTER)

    # the modified model takes the pyramid's centered YUV and computes what the RGB model computed
    rgb = torch.randint(0, 256, (2, 3, 28, 28)).float()
    yuv_out = traced(rgb2centered_yuv(rgb, "full"))
    rgb_out = rgb_model((rgb - 128.0) / 128.0)
    assert yuv_out.dtype == rgb_out.dtype == torch.int8 and yuv_out.shape == (2, 3, 26, 26)
    diff = (yuv_out.int() - rgb_out.int()).abs().float()
    assert diff.mean() < 0.5 and diff.max() <= 4, (diff.mean(), diff.max())  # YUV is an 8-bit re-encoding
