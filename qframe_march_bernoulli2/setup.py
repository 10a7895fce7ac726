"""Build of qframe_march_bernoulli2._kernels; metadata lives in pyproject.toml.

Flags and include path are shared by every march (qframe_core/kernels/build.py):
install qframe-core first and build with pip install --no-build-isolation.
"""

from setuptools import setup

from qframe_core.kernels.build import march_extension

setup(ext_modules=[march_extension("qframe_march_bernoulli2")])
