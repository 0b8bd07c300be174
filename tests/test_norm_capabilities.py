"""Every registered norm's class attributes (`normlab.nn.capabilities.Norm`) against its behaviour.

Each attribute is checked by what it promises, on tiny inputs, so that a wrong attribute on a new
norm fails here: batch_dependent ⇔ an example's train-mode output moves when another example
moves; has_running_stats ⇔ a `batch_stats` collection that train mode updates; self_activated ⇔
the output (with the default params) is not an affine function of x within one example and
channel; proxy ⇔ the norm takes an activation and applies it; takes_groups ⇔ it takes
`num_groups` and the group count changes its output; linear_kwargs make it affine; learnable
scale ⇔ `scale_init` sets a per-channel "scale" param. And the registry finds every norm and
model by importing the packages, in a fresh process.
"""

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from normlab.nn.capabilities import Norm
from normlab.nn.norm_act import NormAct
from normlab.registry import NORMS

REPO = Path(__file__).resolve().parents[1]
SHAPE = (4, 3, 3, 4)  # N, H, W, C: spatial axes for IN / EvoNorm-B0, 2 groups of 2 channels
NAMES = NORMS.names()


def _x(seed=0):
    return np.random.default_rng(seed).normal(0.3, 1.5, SHAPE).astype(np.float32)


def _kwargs(name, **extra):
    return {**({"num_groups": 2} if NORMS.get(name).takes_groups else {}), **extra}


def _train(module, x, variables=None):
    variables = variables or module.init(jax.random.key(0), x, train=False)
    y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return np.asarray(y, np.float64), variables, updates


def _affine_residual(x, y):
    """Largest relative residual of a least-squares fit y = p·x + q per (example, channel)."""
    worst = 0.0
    for n in range(x.shape[0]):
        for c in range(x.shape[-1]):
            xs, ys = x[n, ..., c].ravel().astype(np.float64), y[n, ..., c].ravel()
            design = np.stack([xs, np.ones_like(xs)], axis=1)
            coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
            residual = np.abs(design @ coef - ys).max() / (np.abs(ys).max() + 1e-12)
            worst = max(worst, residual)
    return worst


def test_every_registered_norm_is_a_norm_class():
    for name in NAMES:
        cls = NORMS.get(name)
        assert isinstance(cls, type) and issubclass(cls, Norm), name


@pytest.mark.parametrize("name", NAMES)
def test_batch_dependent(name):
    module = NORMS.build(name, **_kwargs(name))
    x = _x()
    y, variables, _ = _train(module, x)
    moved = x.copy()
    moved[1:] = _x(seed=1)[1:] * 3.0 + 2.0  # every other example changes
    y_moved, _, _ = _train(module, moved, variables)
    changed = np.abs(y_moved[0] - y[0]).max() > 1e-4
    assert changed == NORMS.get(name).batch_dependent


@pytest.mark.parametrize("name", NAMES)
def test_has_running_stats(name):
    module = NORMS.build(name, **_kwargs(name))
    _, variables, updates = _train(module, _x())
    has = "batch_stats" in variables
    assert has == NORMS.get(name).has_running_stats
    if has:  # train mode updates them, and eval mode reads them
        old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates)
        assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
                   for a, b in zip(old, new, strict=True))
        y_eval = module.apply(variables, _x(), train=False)
        y_eval_new = module.apply({**variables, **updates}, _x(), train=False)
        assert np.abs(np.asarray(y_eval) - np.asarray(y_eval_new)).max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_self_activated_and_proxy(name):
    cls = NORMS.get(name)
    x = _x()
    # NormAct with the identity activation: what the norm itself does to x
    unit = NormAct(norm=name, activation="identity", norm_kwargs=_kwargs(name))
    y, _, _ = _train(unit, x)
    assert (_affine_residual(x, y) > 1e-3) == cls.self_activated
    if cls.proxy:  # it applies the activation it is given, inside
        y_relu, _, _ = _train(NormAct(norm=name, activation="relu", norm_kwargs=_kwargs(name)), x)
        assert _affine_residual(x, y_relu) > 1e-3
    else:  # it takes no activation
        with pytest.raises(ValueError, match="activation"):
            NORMS.build(name, **_kwargs(name), activation="relu")


@pytest.mark.parametrize("name", NAMES)
def test_takes_groups(name):
    cls = NORMS.get(name)
    if not cls.takes_groups:
        with pytest.raises(ValueError, match="num_groups"):
            NORMS.build(name, num_groups=2)
        return
    x = _x()
    one, _, _ = _train(NORMS.build(name, num_groups=1), x)
    four, _, _ = _train(NORMS.build(name, num_groups=4), x)
    assert np.abs(one - four).max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_linear_kwargs(name):
    cls = NORMS.get(name)
    x = _x()
    kwargs = _kwargs(name, **(cls.linear_kwargs or {}))
    y, _, _ = _train(NormAct(norm=name, activation="identity", norm_kwargs=kwargs), x)
    # None: the norm has no linear form (and is nonlinear as it is)
    assert (_affine_residual(x, y) < 1e-4) == (cls.linear_kwargs is not None)


@pytest.mark.parametrize("name", NAMES)
def test_learnable_scale(name):
    cls = NORMS.get(name)
    x = _x()

    def scales(module):
        params = module.init(jax.random.key(0), x).get("params", {})
        return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                if path[-1].key == "scale"]

    if not cls.has_learnable_scale({}):
        assert scales(NORMS.build(name, **_kwargs(name))) == []
        return
    zeroed = scales(NORMS.build(name, **_kwargs(name), scale_init=nn.initializers.zeros))
    assert len(zeroed) == 1 and zeroed[0].shape == (SHAPE[-1],)
    np.testing.assert_array_equal(np.asarray(zeroed[0]), 0.0)
    if "use_scale" in cls.__dataclass_fields__:
        assert not cls.has_learnable_scale({"use_scale": False})
        assert scales(NORMS.build(name, **_kwargs(name), use_scale=False)) == []


def test_registry_discovers_every_component_in_a_fresh_process():
    # A fresh process imports only normlab.registry: every name must come from the discovery
    # of the packages' modules, not from modules some earlier test happened to import.
    code = (
        "from normlab.registry import ALL\n"
        "for kind, registry in ALL.items():\n"
        "    print(kind, ' '.join(registry.names()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout
    found = {line.split(" ")[0]: line.split(" ")[1:] for line in out.splitlines()}
    assert found["norm"] == [
        "batch", "batch_renorm", "evonorm_b0", "evonorm_s0", "frn", "group", "group+proxy",
        "instance", "layer", "layer+proxy", "none", "rms",
    ]
    assert found["model"] == [
        "cnn", "mlp", "resnet", "resnet110", "resnet18", "resnet20", "resnet32", "resnet34",
        "resnet50", "resnet56", "resnet8", "speednet", "vgg", "vgg11", "vgg13", "vgg16", "vgg19",
    ]
    for kind in ("activation", "initializer", "regularizer", "pooling", "conv",
                 "conv_algorithm", "residual_init"):
        assert found[kind], kind
    # and in this process, every Norm class of the package is registered
    registered = {NORMS.get(name) for name in NAMES}
    for module in sys.modules.copy().values():
        if getattr(module, "__name__", "").startswith("normlab.nn."):
            for obj in vars(module).values():
                if (isinstance(obj, type) and issubclass(obj, Norm) and obj.__module__ ==
                        module.__name__ and not obj.__name__.startswith("_")
                        and obj.__name__ not in ("Norm", "NormFields")):
                    assert obj in registered, obj.__name__
