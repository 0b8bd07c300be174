"""Fitted input preprocessing against float64 NumPy references written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normlab.data.preprocess import from_state_dict, make_preprocessor
from normlab.registry import PREPROCESSING

NAMES = ["none", "zero_center", "standardize", "pca", "pca_whiten", "zca_whiten"]
IMAGE = (4, 4, 3)  # D = 48
EPS = 1e-5


def correlated_images(n, seed, low=0.5, high=4.0, offset=0.0):
    """(n, 4, 4, 3) Gaussian images, covariance Q diag(λ) Qᵀ with λ spread over [low, high].

    Every eigenvalue is ≥ low = 0.5 ≫ ε = 1e-5, so whitening reaches unit variance up to
    λ/(λ + ε) ≈ 1 − 2e-5 (and sampling noise does not enter: everything is measured on the
    very data that was fitted).
    """
    rng = np.random.default_rng(seed)
    d = int(np.prod(IMAGE))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.geomspace(high, low, d)
    mean = rng.uniform(-1, 1, d) + offset
    z = rng.standard_normal((n, d))
    return (mean + (z * np.sqrt(lam)) @ q.T).reshape(n, *IMAGE)


def ref_eig(x):
    """Mean image, population covariance Σ = (1/N) x_cᵀx_c, eigenpairs by decreasing λ."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    xc = flat - mean
    lam, u = np.linalg.eigh(xc.T @ xc / len(x))
    return mean, lam[::-1], u[:, ::-1]


def cov(y):
    flat = np.asarray(y, np.float64).reshape(len(y), -1)
    flat = flat - flat.mean(axis=0)
    return flat.T @ flat / len(y)


def align_signs(y, ref):
    """Eigenvectors are defined up to sign: flip y's columns to agree with ref's."""
    return y * np.sign(np.sum(y * ref, axis=0))


@pytest.fixture(scope="module")
def train():
    return correlated_images(3000, seed=0)


def test_none_is_identity_and_needs_no_fit(train):
    y = make_preprocessor("none")(train)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, train.astype(np.float32))


@pytest.mark.parametrize("per_channel", [True, False])
def test_zero_center(train, per_channel):
    axes = (0, 1, 2) if per_channel else (0,)
    y = make_preprocessor("zero_center", per_channel=per_channel).fit(train)(train)
    assert y.shape == train.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, train - train.mean(axis=axes), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float64).mean(axis=axes), 0.0, atol=1e-5)


@pytest.mark.parametrize("per_channel", [True, False])
def test_standardize(train, per_channel):
    axes = (0, 1, 2) if per_channel else (0,)
    y = make_preprocessor("standardize", per_channel=per_channel).fit(train)(train)
    mean, var = train.mean(axis=axes), train.var(axis=axes)
    np.testing.assert_allclose(y, (train - mean) / np.sqrt(var + 1e-8), rtol=1e-5, atol=1e-5)
    y64 = np.asarray(y, np.float64)
    np.testing.assert_allclose(y64.mean(axis=axes), 0.0, atol=1e-5)
    # ε = 1e-8 against variances ≥ 0.5 moves the std by < 1e-8: float32 rounding dominates.
    np.testing.assert_allclose(y64.std(axis=axes), 1.0, rtol=1e-5)


def test_pca_decorrelates_with_decreasing_variances(train):
    y = np.asarray(make_preprocessor("pca").fit(train)(train), np.float64)
    mean, lam, u = ref_eig(train)
    assert y.shape == (len(train), 48)
    np.testing.assert_allclose(align_signs(y, (train.reshape(3000, -1) - mean) @ u),
                               (train.reshape(3000, -1) - mean) @ u, rtol=1e-5, atol=1e-4)
    c = cov(y)
    np.testing.assert_allclose(c, np.diag(lam), atol=1e-4)
    assert np.all(np.diff(np.diag(c)) < 0)


def test_pca_num_components_keeps_leading_columns(train):
    full = make_preprocessor("pca").fit(train)(train)
    top5 = make_preprocessor("pca", num_components=5).fit(train)(train)
    assert top5.shape == (3000, 5)
    np.testing.assert_allclose(top5, full[:, :5], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["pca_whiten", "zca_whiten"])
