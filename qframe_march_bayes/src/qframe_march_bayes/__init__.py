"""qframe march plugin for "bayes" (RDK Ultra): int8/int16, 32-bit half-to-even requantization."""
