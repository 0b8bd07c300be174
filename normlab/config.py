"""Config files: `configs/x.py:key=value,...` plus `--config.a.b=v` overrides.

A config file defines `get_config(arg: str | None) -> ConfigDict` and optionally
`sweep(add, arg)`. The text after the colon is handed to `get_config`, which usually parses it
with `parse_arg` (typed `key=value` pairs; a bare key means `key=True`, as in big_vision's
`runlocal`):

    config = load_config("configs/mnist_mlp.py:norm=batch,runlocal")
    apply_overrides(config, ["optimizer.lr=0.5", "model.width=200"])

Override values are parsed against the type of the field they replace (a float field takes
"0.5", a bool takes "true"/"false", a tuple takes "(1, 2)"), so a typo fails with a message
instead of silently becoming a string. Unknown keys fail listing the keys that exist.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import ml_collections

from normlab.errors import ConfigError, NormlabError

# folders whose files are not the user's code (with a separator: /x/normlab_configs is)
_NORMLAB_DIR = os.path.join(Path(__file__).resolve().parent, "")
_PYTHON_DIRS = tuple(
    os.path.join(Path(sysconfig.get_path(kind)).resolve(), "")
    for kind in ("stdlib", "platstdlib", "purelib", "platlib")
)


def _special_float(text: str) -> float | None:
    """`nan`, `inf`, `-inf` (any case) as floats, which literal_eval does not read; else None.

    They are floats, so they parse; whether a field may be non-finite is validation's call."""
    if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        return float(text)
    return None