def test_whitening_gives_identity_covariance(train, name):
    white = make_preprocessor(name, eps=EPS).fit(train)
    y = white(train)
    mean, lam, u = ref_eig(train)
    xc = train.reshape(3000, -1) - mean
    if name == "pca_whiten":
        ref = xc @ u / np.sqrt(lam + EPS)
        assert y.shape == (3000, 48)
        y = align_signs(np.asarray(y, np.float64), ref)
    else:
        ref = (xc @ u / np.sqrt(lam + EPS) @ u.T).reshape(train.shape)
        assert y.shape == train.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-5)
    # λ ≥ 0.5 ≫ ε: the diagonal is λ/(λ + ε) ≥ 1 − 2e-5; float32 adds ~1e-6.
    np.testing.assert_allclose(cov(y), np.eye(48), atol=5e-5)


def test_zca_is_symmetric_and_closest_whitening_to_the_input():
    # Variances ≈ 1 with correlations: here whitening should barely move the data, and ZCA
    # moves it least (Kessy et al. 2018: ZCA minimizes E‖x' − x_c‖² over whitening matrices).
    x = correlated_images(3000, seed=1, low=0.5, high=1.5)
    zca = make_preprocessor("zca_whiten", eps=EPS).fit(x)
    w = zca.matrix
    np.testing.assert_array_equal(w, w.T)
    mean, lam, u = ref_eig(x)
    np.testing.assert_allclose(w, u @ np.diag(1 / np.sqrt(lam + EPS)) @ u.T, atol=1e-10)
    xc = x.reshape(3000, -1) - mean
    dist_zca = np.linalg.norm(np.asarray(zca(x), np.float64).reshape(3000, -1) - xc)
    dist_pca = np.linalg.norm(np.asarray(make_preprocessor("pca_whiten").fit(x)(x)) - xc)
    assert dist_zca < 0.5 * dist_pca
    # Every whitening is W·R with R orthogonal: random R only move the data farther away.
    rng = np.random.default_rng(2)
    for _ in range(5):
        r, _ = np.linalg.qr(rng.standard_normal((48, 48)))
        assert np.linalg.norm(xc @ w @ r - xc) > dist_zca


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(train, name, tmp_path):
    fitted = make_preprocessor(name).fit(train)
    held_out = correlated_images(50, seed=3)
    restored = from_state_dict(fitted.state_dict())
    np.testing.assert_array_equal(restored(held_out), fitted(held_out))
    np.savez(tmp_path / "state.npz", **fitted.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as f:
        from_file = from_state_dict(dict(f))
    assert from_file.options() == fitted.options()
    np.testing.assert_array_equal(from_file(held_out), fitted(held_out))


@pytest.mark.parametrize("name", ["zero_center", "standardize", "pca_whiten", "zca_whiten"])
def test_held_out_data_uses_train_statistics(train, name):
    test = correlated_images(500, seed=4, offset=3.0)  # a shifted distribution
    transform = make_preprocessor(name).fit(train)
    mean_c, var_c = train.mean(axis=(0, 1, 2)), train.var(axis=(0, 1, 2))
    mean, lam, u = ref_eig(train)
    tc = test.reshape(500, -1) - mean
    expected = {
        "zero_center": test - mean_c,
        "standardize": (test - mean_c) / np.sqrt(var_c + 1e-8),
        "pca_whiten": tc @ u / np.sqrt(lam + EPS),
        "zca_whiten": (tc @ u / np.sqrt(lam + EPS) @ u.T).reshape(test.shape),
    }[name]
    y = np.asarray(transform(test), np.float64)
    if name == "pca_whiten":
        y = align_signs(y, expected)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)
    assert np.abs(y.mean()) > 0.1  # the test set's own mean was not subtracted


