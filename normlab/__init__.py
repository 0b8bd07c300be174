"""normlab: normalization, activations, initialization and regularization of deep nets in JAX."""