def _parse_value(text: str, like: Any, where: str) -> Any:
    """Parses `text` into the type of `like` (the current value of the field)."""
    if isinstance(like, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: expected a bool (true/false), got {text!r}")
    if isinstance(like, int | float) and not isinstance(like, bool):
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = _special_float(text) if isinstance(like, float) else None
            if value is None:
                raise ValueError(
                    f"{where}: expected a {type(like).__name__}, got {text!r}"
                ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a {type(like).__name__}, got {text!r}")
        if isinstance(like, int) and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{where}: expected an int, got {text!r}")
            value = int(value)
        return type(like)(value)
    if isinstance(like, tuple | list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(part.strip() for part in text.split(",") if part.strip())
        if not isinstance(value, tuple | list):
            value = (value,)
        return type(like)(value)
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `key=value,key2=value2,flag` into a ConfigDict typed by `defaults`.

    Every key must appear in `defaults` (its default fixes the type); a bare `flag` sets a bool
    default to True. Example: `parse_arg("norm=group,runlocal", norm="batch", runlocal=False)`.
    """
    result = ml_collections.ConfigDict(defaults)
    if not arg:
        return result
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, has_value, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; valid arguments: {', '.join(sorted(defaults))}"
            )
        if not has_value:
            if not isinstance(defaults[key], bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            result[key] = True
        else:
            result[key] = _parse_value(text, defaults[key], f"config argument {key!r}")
    return result


def _shown(filename: str) -> str:
    """A file name as the user would type it: relative to the working directory when inside."""
    relative = os.path.relpath(filename)
    return filename if relative.startswith("..") else relative


def _is_user_file(filename: str) -> bool:
    """Whether `filename` is the user's code: neither normlab's nor Python's (stdlib, packages)."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    resolved = str(Path(filename).resolve())
    return not resolved.startswith((_NORMLAB_DIR, *_PYTHON_DIRS))


def _located(err: BaseException, path: str | Path, doing: str) -> BaseException:
    """`err` raised while `doing` (running `path`, or calling one of its functions) as one line
    naming the innermost line of the user's code it went through.

    A ValueError or NormlabError raised by normlab itself (say `parse_arg` naming the valid
    arguments) already is such a line, and is returned unchanged.
    """
    frames = traceback.extract_tb(err.__traceback__)
    if isinstance(err, SyntaxError) and err.filename:  # the frame is the importer's, not the file's
        where = f"{_shown(err.filename)}:{err.lineno}"
        return ConfigError(f"{where}: SyntaxError: {err.msg}")
    deliberate = isinstance(err, ValueError | NormlabError) and frames
    if deliberate and str(Path(frames[-1].filename).resolve()).startswith(_NORMLAB_DIR):
        return err
    what = f"{type(err).__name__}: {err}"
    user = [f for f in frames if _is_user_file(f.filename)]
    if not user:
        return ConfigError(f"{_shown(str(path))}: {doing} failed: {what}")
    frame = user[-1]
    where = f"{_shown(frame.filename)}:{frame.lineno}"
    if frame.name == "<module>":
        return ConfigError(f"{where}: {what}")
    return ConfigError(f"in {where} ({frame.name}): {what}")


def call_config_function(path: str | Path, function: Callable, *args: Any) -> Any:
    """`function(*args)` for a function of config file `path`; any error it raises becomes one
    line naming the file and line of the config's code (`ConfigError`, chained to the original
    for `--debug`)."""
    try:
        return function(*args)
    except Exception as err:
        _raise_located(err, path, f"{getattr(function, '__name__', 'the call')}(...)")


def _raise_located(err: Exception, path: str | Path, doing: str) -> NoReturn:
    located = _located(err, path, doing)
    if located is err:
        raise err
    raise located from err


def load_module(path: str | Path) -> ModuleType:
    """Imports a config file by path (it need not be on `sys.path`).

    A missing or non-Python file, or any error while importing it (a syntax error, a failing
    import), is a one-line ConfigError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise ConfigError(
            f"config file {str(path)!r} is not a Python file: a config is a .py file defining "
            "get_config(arg)"
        )
    name = f"normlab_config_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        _raise_located(err, path, "import")
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {str(path)!r} defines no get_config(arg)")
    return module


def split_spec(spec: str) -> tuple[str, str | None]:
    """`"configs/x.py:a=1"` → `("configs/x.py", "a=1")`; no colon → arg None."""
    path, colon, arg = spec.partition(":")
    return path, (arg if colon else None)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and returns `get_config(arg)`, unlocked for overrides."""
    path, arg = split_spec(spec)
    config = call_config_function(path, load_module(path).get_config, arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config in {path!r} must return an ml_collections.ConfigDict, got "
            f"{type(config).__name__}"
        )
    return config


def _field_type(parent: ml_collections.ConfigDict, key: str) -> Any:
    """The current value of `parent.key`, or a typed placeholder's type for `None` fields."""
    field = parent.get_ref(key) if hasattr(parent, "get_ref") else None
    value = parent[key]
    if value is None and field is not None and field.get_type() is not type(None):
        return field.get_type()()  # an instance of the placeholder's type, only for parsing
    return value


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Applies one `a.b.c=value` override in place."""
    key, has_value, text = assignment.partition("=")
    if not has_value:
        raise ValueError(f"override {assignment!r} must look like key=value")
    parts = key.strip().removeprefix("config.").split(".")
    node = config
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "config"
            valid = (
                ", ".join(sorted(node.keys()))
                if isinstance(node, dict | ml_collections.ConfigDict)
                else "(none)"
            )
            raise ValueError(f"unknown config field {key!r}: {where} has fields {valid}")
        if depth < len(parts) - 1:
            node = node[part]
    last = parts[-1]
    like = _field_type(node, last)
    if isinstance(like, ml_collections.ConfigDict):
        raise ValueError(f"config field {key!r} is a group; override one of its fields")
    value = None if text.strip() == "None" else _parse_value(text, like, f"--config.{key}")
    with node.unlocked():
        node[last] = value


def apply_overrides(config: ml_collections.ConfigDict, assignments: Iterable[str]) -> None:
    """Applies every `a.b=value` override in order."""
    for assignment in assignments:
        apply_override(config, assignment)
