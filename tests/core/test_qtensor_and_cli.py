"""QTensor behaviour and the `qframe` command."""

import subprocess
import sys

import pytest
import torch

from qframe_core import QTensor, qint8, qint16
from qframe_core.cli import main


def test_qtensor_quantize_dequantize_per_tensor_and_channel():
    x = torch.tensor([[0.5, -1.0], [0.26, 2.0]])
    q = QTensor.quantize(x, torch.tensor([0.01]), qint8)
    assert q.int_repr().tolist() == [[50, -100], [26, 127]] and q.int_repr().dtype == torch.int8
    torch.testing.assert_close(q.dequantize(), torch.tensor([[0.5, -1.0], [0.26, 1.27]]))
    qc = QTensor.quantize(x, torch.tensor([0.01, 0.1]), "qint16", ch_axis=1)
    assert qc.int_repr().tolist() == [[50, -10], [26, 20]] and qc.dtype is qint16
    assert "ch_axis=1" in repr(qc)


def test_qtensor_rejects_bad_input():
    with pytest.raises(ValueError, match="positive and finite"):
        QTensor(torch.zeros(2, dtype=torch.int8), torch.tensor([0.0]), qint8)
    with pytest.raises(ValueError, match="exceed qint8"):
        QTensor(torch.tensor([300]), torch.tensor([1.0]), qint8)
    with pytest.raises(TypeError, match="integer tensor"):
        QTensor(torch.zeros(2), torch.tensor([1.0]), qint8)
    with pytest.raises(ValueError, match="need ch_axis"):
        QTensor(torch.zeros(2, 3, dtype=torch.int8), torch.tensor([1.0, 2.0]), qint8, ch_axis=1)


def test_qframe_list_shows_every_kind_with_distributions(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("bernoulli2", "bayes", "min_max", "qframe-observers", "conv2d_batchnorm2d_add_relu",
                   "qframe-march-bayes", "torch.nn.Conv2d", "FloatFunctional.add", "featuremap_similarity",
                   "qframe-profiler", "unsupported"):
        assert needle in out, needle


def test_qframe_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "qframe_core.cli", "list"], capture_output=True, text=True)
    assert out.returncode == 0 and "Marches" in out.stdout


def test_qframe_without_command_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
