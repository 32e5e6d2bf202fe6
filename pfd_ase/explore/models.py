"""How a walker gets its calculator: the model spec, built once per process and thread."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class _Model:
    """How a walker gets its calculator; picklable when ``obj`` is."""

    kind: str  # "labeler", "pfd", "object" or "factory"
    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    obj: Any = None
    key: Any = None


def _parse_model(model: Any, symbols: Iterable[str]) -> _Model:
    """Check the model spec (cheaply) and describe it."""
    from pfd_ase.calculators.labelers import (
        _canonical_name,
        _jsonable,
        check_labeler,
        is_calculator,
        labeler_info,
    )

    if isinstance(model, str):
        model = (model, {})
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], str):
        name, options = model[0].strip().lower(), dict(model[1] or {})
        if name == "pfd":
            if "model" not in options:
                raise ValueError('a ("pfd", options) model needs options["model"], a model path')
            paths = options["model"]
            paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
            for path in paths:
                if not Path(path).exists():
                    raise FileNotFoundError(f"model file {path} does not exist")
            key = {"pfd": _jsonable(options)}
            return _Model("pfd", name, options, key=key)
        name = _canonical_name(name)  # ValueError for unknown names
        options.pop("directory", None)
        check_labeler(name, symbols, options)
        return _Model("labeler", name, options, key={"name": name, "options": _jsonable(options)})
    if is_calculator(model):
        return _Model("object", obj=model, key={"object": labeler_info(model)})
    if callable(model):
        return _Model("factory", obj=model, key={"factory": _callable_key(model)})
    raise TypeError(
        "model must be a labeler name, a (name, options) pair, ('pfd', {'model': path, ...}), "
        f"a calculator object or a calculator factory, not {type(model).__name__}"
    )


def _callable_key(func: Any) -> Any:
    import functools

    from pfd_ase.calculators.labelers import _jsonable

    if isinstance(func, functools.partial):
        return {
            "func": _callable_key(func.func),
            "args": _jsonable(list(func.args)),
            "kwargs": _jsonable(dict(func.keywords)),
        }
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


_LOCAL = threading.local()


def _cache() -> dict[str, Any]:
    if not hasattr(_LOCAL, "built"):
        _LOCAL.built = {}
    return _LOCAL.built


def _build(model: _Model) -> Any:
    if model.kind == "object":
        return model.obj
    if model.kind == "factory":
        return model.obj()
    if model.kind == "pfd":
        from pfd_ase.calculators.pfd import PFDCalculator

        return PFDCalculator(**model.options)
    from pfd_ase.calculators.labelers import make_labeler

    return make_labeler(model.name, **model.options)


@contextmanager
def _calculator(model: _Model) -> Iterator[Any]:
    """The walker's calculator: built once per process and thread (one kept), reset."""
    if model.kind == "object":
        calc = model.obj
    else:
        try:
            key = json.dumps([model.kind, model.key], sort_keys=True)
        except TypeError:
            key = None
        cache = _cache()
        if key is not None and key in cache:
            calc = cache[key]
        else:
            cache.clear()
            calc = _build(model)
            if key is not None:
                cache[key] = calc
    if callable(getattr(calc, "reset", None)):
        calc.reset()
    yield calc
