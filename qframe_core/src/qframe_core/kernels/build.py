"""Build helper for march kernel extensions: one definition of the flags and include path.

A march's ``setup.py`` is then two lines (see qframe-march-bayes)::

    from qframe_core.kernels.build import march_extension
    setup(ext_modules=[march_extension("qframe_march_bayes")])

No ``-march`` flag: the kernels choose AVX-512/AVX2/scalar paths at run time.
"""

from __future__ import annotations

import glob
import os


def get_include() -> str:
    """The folder holding ``qframe_kernels/*.hpp``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def march_extension(package: str, source_root: str = "src"):
    """The pybind11 Extension ``<package>._kernels`` built from ``<source_root>/<package>/_kernels.cpp``."""
    from pybind11.setup_helpers import Pybind11Extension

    include = get_include()
    return Pybind11Extension(
        f"{package}._kernels",
        [os.path.join(source_root, package, "_kernels.cpp")],
        include_dirs=[include],
        # rebuild when a shared kernel header changes
        depends=sorted(glob.glob(os.path.join(include, "qframe_kernels", "*.hpp"))),
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
