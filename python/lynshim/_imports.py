"""The import hook: a span per module import, and patching of targets as soon as their module has run.

A finder placed first on ``sys.meta_path`` asks the finders behind it for the module's spec and, when
the import system (not ``importlib.util.find_spec``) is asking, opens a span named after the module in
category ``import`` and hands back the spec with a loader proxy. The proxy puts the real loader back on
the spec and the module before any module code runs, so ``__loader__`` and ``__spec__.loader`` are what
they would have been; it closes the span when the module has executed, and then patches the module's
targets (:mod:`lynshim._patch`). That is the earliest moment after the functions exist and before any
other module can copy them with ``from m import f``.

Spans cover finding, creating (where extension modules do their work) and executing the module, as
``python -X importtime`` does, and nest as the imports nest.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import sys

from lynshim import _native, _patch, _state
from lynshim._native import schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CAT_IMPORT = schema.CAT_IMPORT
_ARG_ERROR = schema.ARG_ERROR
_installed: "ImportTracer | None" = None


def _called_by_import_system() -> bool:
    # find_spec ← importlib._bootstrap._find_spec ← _find_and_load_unlocked, for a real import;
    # importlib.util.find_spec reaches _find_spec too, but only to ask, and must not open a span.
    try:
        caller = sys._getframe(3)
    except ValueError:
        return False
    return caller.f_code.co_name == "_find_and_load_unlocked"


class _TracingLoader:
    """Stands in for a module's loader between finding and executing it."""

    __slots__ = ("_loader", "_spec", "_token")

    def __init__(self, loader: "Any", spec: "Any", token: int) -> None:
        self._loader = loader
        self._spec = spec
        self._token = token

    def __getattr__(self, name: str) -> "Any":
        return getattr(self._loader, name)

    def create_module(self, spec: "Any") -> "Any":
        create = getattr(self._loader, "create_module", None)
        if create is None:
            return None
        try:
            return create(spec)
        except BaseException as err:
            self._close(err)
            raise

    def exec_module(self, module: "Any") -> None:
        loader = self._loader
        self._spec.loader = loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = loader
        try:
            loader.exec_module(module)
        except BaseException as err:
            self._close(err)
            raise
        self._close(None)
        # Most modules have no targets and are none of the few _patch watches for: one dict lookup.
        if _patch.interesting(module):
            _patch.module_loaded(module)

    def _close(self, err: BaseException | None) -> None:
        self._spec.loader = self._loader
        if self._token:
            _native.exit(self._token, {_ARG_ERROR: type(err).__name__} if err is not None else None)
            self._token = 0


class ImportTracer:
    """Meta path finder that times imports and triggers post-import patching."""

    def __init__(self, record_imports: bool) -> None:
        self.record_imports = record_imports

    def find_spec(self, fullname: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if not _called_by_import_system():
            return None
        token = _native.enter(fullname, _CAT_IMPORT) if (self.record_imports and _state.active) else 0
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        except BaseException as err:
            if token:
                _native.exit(token, {_ARG_ERROR: type(err).__name__})
            raise
        if spec is None or spec.loader is None:
            if token:
                _native.exit(token, {_ARG_ERROR: "ModuleNotFoundError"} if spec is None else None)
            return spec
        spec.loader = _TracingLoader(spec.loader, spec, token)
        return spec


def install(record_imports: bool = True) -> None:
    """Put the import tracer first on ``sys.meta_path`` (once) and patch modules already imported."""
    global _installed
    if _installed is None:
        _installed = ImportTracer(record_imports)
        sys.meta_path.insert(0, _installed)
    else:
        _installed.record_imports = record_imports
    for module in list(sys.modules.values()):
        if module is not None:
            _patch.module_loaded(module)
