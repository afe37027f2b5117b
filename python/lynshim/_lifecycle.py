"""The phases of a traced Python process after activation: main program, GC, atexit, teardown.

A process's time is accounted by the spans that cover it; without these, everything a process does
outside an import or a lynguine/lamd call — the script's own code, garbage collections, the ``atexit``
handlers and the interpreter's teardown — was one "unattributed" lump, a fifth of a lamd process. So:

- ``main program`` (category ``program``) opens on the main thread when activation ends and closes when
  the program's ``__main__`` is done: at the start of ``threading``'s shutdown, which CPython runs before
  the ``atexit`` handlers (registered through ``threading._register_atexit`` as soon as ``threading`` is
  imported; never imported by lynshim itself, which would hide its cost), or, failing that, when
  lynshim's own ``atexit`` handler runs. Imports and calls nest inside it; its self time is the script's
  own code. Memory is sampled there ("after operations").
- ``atexit handlers`` (category ``atexit``) from then until lynshim's ``atexit`` handler, which runs last
  (registered first). It includes waiting for non-daemon threads.
- one ``gc`` span per collection (category ``gc``), through :data:`gc.callbacks` (the native
  ``_native.on_gc``), with the generation at its begin and the objects collected and found
  uncollectable at its end.
- ``lynshim writing`` and ``interpreter teardown`` are recorded by the native exit handler (it alone sees
  the end of finalisation).
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import gc
import sys

from lynshim import _native, _state
from lynshim._native import schema

_main_token = 0
_atexit_token = 0
_installed = False


def install() -> None:
    """End lynshim's activation, open the main program span and install the GC callback (once)."""
    global _installed
    _native.activated()
    begin_main_program()
    if _installed:
        return
    _installed = True
    gc.callbacks.append(_native.on_gc)
    threading = sys.modules.get("threading")
    if threading is not None:
        threading_loaded(threading)


def begin_main_program() -> None:
    """Open ``main program`` on the main thread (at activation, and in a forked child)."""
    global _main_token, _atexit_token
    _atexit_token = 0
    threading = sys.modules.get("threading")
    if threading is not None and threading.current_thread() is not threading.main_thread():
        _main_token = 0
        return
    _main_token = _native.enter(schema.EVENT_MAIN_PROGRAM, schema.CAT_PROGRAM)


def threading_loaded(threading: object) -> None:
    """``threading`` has been imported: be called back when its shutdown begins."""
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        return
    try:
        register(main_program_ended)
    except RuntimeError:  # already shutting down
        pass


def main_program_ended() -> None:
    """The program's ``__main__`` is done: close ``main program``, open ``atexit handlers``."""
    global _main_token, _atexit_token
    if not _main_token or not _state.active:
        return
    _native.exit(_main_token)
    _main_token = 0
    _native.sample_rss(schema.MOMENT_AFTER_OPERATIONS)
    _atexit_token = _native.enter(schema.EVENT_ATEXIT, schema.CAT_ATEXIT)


def python_exiting() -> None:
    """lynshim's ``atexit`` handler, the last to run: close whichever phase is still open."""
    global _atexit_token
    main_program_ended()
    if _atexit_token:
        _native.exit(_atexit_token)
        _atexit_token = 0
