"""Build of the compiled kernel extension qframe_march_bernoulli2._kernels.

Package metadata lives in pyproject.toml; this file only declares ext_modules.
No -march flag: the kernels pick AVX-512/AVX2/scalar paths at run time.
"""

from __future__ import annotations

import glob
import os

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def kernels_include() -> str:
    """qframe_core.kernels.get_include() if importable (and complete), else the sibling checkout."""
    fallback = os.path.normpath(os.path.join(HERE, "..", "qframe_core", "src", "qframe_core", "kernels", "include"))
    try:
        from qframe_core.kernels import get_include
    except ImportError:
        return fallback
    path = get_include()
    if not os.path.isfile(os.path.join(path, "qframe_kernels", "bindings.hpp")):
        return fallback
    return path


INCLUDE = kernels_include()

ext_modules = [
    Pybind11Extension(
        "qframe_march_bernoulli2._kernels",
        [os.path.join("src", "qframe_march_bernoulli2", "_kernels.cpp")],
        include_dirs=[INCLUDE],
        # rebuild when a shared kernel header changes
        depends=sorted(glob.glob(os.path.join(INCLUDE, "qframe_kernels", "*.hpp"))),
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    ),
]

setup(ext_modules=ext_modules)