@pytest.mark.parametrize("name", NAMES)
def test_numpy_jax_flat_and_jit_inputs_agree(train, name):
    transform = make_preprocessor(name).fit(train)
    x = correlated_images(20, seed=5).astype(np.float32)
    y = transform(x)
    np.testing.assert_array_equal(transform(jnp.asarray(x)), y)
    np.testing.assert_allclose(jax.jit(transform)(jnp.asarray(x)), y, rtol=1e-6, atol=1e-6)
    flat = transform(x.reshape(20, -1))
    assert flat.shape == (20, 48)
    np.testing.assert_allclose(np.asarray(flat).reshape(y.shape), y, rtol=1e-6, atol=1e-6)
    # bf16 input: upcast first, so exactly the float32 result of the bf16-rounded values.
    x16 = jnp.asarray(x, jnp.bfloat16)
    np.testing.assert_array_equal(transform(x16), transform(np.asarray(x16, np.float32)))
    assert transform(x16).dtype == jnp.float32


@pytest.mark.parametrize("name", NAMES[1:])
def test_fit_in_chunks_and_from_uint8(name):
    x = np.random.default_rng(6).integers(0, 256, size=(101, *IMAGE), dtype=np.uint8)
    whole = make_preprocessor(name).fit(x.astype(np.float64))
    chunked = make_preprocessor(name).fit(x, chunk_size=7)
    state = chunked.state_dict()
    for key, value in whole.state_dict().items():
        if isinstance(value, np.ndarray):  # the statistics; name and options are not arrays
            np.testing.assert_allclose(state[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
        else:
            assert state[key] == value


def test_registry_names():
    assert set(NAMES) <= set(PREPROCESSING.names())


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: make_preprocessor("pca_whiten", eps=-1e-3), "eps must be a number >= 0"),
        (lambda: make_preprocessor("zca_whiten", eps=-1.0), "eps must be a number >= 0"),
        (lambda: make_preprocessor("standardize", eps=float("nan")), "eps must be"),
        (lambda: make_preprocessor("zero_center", per_channel="yes"), "per_channel must be"),
        (lambda: make_preprocessor("pca", num_components=0), "num_components must be"),
        (lambda: make_preprocessor("whiten"), "unknown preprocessing 'whiten'"),
        (lambda: make_preprocessor("zca_whiten", num_components=3), "num_components"),
    ],
)
def test_bad_options_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_use_raises(train):
    with pytest.raises(ValueError, match="not fitted: fit it first"):
        make_preprocessor("zca_whiten")(train)
    with pytest.raises(ValueError, match="fit it first"):
        make_preprocessor("pca").state_dict()
    with pytest.raises(ValueError, match="fit it first"):
        _ = make_preprocessor("pca").matrix
    fitted = make_preprocessor("zca_whiten").fit(train[:100])
    with pytest.raises(ValueError, match=r"x must have shape \(N, \*\(4, 4, 3\)\)"):
        fitted(np.zeros((5, 4, 4, 2)))
    with pytest.raises(ValueError, match="num_components=49 exceeds the dimension D=48"):
        make_preprocessor("pca", num_components=49).fit(train)
    with pytest.raises(ValueError, match="N >= 2"):
        make_preprocessor("pca").fit(train[:1])
    with pytest.raises(ValueError, match="non-empty batch"):
        make_preprocessor("zero_center").fit(np.zeros(5))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        make_preprocessor("zero_center").fit(train, chunk_size=0)
    bad = train[:100].copy()
    bad[3, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_preprocessor("pca").fit(bad)


def test_corrupt_state_raises(train):
    state = make_preprocessor("zca_whiten").fit(train[:100]).state_dict()
    with pytest.raises(ValueError, match="lacks \\['eigenvectors'\\]"):
        from_state_dict({k: v for k, v in state.items() if k != "eigenvectors"})
    with pytest.raises(ValueError, match="'eigenvalues' has shape \\(47,\\), expected \\(48,\\)"):
        from_state_dict({**state, "eigenvalues": state["eigenvalues"][:-1]})
    with pytest.raises(ValueError, match="no 'name' entry"):
        from_state_dict({k: v for k, v in state.items() if k != "name"})
