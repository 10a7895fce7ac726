"""A chain fused at its conv's name keeps the conv's graph node name (``conv``, not ``conv_1``), as the
seeds' ``print_tabular`` of the RGB888 example shows; a chain fused into an add's module gets a new node."""

from torch import nn

from qframe_core.quantization import DeQuantStub, QuantStub, fuse_fx


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        return self.dequant(self.conv2(x) + x)


def test_fused_conv_keeps_its_node_name():
    gm = fuse_fx(Net().eval(), march="bayes")
    calls = [(n.name, n.target, [str(a) for a in n.args]) for n in gm.graph.nodes if n.op == "call_module"]
    assert calls == [("quant", "quant", ["x"]), ("conv", "conv", ["quant"]),
                     ("_generated_add_0", "_generated_add_0", ["conv", "conv"]), ("dequant", "dequant",
                                                                                 ["_generated_add_0"])]
    assert type(gm.conv).__name__ == "ConvReLU2d" and isinstance(gm.bn, nn.Identity)
    assert "conv = self.conv(quant)" in gm.code
