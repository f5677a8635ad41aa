"""Names a package imports on first use (PEP 562), so importing the package loads none of their modules."""

from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, names: dict[str, str]):
    """The `__getattr__` and `__dir__` of `package`, whose `names` (name -> the module that defines it) are imported
    when first read, then kept in the package like any other attribute."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return __getattr__, __dir__
