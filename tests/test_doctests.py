"""Every example in a docstring runs and prints what it shows (all modules of the package)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import vigie


def _modules() -> list[str]:
    names = ["vigie"]
    for info in pkgutil.walk_packages(vigie.__path__, "vigie."):
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"
