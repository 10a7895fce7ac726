"""qframe march plugin for "bernoulli2" (RDK X3): int8, 4-D tensors, 16-bit half-up requantization."""
