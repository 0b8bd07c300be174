"""Fitted input preprocessing: zero-centering, standardization, PCA, PCA- and ZCA-whitening.

Every transform is fitted on the TRAINING split only (float64 NumPy statistics) and then applied,
unchanged, to every split; its state goes into the checkpoint through `state_dict()` and comes
back with `from_state_dict()`. Applying a transform works on NumPy and JAX arrays (also under
`jax.jit`) and always returns float32.

    from normlab.data.preprocess import from_state_dict, make_preprocessor
    zca = make_preprocessor("zca_whiten", eps=1e-2).fit(x_train_NHWC)   # train split only
    x_test_white = zca(x_test_NHWC)                                     # train statistics
    restored = from_state_dict(zca.state_dict())                        # same outputs

Conventions. The last axis of an input is its channel axis; inputs are batches, (N, H, W, C) or
already flattened (N, D), and a transform fitted on one form also accepts the other. Variances
and covariances are population statistics (divided by N, as `np.cov(..., bias=True)`), so the
transformed training data has exactly the advertised moments.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np

from normlab.registry import PREPROCESSING

# Rows per float64 chunk when fitting: ~64 MB chunks keep CIFAR-10 (45,000 x 3072) within a few
# hundred MB on top of the data and the 3072 x 3072 covariance.
_CHUNK_BYTES = 64 * 2**20


@dataclasses.dataclass(eq=False)
class Preprocessor:
    """Base class of the fitted transforms: fit (float64 NumPy) → apply (jnp, float32) → save.

    Subclasses set `name` (their registry name), fit their statistics in `_fit` (float64 NumPy
    arrays: the whole saved state, of the shapes `_state_shapes` gives) and apply them in
    `_apply`. The base transform itself is the identity x' = x, with nothing to fit.

        t = make_preprocessor("standardize").fit(x_train)
        y = t(x)
    """

    name: ClassVar[str] = "none"
    _state_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._state: dict[str, np.ndarray] | None = None
        self._feature_shape: tuple[int, ...] | None = None
        self._validate_options()

    def _validate_options(self) -> None:
        """Raises ValueError for a bad option (subclasses with options override it)."""

    @property
    def fitted(self) -> bool:
        """Whether the transform has statistics (always true for "none")."""
        return not self._state_keys or self._state is not None

    def options(self) -> dict[str, Any]:
        """The transform's constructor options, e.g. {"eps": 1e-5}."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def fit(self, x_train: Any, *, chunk_size: int | None = None) -> Self:
        """Fits the statistics on `x_train` (N, ...) in float64, `chunk_size` rows at a time.

        Call it on the training split only. Returns `self`, so `make_preprocessor(...).fit(x)`.
        """
        x = np.asarray(x_train)
        if x.ndim < 2 or x.shape[0] < 1 or math.prod(x.shape[1:]) < 1:
            raise ValueError(
                f"{type(self).__name__}.fit: x_train must be a non-empty batch (N, ...) with "
                f"N >= 1, got shape {x.shape}"
            )
        if chunk_size is None:
            chunk_size = max(1, _CHUNK_BYTES // (8 * math.prod(x.shape[1:])))
        if chunk_size < 1:
            raise ValueError(
                f"{type(self).__name__}.fit: chunk_size must be >= 1, got {chunk_size}"
            )
        state = self._fit(x, chunk_size)
        self._state = state
        self._feature_shape = tuple(x.shape[1:])
        self._prepare()
        return self

    def _fit(self, x: np.ndarray, chunk_size: int) -> dict[str, np.ndarray]:
        return {}

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def _prepare(self) -> None:
        """Derives the float32 arrays used by `_apply` from the float64 state."""

    def __call__(self, x: Any) -> jax.Array:
        """Applies the fitted transform to a batch x (N, ...) → float32 jax.Array."""
        if not self.fitted:
            raise ValueError(
                f"{type(self).__name__} ({self.name!r}) is not fitted: fit it first on the "
                "training split (`.fit(x_train)`) or restore it with `from_state_dict`"
            )
        x = jnp.asarray(x, jnp.float32)
        if self._feature_shape is not None:
            flat = (math.prod(self._feature_shape),)
            if x.ndim < 2 or tuple(x.shape[1:]) not in (self._feature_shape, flat):
                raise ValueError(
                    f"{type(self).__name__}: x must have shape (N, *{self._feature_shape}) or "
                    f"(N, *{flat}) as the data it was fitted on, got shape {tuple(x.shape)}"
                )
        return self._apply(x)

    def _apply(self, x: jax.Array) -> jax.Array:
        return x

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint: a flat dict of the name, options and float64 statistics.

        Keys: "name" (str), "option.<name>" (bool/int/float; options that are None are left
        out), "feature_shape" and the transform's arrays. Orbax and `np.savez` both store it.
        """
        if not self.fitted:
            raise ValueError(
                f"{type(self).__name__}: fit it first; an unfitted transform has no state"
            )
        out: dict[str, Any] = {"name": self.name}
        out.update({f"option.{k}": v for k, v in self.options().items() if v is not None})
        if self._feature_shape is not None:
            out["feature_shape"] = np.asarray(self._feature_shape, np.int64)
        out.update({k: v.copy() for k, v in (self._state or {}).items()})
        return out

    def _load_state(self, d: dict[str, Any]) -> None:
        missing = [k for k in (*self._state_keys, "feature_shape") if k not in d]
        if self._state_keys and missing:
            raise ValueError(
                f"from_state_dict: state of {self.name!r} lacks {missing}; got keys {sorted(d)}"
            )
        if "feature_shape" in d:
            self._feature_shape = tuple(int(s) for s in np.asarray(d["feature_shape"]))
        if self._state_keys:
            self._state = {k: np.asarray(d[k], np.float64) for k in self._state_keys}
            for key, shape in self._state_shapes().items():
                if self._state[key].shape != shape:
                    raise ValueError(
                        f"from_state_dict: {self.name!r} entry {key!r} has shape "
                        f"{self._state[key].shape}, expected {shape} for feature_shape "
                        f"{self._feature_shape}"
                    )
            self._prepare()


def _chunked_mean(x: np.ndarray, axes: tuple[int, ...], chunk_size: int, where: str) -> np.ndarray:
    """float64 mean over axis 0 and `axes` (axes of x, ≥ 1), summed chunk by chunk."""
    total = np.zeros([s for i, s in enumerate(x.shape) if i != 0 and i not in axes], np.float64)
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size].astype(np.float64)
        if not np.isfinite(chunk).all():
            raise ValueError(f"{where}: x_train contains NaN or infinite values")
        total += chunk.sum(axis=(0, *axes))
    return total / (x.shape[0] * math.prod(x.shape[a] for a in axes))


@PREPROCESSING.register("none")
@dataclasses.dataclass(eq=False)
class Identity(Preprocessor):
    """x' = x (as float32): the "no preprocessing" baseline; nothing to fit.

        ident = make_preprocessor("none")
        y = ident(x)
    """


@PREPROCESSING.register("zero_center")
@dataclasses.dataclass(eq=False)
class ZeroCenter(Preprocessor):
    """x' = x − μ, with μ the per-channel mean (μ_c over N, H, W) or the mean image (μ_hwc).

    Args:
      per_channel: True: one mean per channel (last axis); False: the mean image (mean over N).

        zc = make_preprocessor("zero_center", per_channel=False).fit(x_train)
        y = zc(x)                          # same shape as x
    """

    name: ClassVar[str] = "zero_center"
    _state_keys: ClassVar[tuple[str, ...]] = ("mean",)
    per_channel: bool = True

    def _validate_options(self) -> None:
        if not isinstance(self.per_channel, bool | np.bool_):
            raise ValueError(
                f"{type(self).__name__}: per_channel must be a bool, got {self.per_channel!r}"
            )

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(1, ndim - 1)) if self.per_channel else ()

    def _fit(self, x: np.ndarray, chunk_size: int) -> dict[str, np.ndarray]:
        return {"mean": _chunked_mean(x, self._axes(x.ndim), chunk_size, type(self).__name__)}

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        shape = self._feature_shape[-1:] if self.per_channel else self._feature_shape
        return dict.fromkeys(self._state_keys, shape)

    def _prepare(self) -> None:
        self._mean32 = self._state["mean"].astype(np.float32)

    def _as_fitted(self, x: jax.Array) -> jax.Array:
        return x.reshape((x.shape[0], *self._feature_shape))

    def _apply(self, x: jax.Array) -> jax.Array:
        return (self._as_fitted(x) - self._mean32).reshape(x.shape)


@PREPROCESSING.register("standardize")
@dataclasses.dataclass(eq=False)
class Standardize(ZeroCenter):
    """x' = (x − μ) / sqrt(σ² + ε), μ and σ² per channel or per pixel (population variance).

    Args:
      per_channel: True: statistics per channel (last axis); False: per pixel (mean/std image).
      eps: ε ≥ 0; only guards features of zero variance (constant border pixels of MNIST):
        1e-8 is negligible for data in [0, 1] or [0, 255].

        st = make_preprocessor("standardize").fit(x_train)
        y = st(x)                          # per-channel mean 0, std 1 on x_train
    """

    name: ClassVar[str] = "standardize"
    _state_keys: ClassVar[tuple[str, ...]] = ("mean", "var")
    eps: float = 1e-8

    def _validate_options(self) -> None:
        super()._validate_options()
        _check_eps(self)

    def _fit(self, x: np.ndarray, chunk_size: int) -> dict[str, np.ndarray]:
        where = type(self).__name__
        axes = self._axes(x.ndim)
        mean = _chunked_mean(x, axes, chunk_size, where)
        # Second pass on centered data: no cancellation in E[x²] − μ² for uint8-scale inputs.
        sq = np.zeros_like(mean)
        for start in range(0, x.shape[0], chunk_size):
            centered = x[start : start + chunk_size].astype(np.float64) - mean
            sq += np.square(centered).sum(axis=(0, *axes))
        return {"mean": mean, "var": sq / (x.shape[0] * math.prod(x.shape[a] for a in axes))}

    def _prepare(self) -> None:
        super()._prepare()
        self._inv_std32 = (1.0 / np.sqrt(self._state["var"] + self.eps)).astype(np.float32)

    def _apply(self, x: jax.Array) -> jax.Array:
        return ((self._as_fitted(x) - self._mean32) * self._inv_std32).reshape(x.shape)


def _check_eps(p: Any) -> None:
    if not isinstance(p.eps, int | float | np.floating) or not p.eps >= 0:
        raise ValueError(f"{type(p).__name__}: eps must be a number >= 0, got eps={p.eps!r}")


@PREPROCESSING.register("pca")
@dataclasses.dataclass(eq=False)
class PCA(Preprocessor):
    """Decorrelation: x' = (x − μ) U, U the covariance eigenvectors by decreasing eigenvalue.

    x is flattened to (N, D); μ (D,) is the mean image; Σ = (1/N) Σ_n (x_n − μ)ᵀ(x_n − μ) =
    U diag(λ) Uᵀ, λ_1 ≥ … ≥ λ_D (eigenvalues below 0 from rounding are clipped to 0). Each
    eigenvector's largest-magnitude entry is made positive, so the result is deterministic.
    The output is (N, k): the covariance of transformed training data is diag(λ_1 … λ_k).

    Args:
      num_components: k, the number of leading components kept (None: all D).

        pca = make_preprocessor("pca", num_components=64).fit(x_train)
        z = pca(x)                         # (N, 64)
    """

    name: ClassVar[str] = "pca"
    _state_keys: ClassVar[tuple[str, ...]] = ("mean", "eigenvalues", "eigenvectors")
    num_components: int | None = None

    def _validate_options(self) -> None:
        k = self.num_components
        if k is not None and (not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1):
            raise ValueError(
                f"{type(self).__name__}: num_components must be None or an int >= 1, got {k!r}"
            )

    def _fit(self, x: np.ndarray, chunk_size: int) -> dict[str, np.ndarray]:
        where = type(self).__name__
        x = x.reshape(x.shape[0], -1)
        n, d = x.shape
        if n < 2:
            raise ValueError(f"{where}.fit: a covariance needs N >= 2 examples, got N={n}")
        if self.num_components is not None and self.num_components > d:
            raise ValueError(
                f"{where}: num_components={self.num_components} exceeds the dimension D={d}"
            )
        mean = _chunked_mean(x, (), chunk_size, where)
        cov = np.zeros((d, d), np.float64)
        for start in range(0, n, chunk_size):
            centered = x[start : start + chunk_size].astype(np.float64) - mean
            cov += centered.T @ centered
        cov /= n
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        eigenvectors = eigenvectors[:, order]
        peak = eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), np.arange(d)]
        eigenvectors *= np.where(peak < 0, -1.0, 1.0)
        return {"mean": mean, "eigenvalues": eigenvalues, "eigenvectors": eigenvectors}

    def _state_shapes(self) -> dict[str, tuple[int, ...]]:
        d = math.prod(self._feature_shape)
        return {"mean": (d,), "eigenvalues": (d,), "eigenvectors": (d, d)}

    @property
    def matrix(self) -> np.ndarray:
        """The float64 matrix M with x' = (x − μ) M; (D, k) for PCA, (D, D) for ZCA."""
        if not self.fitted:
            raise ValueError(f"{type(self).__name__}: fit it first; it has no matrix yet")
        return self._matrix(self._state["eigenvalues"], self._state["eigenvectors"])

    def _matrix(self, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
        return eigenvectors[:, : self.num_components]

    def _prepare(self) -> None:
        self._mean32 = self._state["mean"].astype(np.float32)
        self._matrix32 = self.matrix.astype(np.float32)

    def _apply(self, x: jax.Array) -> jax.Array:
        centered = x.reshape(x.shape[0], -1) - self._mean32
        # HIGHEST: GPUs/TPUs would otherwise round float32 operands to TF32/bf16 here.
        return jnp.matmul(centered, self._matrix32, precision=jax.lax.Precision.HIGHEST)


@PREPROCESSING.register("pca_whiten")
@dataclasses.dataclass(eq=False)
class PCAWhiten(PCA):
    """PCA-whitening: x' = (x − μ) U diag(1/sqrt(λ + ε)) (flattened, (N, k) output).

    The covariance of transformed training data is diag(λ/(λ + ε)) ≈ I where λ ≫ ε.

    Args:
      num_components: k, the number of leading components kept (None: all D).
      eps: ε ≥ 0; 1e-5 suits data in [0, 1] (scale it with the data's variance). Directions
        with λ ≲ ε are damped instead of amplified to unit variance; a larger ε (1e-2 to 1e-1
        is common on CIFAR in [0, 1]) amplifies low-variance (noisy) directions less.

        white = make_preprocessor("pca_whiten").fit(x_train)
        z = white(x)                       # (N, D), identity covariance on x_train
    """

    name: ClassVar[str] = "pca_whiten"
    eps: float = 1e-5

    def _validate_options(self) -> None:
        super()._validate_options()
        _check_eps(self)

    def _matrix(self, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
        k = self.num_components
        return eigenvectors[:, :k] / np.sqrt(eigenvalues[:k] + self.eps)


@PREPROCESSING.register("zca_whiten")
@dataclasses.dataclass(eq=False)
class ZCAWhiten(PCA):
    """ZCA-whitening: x' = (x − μ) W, W = U diag(1/sqrt(λ + ε)) Uᵀ = (Σ + εI)^(-1/2).

    W is symmetric, and of all whitening transforms it keeps x' closest to x − μ (in mean
    squared distance), so whitened images still look like images: the output keeps the input's
    shape. The covariance of transformed training data is U diag(λ/(λ + ε)) Uᵀ ≈ I where λ ≫ ε.

    Args:
      eps: ε ≥ 0; 1e-5 suits data in [0, 1] (scale it with the data's variance); a larger ε
        (1e-2 to 1e-1 is common on CIFAR in [0, 1]) amplifies low-variance, high-frequency
        directions less, so whitened images are less noisy.

        zca = make_preprocessor("zca_whiten", eps=1e-2).fit(x_train)
        y = zca(x)                         # same shape as x
    """

    name: ClassVar[str] = "zca_whiten"
    eps: float = 1e-5
    num_components: None = dataclasses.field(default=None, init=False, repr=False)

    def _validate_options(self) -> None:
        _check_eps(self)

    def _matrix(self, eigenvalues: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
        w = (eigenvectors / np.sqrt(eigenvalues + self.eps)) @ eigenvectors.T
        return (w + w.T) / 2  # exact symmetry; the two halves differ only by rounding

    def _apply(self, x: jax.Array) -> jax.Array:
        return super()._apply(x).reshape(x.shape)


def make_preprocessor(name: str, **options: Any) -> Preprocessor:
    """An unfitted transform by registry name, options checked: `make_preprocessor("pca")`."""
    return PREPROCESSING.build(name, **options)


def from_state_dict(d: dict[str, Any]) -> Preprocessor:
    """Rebuilds a fitted transform from `state_dict()` (also after orbax or `np.savez`/`np.load`).

        restored = from_state_dict(zca.state_dict())   # restored(x) == zca(x)
    """
    if "name" not in d:
        raise ValueError(f"from_state_dict: no 'name' entry; got keys {sorted(d)}")
    options = {
        k.removeprefix("option."): np.asarray(v).item()
        for k, v in d.items()
        if k.startswith("option.")
    }
    transform = make_preprocessor(str(np.asarray(d["name"]).item()), **options)
    transform._load_state(d)
    return transform
