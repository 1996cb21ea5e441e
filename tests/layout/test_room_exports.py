"""The lazily loading room packages (core/<room>/__init__.py) spell `__all__` out for linters and type
checkers; it must name exactly what their `__getattr__` can load, and every name must load."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import tritonpy.core

ROOMS = sorted(m.name for m in pkgutil.iter_modules(tritonpy.core.__path__) if m.ispkg)


@pytest.mark.parametrize("room", ROOMS)
def test_all_matches_the_lazy_exports(room):
    package = importlib.import_module(f"tritonpy.core.{room}")
    exports = getattr(package, "_EXPORTS", None)
    if exports is None:
        pytest.skip(f"core/{room} imports its names eagerly")
    assert sorted(package.__all__) == sorted(exports)
    for name in package.__all__:
        assert getattr(package, name) is not None
