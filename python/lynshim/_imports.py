"""The import hook: a span per module import, and patching of targets as soon as their module has run.

CPython loads every module that is not yet in ``sys.modules`` through
``importlib._bootstrap._find_and_load_unlocked``, looked up as a global of ``importlib._bootstrap`` on
each import. :func:`install` puts a native :class:`lynshim._native.ImportHook` there, which calls the
original inside a span named after the module, in category ``import``, and then, for the modules
:mod:`lynshim._patch` acts on, patches the module's targets: the earliest moment after the functions
exist and before any other module can copy them with ``from m import f``. The imports of every other
module run no Python code of lynshim's (the crate's ``imports.rs`` says how, and why it is faithful).

Spans cover finding, creating (where extension modules do their work) and executing the module, as
``python -X importtime`` does, and nest as the imports nest; a failed import records its exception's
type as ``error``. Finders, loaders, ``__loader__`` and ``__spec__`` are untouched, and
``importlib.util.find_spec``, which only asks, opens no span.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import sys

from lynshim import _native, _patch

_installed: "_native.ImportHook | None" = None


def install(record_imports: bool = True) -> None:
    """Put the import hook in place (once) and patch the modules already imported."""
    global _installed
    if _installed is None:
        bootstrap = sys.modules["_frozen_importlib"]
        # A private name of CPython's: a Python without it gets no import spans and no patching (said
        # once), and the rest of tracing is set up as usual.
        find_and_load_unlocked = getattr(bootstrap, "_find_and_load_unlocked", None)
        if find_and_load_unlocked is None:
            print(
                f"lynshim: import spans and patching are off on this Python {sys.version.split()[0]} (its "
                "importlib lacks _find_and_load_unlocked); the rest is traced",
                file=sys.stderr,
            )
            return
        _installed = _native.ImportHook(
            find_and_load_unlocked,
            sys,
            _patch.watched_modules(),
            _patch.module_loaded,
            record_imports,
        )
        bootstrap._find_and_load_unlocked = _installed
    else:
        _installed.set_record_imports(record_imports)
    for module in list(sys.modules.values()):
        if module is not None:
            _patch.module_loaded(module)
