"""`normlab bench --conv`: every conv path computes the conv of a float64 NumPy reference (and
its gradients), the model-wide switch runs a ResNet on the path and leaves flax as it was, and
the quick run's rows and errors. torch is not needed (the PyTorch rows are left out)."""

import contextlib
import io
import json
import sys

import flax.linen.linear
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.bench import command, conv_paths
from normlab.registry import MODELS

# (H = W, C_in, C_out, k, stride): stride 1 and 2, 3×3 and 1×1, an odd size
SHAPES = [(6, 3, 4, 3, 1), (7, 2, 5, 3, 2), (6, 3, 4, 1, 2), (5, 2, 3, 1, 1)]


def _reference(x, k, stride):
    """float64 y[n,i,j,o] = Σ_{a,b,c} x_p[n, i·s+a, j·s+b, c]·K[a,b,c,o] (padding ⌊k/2⌋) and the
    gradients of L = ½Σy²: dK[a,b,c,o] = Σ x_p[n, i·s+a, j·s+b, c]·y[n,i,j,o] and
    dx_p[n, i·s+a, j·s+b, c] += Σ_o y[n,i,j,o]·K[a,b,c,o], dx = dx_p without the padding."""
    x, k = x.astype(np.float64), k.astype(np.float64)
    ks, p = k.shape[0], k.shape[0] // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho = (xp.shape[1] - ks) // stride + 1
    y = np.zeros((x.shape[0], ho, ho, k.shape[3]))
    for a in range(ks):
        for b in range(ks):
            tap = xp[:, a:a + (ho - 1) * stride + 1:stride, b:b + (ho - 1) * stride + 1:stride]
            y += np.einsum("nijc,co->nijo", tap, k[a, b])
    dk, dxp = np.zeros_like(k), np.zeros_like(xp)
    for a in range(ks):
        for b in range(ks):
            window = (slice(None), slice(a, a + (ho - 1) * stride + 1, stride),
                      slice(b, b + (ho - 1) * stride + 1, stride))
            dk[a, b] = np.einsum("nijc,nijo->co", xp[window], y)
            dxp[window] += np.einsum("nijo,co->nijc", y, k[a, b])
    h = x.shape[1]
    return y, dxp[:, p:p + h, p:p + h], dk


@pytest.mark.parametrize("path", list(conv_paths.PATHS))
def test_every_path_is_the_reference_conv_and_its_gradients(path):
    rng = np.random.default_rng(0)
    fn = conv_paths.PATHS[path]
    for hw, c_in, c_out, ks, s in SHAPES:
        x = rng.standard_normal((2, hw, hw, c_in)).astype(np.float32)
        k = rng.standard_normal((ks, ks, c_in, c_out)).astype(np.float32)
        pads = ((ks // 2,) * 2,) * 2
        y_ref, dx_ref, dk_ref = _reference(x, k, s)

        def loss(x, k, fn=fn, s=s, pads=pads):
            y = fn(x, k, (s, s), pads)
            return 0.5 * jnp.sum(y * y), y

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, y), (dx, dk) = grad(x, k)
        for got, want in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def _tiny_resnet_grads(path):
    """(parameter gradients, StableHLO text) of a tiny ResNet's loss traced on `path`."""
    model = MODELS.build("resnet", stage_sizes=(1, 1), base_width=4, cifar_stem=True,
                         num_classes=3, preact=True)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)

    def loss(params):
        y, _ = model.apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(y**2)

    with conv_paths.conv_path(path):
        lowered = jax.jit(jax.grad(loss)).lower(variables["params"])
    return lowered.compile()(variables["params"]), lowered.as_text()


def test_conv_path_switches_every_model_conv_and_keeps_the_step():
    default, default_hlo = _tiny_resnet_grads("xla")
    assert "convolution" in default_hlo
    grads, hlo = _tiny_resnet_grads("im2col")
    # every conv of the model (stem, 3×3, strided, 1×1 projection) became a matmul
    assert "convolution" not in hlo
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(default), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert flax.linen.linear.lax is jax.lax


def test_conv_path_rejects_an_unknown_name_and_restores_flax():
    with pytest.raises(ValueError, match="conv path must be one of"):
        conv_paths.conv_path("winograd").__enter__()
    with pytest.raises(RuntimeError), conv_paths.conv_path("im2col"):
        raise RuntimeError
    assert flax.linen.linear.lax is jax.lax


def test_quick_conv_bench_rows(tmp_path):
    path = tmp_path / "conv.json"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert command.main(["--conv", "--quick", "--no-torch", "--conv-paths", "xla",
                             "--repeats", "2", "--json", str(path)]) == 0
    result = json.loads(path.read_text())["conv"]
    assert result["torch"] is None
    shapes = [conv_paths._shape_name(s) for s in conv_paths.QUICK_CONVS]
    assert [(r["shape"], r["path"]) for r in result["convs"]] == [
        (s, "xla") for s in shapes]
    for r in result["convs"]:
        assert r["fwd_ratio_to_torch"] is r["fwd_bwd_ratio_to_torch_cl"] is None
        if r["path"] == "xla":
            assert r["fwd_ratio_to_xla"] == r["fwd_bwd_ratio_to_xla"] == 1.0
    assert [r["path"] for r in result["step"]] == ["xla"]
    assert all({"init_s", "compile_s"} <= set(r) for r in result["step"])
    assert "| conv (batch N) | path |" in out.getvalue()


def test_missing_torch_is_reported_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    result = conv_paths.bench_conv_paths(batch=2, paths=("xla",), quick=True, repeats=1,
                                         min_sample_s=0.0, step=False)
    assert "pip install torch" in result["torch"]["missing"]
    assert {r["path"] for r in result["convs"]} == {"xla"}


def test_conv_paths_errors_are_one_line():
    with pytest.raises(ValueError, match="--conv-paths must name paths of"):
        conv_paths.bench_conv_paths(paths=("xla", "fft"), quick=True)
    with pytest.raises(ValueError, match="must include xla"):
        conv_paths.bench_conv_paths(paths=("im2col",), quick=True)
