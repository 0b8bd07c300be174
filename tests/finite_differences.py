"""Central finite differences in float64: the gradient reference shared by the layer tests."""

import numpy as np


def fd_grads(f, arrays, h=1e-6):
    """Central finite differences, float64, of the scalar f(*arrays) w.r.t. each array."""
    arrays = [np.asarray(a, np.float64) for a in arrays]
    grads = []
    for k, a in enumerate(arrays):
        grad = np.zeros_like(a)
        for index in np.ndindex(a.shape):
            plus, minus = [b.copy() for b in arrays], [b.copy() for b in arrays]
            plus[k][index] += h
            minus[k][index] -= h
            grad[index] = (f(*plus) - f(*minus)) / (2 * h)
        grads.append(grad)
    return grads
