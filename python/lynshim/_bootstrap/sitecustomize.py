"""lynshim's bootstrap: activates tracing in every Python process started under ``lynshim run``.

``lynshim run`` puts this directory first on ``PYTHONPATH``, so ``site`` imports this file as
``sitecustomize`` in every Python process of the command's tree. It activates lynshim when this
interpreter can import it (another venv's Python just runs, untraced), then hands over to the next
``sitecustomize`` on ``sys.path``, if any, so a user's own site customisation still runs. Then it takes its
own directory off ``sys.path`` (``PYTHONPATH`` keeps it, for child processes): the program sees the
``sys.path`` an untraced run has, and its imports no longer look in one more directory first.

lynshim's own modules are imported with bytecode writing allowed, whatever ``PYTHONDONTWRITEBYTECODE``
says: without their ``.pyc`` (an editable install under that variable, as here) every traced process
compiled lynshim from source again, 15-25 ms of its start-up. Only lynshim's modules are imported in
that window (it imports nothing else at activation), so the program's own bytecode policy is untouched.
"""

import sys as _sys
import time as _time

_import_started_ns = _time.monotonic_ns()


def _activate():
    dont_write = _sys.dont_write_bytecode
    _sys.dont_write_bytecode = False
    try:
        import lynshim._activate as activate
    except ImportError:
        return  # not installed for this interpreter: it runs untraced, as lynshim run's docs say
    except Exception as err:  # noqa: BLE001 - e.g. a Python half and a native module of two builds
        print(f"lynshim: tracing is off for this process (lynshim cannot load: {err!r})", file=_sys.stderr)
        return
    finally:
        _sys.dont_write_bytecode = dont_write
    try:
        activate.activate_from_env(import_started_ns=_import_started_ns)
    except Exception as err:  # noqa: BLE001 - the traced program must start whatever happens here
        print(f"lynshim: tracing is off for this process ({err!r})", file=_sys.stderr)


def _chain_next_sitecustomize():
    import os

    # The path finder the import system itself uses (importlib.machinery would import importlib and
    # warnings into every traced process, ahead of the program).
    path_finder = _sys.modules["_frozen_importlib_external"].PathFinder
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in _sys.path if os.path.abspath(p or os.curdir) != here]
    for entry in set(_sys.path) - set(rest):
        _sys.path_importer_cache.pop(entry, None)
    _sys.path[:] = rest
    spec = path_finder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = type(_sys)("sitecustomize")
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    _sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_activate()
_chain_next_sitecustomize()
