"""qframe entry point of the bernoulli2 march."""

from qframe_core.march_plugin import MarchPlugin

plugin = MarchPlugin(spec="qframe_march_bernoulli2.spec:SPEC", table="qframe_march_bernoulli2.op_table")
