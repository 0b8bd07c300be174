"""normlab: normalization, activations, initialization and regularization of deep nets in JAX."""

from normlab.xla_cpu import prefer_eigen_convolutions

prefer_eigen_convolutions()  # before JAX's first computation creates the CPU backend
