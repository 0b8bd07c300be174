"""Registries: every component of normlab is chosen by name.

A `Registry` maps names to components of one kind (norms, activations, initializers, ...). The
modules that fill a registry are imported the first time it is asked for a name, so importing
`normlab.registry` stays cheap and a config can name a component before anything imports it.
A registry names packages (every module in them is imported: `normlab.nn`, `normlab.models`)
or single modules, so a new component in a new file of those packages needs no list edited.

    from normlab.registry import NORMS
    GroupNorm = NORMS.get("group")                  # the class
    norm = NORMS.build("group", num_groups=8)       # the class, constructed with checked kwargs

An unknown name raises `ValueError` listing every valid name; an unknown keyword argument raises
`ValueError` listing the accepted ones. `python -m normlab.registry` prints all names by kind.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any


class Registry:
    """Names → components of one kind, filled by decorating the components.

    Args:
      kind: what the components are, singular ("norm"); used in error messages.
      modules: the modules whose import registers this kind's components; a package stands
        for every module in it (found with `pkgutil`, not a kept list).
    """

    def __init__(self, kind: str, modules: Iterable[str] = ()):
        self.kind = kind
        self._modules = tuple(modules)
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str, *aliases: str) -> Callable[[Any], Any]:
        """Decorator: `@NORMS.register("batch")` registers the decorated object under `name`."""

        def add(obj: Any) -> Any:
            for key in (name, *aliases):
                if key in self._entries and self._entries[key] is not obj:
                    raise ValueError(f"{self.kind} name {key!r} is registered twice")
                self._entries[key] = obj
            return obj

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for name in self._modules:
                module = importlib.import_module(name)
                for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                    importlib.import_module(f"{name}.{info.name}")

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> Any:
        """The component registered as `name`; a `ValueError` listing valid names otherwise."""
        self._load()
        if name not in self._entries:
            raise ValueError(
                f"unknown {self.kind} {name!r}; valid {self.kind} names: " + ", ".join(self.names())
            )
        return self._entries[name]

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Calls the component `name` with `args`/`kwargs`, checking the arguments first.

        A keyword the component does not take raises `ValueError` naming it and the accepted
        ones, instead of a `TypeError` deep inside a dataclass constructor.
        """
        entry = self.get(name)
        try:
            signature = inspect.signature(entry)
        except (TypeError, ValueError):  # some builtins have no signature: call as is
            return entry(*args, **kwargs)
        try:
            signature.bind(*args, **kwargs)
        except TypeError as err:
            accepted = ", ".join(p for p in signature.parameters if p not in ("self", "parent"))
            raise ValueError(
                f"{self.kind} {name!r}: {err}; accepted arguments: {accepted or '(none)'}"
            ) from None
        return entry(*args, **kwargs)


NN = "normlab.nn"  # the layers package: norms, activations, initializers, regularizers, ...
NORMS = Registry("norm", [NN])
ACTIVATIONS = Registry("activation", [NN])
INITIALIZERS = Registry("initializer", [NN])
REGULARIZERS = Registry("regularizer", [NN])
AUGMENTATIONS = Registry("augmentation", ["normlab.data.augment"])
PREPROCESSING = Registry("preprocessing", ["normlab.data.preprocess"])
POOLING = Registry("pooling", [NN])
CONVOLUTIONS = Registry("conv", [NN])
CONV_ALGORITHMS = Registry("conv_algorithm", [NN])
RESIDUAL_INITS = Registry("residual_init", [NN])
DATASETS = Registry("dataset", ["normlab.data.datasets"])
MODELS = Registry("model", ["normlab.models"])
OPTIMIZERS = Registry("optimizer", ["normlab.train.optim"])
SCHEDULES = Registry("schedule", ["normlab.train.optim"])

ALL: dict[str, Registry] = {
    r.kind: r
    for r in (
        NORMS,
        ACTIVATIONS,
        INITIALIZERS,
        REGULARIZERS,
        AUGMENTATIONS,
        PREPROCESSING,
        POOLING,
        CONVOLUTIONS,
        CONV_ALGORITHMS,
        RESIDUAL_INITS,
        DATASETS,
        MODELS,
        OPTIMIZERS,
        SCHEDULES,
    )
}


def main() -> None:
    """Prints every registered name, grouped by kind."""
    # Under `python -m` this file runs as __main__, a second copy whose registries the component
    # modules never fill: read the imported package's registries instead.
    from normlab import registry as package_registry

    for kind, registry in package_registry.ALL.items():
        print(f"{kind}:")
        for name in registry.names():
            doc = inspect.getdoc(registry.get(name)) or ""
            print(f"  {name:<18} {doc.splitlines()[0] if doc else ''}")


if __name__ == "__main__":
    main()
