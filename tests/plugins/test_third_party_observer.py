"""A third-party observer package, installed for real, used by name — the observer contract from outside.

``qframe_example_observer/`` is its own distribution (pyproject.toml with a
``qframe`` entry point). The test pip-installs it into a throwaway target
directory and runs a fresh interpreter with that directory on PYTHONPATH, so
the entry point is discovered the way a user's ``pip install`` would be.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


def test_installed_third_party_observer_is_used_by_name(tmp_path):
    src = Path(shutil.copytree(HERE / "qframe_example_observer", tmp_path / "src",
                               ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")))
    target = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QFRAME_PLUGINS")}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(src)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr

    code = textwrap.dedent("""
        import torch
        from qframe_core.registry import registry
        from qframe_core.quantization import FakeQuantState, prepare_qat_fx, set_fake_quantize, convert_fx
        from qframe_core.quantization.qconfig import get_default_calib_qconfig
        from qframe_core.quickstart import DigitsNet

        print("distribution:", registry.distribution_of("observer", "mean_abs"))
        torch.manual_seed(0)
        model = prepare_qat_fx(DigitsNet().eval(), {"": get_default_calib_qconfig(activation_observer="mean_abs")},
                               march="bayes")
        model.eval()
        set_fake_quantize(model, FakeQuantState.CALIBRATION)
        x = torch.rand(32, 1, 8, 8) * 2 - 1
        with torch.no_grad():
            model(x)
        fq = model.conv1.activation_post_process
        print("observer:", type(fq.activation_post_process).__module__)
        set_fake_quantize(model, FakeQuantState.VALIDATION)
        with torch.no_grad():
            qat_out = model(x)
            int_out = convert_fx(model)(x)
        print("scale:", fq.quant_params().scale.item())
        print("max diff:", (qat_out - int_out).abs().max().item())
        from qframe_example_observer import MeanAbsObserver
        obs = MeanAbsObserver(factor=2.0)
        obs(torch.tensor([1.0, -3.0, float("nan")]))
        print("mean_abs scale:", obs.calculate_qparams()[0].item())
    """)
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = dict(line.split(": ", 1) for line in run.stdout.strip().splitlines())
    assert lines["distribution"] == "qframe-example-observer"
    assert lines["observer"] == "qframe_example_observer"
    assert float(lines["scale"]) > 0
    assert float(lines["max diff"]) < 1e-2
    assert float(lines["mean_abs scale"]) == pytest.approx(2.0 * 2.0 / 127.5, rel=1e-6)  # factor * mean(1, 3)


def test_without_the_package_the_name_is_not_installed():
    from qframe_core.errors import NotInstalledError
    from qframe_core.quantization.qconfig import get_default_qconfig

    factory = get_default_qconfig(activation_observer="mean_abs").activation
    with pytest.raises(NotInstalledError, match="observer 'mean_abs' is not installed"):
        factory()
