"""MLP hidden_bias_init (E5's dying-ReLU arm): every hidden bias starts at the value, the head's at
0, and the forward pass is the float64 NumPy net with those biases; configs/e4_bn_mnist.py's
bias_init argument sets it."""

import jax
import numpy as np
import pytest

from normlab.config import load_config
from normlab.models.mlp import MLP


def test_hidden_biases_start_at_the_value_and_the_forward_pass_uses_them():
    model = MLP(depth=2, width=6, activation="relu", num_classes=3, hidden_bias_init=-0.7)
    x = np.random.default_rng(0).standard_normal((5, 4, 2, 1)).astype(np.float32)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    for name in ("layer_00", "layer_01"):
        np.testing.assert_array_equal(params[name]["dense"]["bias"], np.full(6, -0.7, np.float32))
    np.testing.assert_array_equal(params["head"]["bias"], np.zeros(3, np.float32))

    h = x.reshape(5, -1).astype(np.float64)
    for name in ("layer_00", "layer_01"):
        dense = params[name]["dense"]
        h = np.maximum(h @ np.float64(dense["kernel"]) - 0.7, 0.0)  # b = -0.7 from the math
    want = h @ np.float64(params["head"]["kernel"])
    got = np.asarray(model.apply({"params": params}, x, train=False), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arg, value", [("", 0.0), (":bias_init=-0.5", -0.5)])
def test_e4_config_bias_init_argument(arg, value):
    assert load_config(f"configs/e4_bn_mnist.py{arg}").model.hidden_bias_init == value
