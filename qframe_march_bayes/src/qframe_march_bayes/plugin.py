"""qframe entry point of the bayes march."""

from qframe_core.march_plugin import MarchPlugin

plugin = MarchPlugin(spec="qframe_march_bayes.spec:SPEC", table="qframe_march_bayes.op_table")
