"""Register encdec's model classes with transformers' Auto classes once transformers is imported, not before.

Code that builds or loads a model imports `encdec.cross_attention` / `encdec.prefix_attention`, which register
themselves. This module keeps older user code working, which does `import encdec` and then
`AutoModelForSeq2SeqLM.from_pretrained(export)` with nothing else of encdec: `import encdec` must stay free of torch
and transformers (a report or a run-folder check needs neither), so the registration waits for transformers to
finish importing, by a finder on `sys.meta_path` that wraps the loaders of the few modules it watches.

Stdlib only: `import encdec` imports this module.
"""

from __future__ import annotations

import importlib
import sys
import warnings

# The module whose import registers every encdec class (it imports cross_attention, which registers the decoder).
REGISTERING = "encdec.prefix_attention"
# transformers: register when it is ready. cross_attention and prefix_attention: a registration that waits while one
# of them is mid-import (transformers was first imported by it) runs when it finishes, instead of importing the other
# into a half-made module.
WATCHED = ("transformers", "encdec.cross_attention", REGISTERING)

_executing: set[str] = set()


def install() -> None:
    """Register now when transformers is already imported, else when it is. Idempotent."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def register() -> None:
    """Import the registering module; a failure is one warning, never a failed import of transformers."""
    _uninstall()
    try:
        importlib.import_module(REGISTERING)
        importlib.import_module("encdec.pairings").import_all()  # every other pairing kind's classes
    except Exception as error:  # noqa: BLE001 - whatever breaks, the user's own import of transformers goes on
        warnings.warn(
            f"encdec could not register its models with transformers' Auto classes ({type(error).__name__}: "
            f"{error}); import encdec.prefix_attention before from_pretrained to see why",
            stacklevel=2,
        )


def _after(name: str) -> None:
    if name == REGISTERING:  # it registered everything at its end
        _uninstall()
    elif not _executing & {"encdec.cross_attention", REGISTERING}:
        register()


def _uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _AfterImport)]


class _AfterImport:  # importlib.abc's bases would cost more import time than all of encdec
    """Finds a watched module as the other finders would, with a loader that calls `_after` once it is executed."""

    def find_spec(self, name, path, target=None):
        if name not in WATCHED:
            return None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CallingBack(spec.loader, spec)
                return spec
        return None


class _CallingBack:
    def __init__(self, loader, spec):
        self.loader, self.spec = loader, spec

    def __getattr__(self, attribute):  # get_source, get_resource_reader, ... as the real loader answers them
        return getattr(self.loader, attribute)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        name = self.spec.name
        _executing.add(name)
        try:
            self.loader.exec_module(module)
        finally:
            _executing.discard(name)
            # The module (transformers swaps itself for a lazy module that keeps the spec) keeps the real loader.
            self.spec.loader = self.loader
            for made in (module, sys.modules.get(name)):
                if getattr(made, "__loader__", None) is self:
                    made.__loader__ = self.loader
        _after(name)
