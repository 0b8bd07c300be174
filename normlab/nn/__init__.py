"""Neural-network components: norms, activations, initializers, regularizers, conv as matmul."""
