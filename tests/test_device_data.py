"""The device path holds uint8 and makes the model's input on the device: the scale matches
NumPy's x / 255 bit for bit, `prepare` is the float64 formula, eval splits are sharded uint8
batches that count every example once, and "auto" budgets uint8 bytes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from ml_collections import ConfigDict

from normlab.data.preprocess import make_preprocessor
from normlab.parallel.mesh import batch_sharded, build_mesh
from normlab.train import inputs
from normlab.train.evaluator import make_evaluator, padded_batches
from normlab.train.run import build_run
from normlab.train.state import TrainState
from normlab.train.stream_input import choose_pipeline


def test_to_unit_is_numpys_division_on_the_device():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    want = (x.astype(np.float64) / 255).astype(np.float32)  # v/255 exactly, rounded once
    got = np.asarray(jax.jit(inputs.to_unit)(x))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(inputs.to_float(x), want)


def test_prepare_pads_and_standardizes_on_the_device(rng):
    images = rng.integers(0, 256, (12, 5, 6, 3), dtype=np.uint8)
    pre = make_preprocessor("standardize", eps=1e-8).fit(inputs.to_float(images, 8))
    got = np.asarray(jax.jit(inputs.make_prepare(pre, pad_to=8))(images))
    # float64 reference from the formula: x/255, zero pad rows (1, 2) and columns (1, 1), then
    # per-channel (x - mean) / sqrt(var + eps) over the padded training images
    x = np.zeros((12, 8, 8, 3))
    x[:, 1:6, 1:7] = images / 255
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-8), rtol=1e-5, atol=1e-6)
    # and the same floats as the host path the saved-model tools take
    np.testing.assert_array_equal(got, inputs.transform(pre, inputs.to_float(images, 8)))
    with pytest.raises(ValueError, match="pad_to=4 is smaller than the images"):
        inputs.make_prepare(pre, pad_to=4)(images)


class Logits(nn.Module):
    """The input is the logits: the evaluator alone is under test."""

    @nn.compact
    def __call__(self, x, train=False):
        return x


def test_sharded_padded_batches_count_every_example_once(rng):
    n, classes, batch = 29, 10, 8
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int32)
    x, y = padded_batches(logits, labels, batch)
    assert x.shape == (4, 8, classes) and (y[-1, 5:] == -1).all() and (y >= 0).sum() == n
    sharding = batch_sharded(build_mesh({"data": 8}), leading_axes=1)
    x, y = jax.device_put(x, sharding), jax.device_put(y, sharding)
    state = TrainState(step=np.int32(0), params={}, batch_stats={}, opt_state=(),
                       rng=jax.random.PRNGKey(0))
    got = make_evaluator(Logits())(state, x, y, batch)
    z = logits.astype(np.float64)
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    assert got["examples"] == n
    assert got["loss"] == pytest.approx(-log_p[np.arange(n), labels].mean(), rel=1e-6)
    assert got["accuracy"] == pytest.approx((z.argmax(-1) == labels).mean(), rel=1e-6)


def test_device_run_holds_uint8_and_shards_its_eval_split(digits_config):
    run = build_run(digits_config("preprocess.name=standardize", "eval_batch_size=20"))
    data = run.data
    images, labels = data.device_arrays()
    assert data.device_arrays()[0] is images  # placed once
    assert images.dtype == jnp.uint8 and images.shape == data.train_images.shape
    assert images.nbytes == data.train_images.size  # one byte per pixel value, not four
    assert labels.dtype == jnp.int32
    example = data.example()
    assert example.dtype == np.float32 and example.shape == (1, *data.input_shape)
    np.testing.assert_array_equal(example, inputs.transform(
        run.preprocessor, inputs.to_float(data.train_images[:1], run.config.pad_to)))
    (x, y), = data.eval_arrays().values()
    assert x.dtype == jnp.uint8 and x.shape[1] == 24  # 20 rounded up to the 8 devices
    assert x.sharding.spec == PartitionSpec(None, "data")
    assert {s.data.shape[1] for s in x.addressable_shards} == {3}  # not replicated
    record = run.evaluate()
    assert record["eval_examples"] == int((np.asarray(y) >= 0).sum())


@pytest.mark.parametrize("budget,want", [(3.0, "device"), (2.99, "stream")])
def test_auto_budgets_the_uint8_split(budget, want):
    config = ConfigDict({"dataset": "x", "pad_to": 40,
                         "data": {"pipeline": "auto", "device_budget_mb": budget}})
    # 1024 images of 32×32×3 bytes: 3 MiB as stored (padding to 40 happens on the device)
    assert choose_pipeline(config, (32, 32, 3), 1024) == want
