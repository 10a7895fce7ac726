"""Discovery from real installs: a throwaway virtual environment gets only qframe-core, then a march.

The venv reuses this interpreter's third-party packages (torch, numpy, …)
through a filtered view of its site-packages that hides every qframe
distribution, so what the venv sees is exactly what was installed into it.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _is_qframe(name: str) -> bool:
    low = name.lower().replace("-", "_")
    return low.startswith(("qframe", "__editable__.qframe", "__editable___qframe")) or low.endswith(".pth")


def _filtered_site(dest: Path) -> Path:
    dest.mkdir()
    dirs = [sysconfig.get_paths()["purelib"], *site.getsitepackages(), site.getusersitepackages()]
    seen = set()
    for d in dirs:
        p = Path(d)
        if not p.is_dir() or p in seen:
            continue
        seen.add(p)
        for entry in p.iterdir():
            target = dest / entry.name
            if _is_qframe(entry.name) or target.exists() or entry.name == "__pycache__":
                continue
            target.symlink_to(entry)
    return dest


def _copy_package(name: str, dest: Path) -> Path:
    ignore = shutil.ignore_patterns("build", "*.egg-info", "*.so", "__pycache__")
    return Path(shutil.copytree(REPO / name, dest / name, ignore=ignore))


def _run(py: Path, code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QFRAME_PLUGINS")}
    out = subprocess.run([str(py), "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _pip(py: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr


def test_core_alone_then_a_march(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    shared = _filtered_site(tmp_path / "shared-site")
    (purelib / "shared_site.pth").write_text(str(shared) + "\n")

    src = tmp_path / "src"
    src.mkdir()
    _pip(py, str(_copy_package("qframe_core", src)))
    out = _run(py, """
        from qframe_core.registry import registry
        from qframe_core.march import set_march
        from qframe_core.errors import NotInstalledError
        assert registry.march_names() == [], registry.march_names()
        try:
            set_march("bayes")
        except NotInstalledError as e:
            print(e)
        else:
            raise SystemExit("set_march should have failed")
    """)
    assert "march 'bayes' is not installed (installed marches: none)" in out
    assert "pip install qframe-march-bayes" in out

    _pip(py, str(_copy_package("qframe_march_bayes", src)))
    out = _run(py, """
        from qframe_core.registry import registry
        from qframe_core.march import set_march, resolve_march
        set_march("bayes")
        print(registry.march_names(), registry.distribution_of("march", "bayes"))
        k = resolve_march().load_kernels()
        print(k.MARCH)
    """)
    assert "['bayes'] qframe-march-bayes" in out
    assert out.strip().endswith("bayes")
    listing = subprocess.run([str(venv / "bin" / "qframe"), "list"], capture_output=True, text=True)
    assert listing.returncode == 0 and "qframe-march-bayes" in listing.stdout
    assert "(none installed)" in listing.stdout  # no observers in this venv
