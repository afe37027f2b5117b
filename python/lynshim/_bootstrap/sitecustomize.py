"""lynshim's bootstrap: activates tracing in every Python process started under ``lynshim run``.

``lynshim run`` puts this directory first on ``PYTHONPATH``, so ``site`` imports this file as
``sitecustomize`` in every Python process of the command's tree. It activates lynshim when this
interpreter can import it (another venv's Python just runs, untraced), then hands over to the next
``sitecustomize`` on ``sys.path``, if any, so a user's own site customisation still runs.
"""

import time as _time

_import_started_ns = _time.monotonic_ns()


def _activate():
    try:
        import lynshim._activate as activate
    except ImportError:
        return
    try:
        activate.activate_from_env(import_started_ns=_import_started_ns)
    except Exception as err:  # noqa: BLE001 - the traced program must start whatever happens here
        import sys

        print(f"lynshim: tracing is off for this process ({err!r})", file=sys.stderr)


def _chain_next_sitecustomize():
    import importlib.machinery
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = type(sys)("sitecustomize")
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_activate()
_chain_next_sitecustomize()
