"""lynshim: trace every Python process of a lamd build into Perfetto-ready Chrome traces.

``import lynshim`` activates tracing for this process when ``LYNSHIM_DIR`` is set (as ``lynshim run``
does for every process it starts) and otherwise does nothing. User code can also trace explicitly::

    import lynshim

    lynshim.start("traces")            # one trace file per process, in traces/
    with lynshim.span("build index", talk="talk.md"):
        ...

    @lynshim.span("render")
    def render(): ...

The native half lives in :mod:`lynshim._native`; see ``lynshim --help`` for ``lynshim run``.
"""

import os as _os
import sys as _sys

from lynshim import _state

# Nothing heavier than os is imported here: `import lynshim` must cost next to nothing when tracing is
# off, and whatever lynshim imports early would vanish from the traced program's own import spans. The
# native module (1.2 MB) is loaded only when something needs it: activation, or `lynshim.schema`,
# `lynshim.__version__` and the functions below (PEP 562 module __getattr__). No `from __future__ import
# annotations` either: it imports the __future__ module; the annotations below are strings instead.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from lynshim import _native as _native
    from lynshim._native import __version__, schema

    _F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["__version__", "is_active", "schema", "span", "start", "stop", "trace_path"]

#: ``schema.ENV_DIR``, spelt out so that deciding whether to activate needs no native module (a test
#: checks that the two agree).
_ENV_DIR = "LYNSHIM_DIR"


def __getattr__(name: str) -> "Any":
    if name in ("_native", "schema", "__version__"):
        # Not `from lynshim import _native`: that asks this package for the attribute, which is this.
        import lynshim._native  # noqa: F401 - loads the module into sys.modules, read below

        native = _sys.modules["lynshim._native"]
        return native if name == "_native" else getattr(native, name)
    raise AttributeError(f"module 'lynshim' has no attribute {name!r}")


def start(dir: "str | _os.PathLike[str] | None" = None, *, label: "str | None" = None) -> "str | None":
    """Start tracing this process; returns the trace file's path (None if it cannot be written).

    ``dir`` defaults to ``$LYNSHIM_DIR``, then ``./lynshim-traces``.
    """
    from lynshim import _activate
    from lynshim._native import schema

    directory = dir if dir is not None else _os.environ.get(schema.ENV_DIR) or "lynshim-traces"
    return _activate.activate(directory, run_id=_os.environ.get(schema.ENV_RUN_ID), label=label)


def stop() -> None:
    """Stop tracing this process and close its trace file."""
    from lynshim import _activate

    _activate.deactivate()


def is_active() -> bool:
    """Is this process being traced?"""
    if not _state.active:
        return False
    from lynshim import _native

    return _native.is_active()


def trace_path() -> "str | None":
    """Path of this process's trace file, while tracing."""
    from lynshim import _native

    return _native.trace_path()


class span:
    """A span of user code: a context manager, or a decorator that traces each call.

    ``lynshim.span(name, rss=False, **args)``: ``args`` are recorded on the span (credential-like names
    are redacted); ``rss=True`` samples memory at its start and end. When tracing is off it does nothing.
    """

    __slots__ = ("_args", "_name", "_rss", "_tokens")

    def __init__(self, name: str, /, *, rss: bool = False, **args: "Any") -> None:
        self._name = name
        self._rss = rss
        self._args = args
        self._tokens: list[int] = []

    def __enter__(self) -> "span":
        if _state.active:
            from lynshim import _args, _native
            from lynshim._native import schema

            described = {
                k: (_args.REDACTED if _args.is_credential(k) else _args.describe_value(v))
                for k, v in self._args.items()
            }
            if self._rss:
                _native.sample_rss()
            self._tokens.append(_native.enter(self._name, schema.CAT_USER, described))
        else:
            self._tokens.append(0)
        return self

    def __exit__(self, exc_type: "type[BaseException] | None", exc: "BaseException | None", tb: "Any") -> None:
        token = self._tokens.pop() if self._tokens else 0
        if token:
            from lynshim import _native
            from lynshim._native import schema

            _native.exit(token, {schema.ARG_ERROR: exc_type.__name__} if exc_type is not None else None)
            if self._rss:
                _native.sample_rss()

    def __call__(self, fn: "_F") -> "_F":
        import functools

        name, rss, args = self._name, self._rss, self._args

        @functools.wraps(fn)
        def traced(*a: "Any", **kw: "Any") -> "Any":
            with span(name, rss=rss, **args):
                return fn(*a, **kw)

        return traced  # type: ignore[return-value]


if _os.environ.get(_ENV_DIR) and not _state.active:
    from lynshim import _activate as _activate_module

    # Imported by the bootstrap sitecustomize: it noted when the import began, to time lynshim's own cost.
    _activate_module.activate_from_env(
        import_started_ns=getattr(_sys.modules.get("sitecustomize"), "_import_started_ns", None)
    )
