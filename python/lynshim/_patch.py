"""Transparent wrappers around the targets of :mod:`lynshim.targets`, applied as their modules load.

A wrapper is a native :class:`lynshim._native.TracedFunction`, updated as :func:`functools.wraps` does,
so ``__name__``, ``__qualname__``, ``__doc__``, ``__module__``, ``__dict__`` and ``__wrapped__`` are the
original's, :func:`inspect.signature` reports the original signature, and any other attribute is the
original's; it binds to instances as a function does. It passes every argument through, returns the
original's result and re-raises its exception unchanged (the traceback gains no frame).
Class attributes are replaced in the ``__dict__`` of the class that defines them, keeping their kind —
``classmethod`` stays a classmethod, ``staticmethod`` a staticmethod — so calls through subclasses and
aliases are traced, once. A class target wraps the class's own ``__init__``.

When tracing is off a wrapper costs one native call that calls straight through.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import os
import sys

from lynshim import _args, _flows, _lifecycle, _native, _state, targets
from lynshim._native import schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

_FunctionType = type(lambda: None)  # types.FunctionType, without importing types

# functools.update_wrapper's attribute list, copied here so that activating lynshim does not import
# functools (and collections) ahead of the traced program, which would hide their cost from its trace.
_WRAPPER_ASSIGNMENTS = ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__")

_MARK = "__lynshim_target__"
_by_module: "dict[str, list[targets.Target]] | None" = None
_missing: list[str] = []


def _targets_by_module() -> "dict[str, list[targets.Target]]":
    global _by_module
    if _by_module is None:
        table: dict[str, list[targets.Target]] = {}
        try:
            rows = targets.active_targets()
        except ValueError as err:
            print(f"lynshim: {err}; using the default targets", file=sys.stderr)
            rows = targets.DEFAULT_TARGETS
        for target in rows:
            table.setdefault(target.module, []).append(target)
        _by_module = table
    return _by_module


def _main_module_name() -> str | None:
    """The module this process runs with ``python -m``, if any (``lynguine.server`` for the server)."""
    argv = getattr(sys, "orig_argv", [])
    for i, word in enumerate(argv[1:-1], start=1):
        if word == "-m":
            return argv[i + 1]
        if not word.startswith("-"):
            return None
    return None


def _patch_main_then(serve: "Callable[..., Any]") -> "Callable[..., Any]":
    """``socketserver.BaseServer.serve_forever``, patching ``__main__``'s targets first.

    A module run with ``python -m`` executes as ``__main__``, from top to bottom, without an import
    the hook could follow; a server defines its handler class, then serves. Serving is the first moment
    after the class exists and before any request, so the targets of the module are patched there.
    """

    def serve_forever(*args: "Any", **kwargs: "Any") -> "Any":
        main = sys.modules.get("__main__")
        name = _main_module_name()
        if main is not None and name:
            _patch_module(main, _targets_by_module().get(name, []))
        return serve(*args, **kwargs)

    return _look_like(serve_forever, serve)


#: Modules that are not targets' own but that module_loaded acts on.
_WATCHED = frozenset(("threading", "socketserver"))


def watched_modules() -> set[str]:
    """Names of the modules :func:`module_loaded` may act on: the import hook calls it for these only."""
    return set(_WATCHED) | set(_targets_by_module())


def module_loaded(module: "ModuleType") -> None:
    """Patch the targets defined in ``module``, which has just finished executing."""
    name = getattr(module, "__name__", None) or ""
    if name == "threading":
        _lifecycle.threading_loaded(module)
    if name == "socketserver" and _targets_by_module().get(_main_module_name() or ""):
        server = getattr(module, "BaseServer", None)
        if server is not None and "serve_forever" in vars(server):
            server.serve_forever = _patch_main_then(vars(server)["serve_forever"])
    _patch_module(module, _targets_by_module().get(name))


def _patch_module(module: "ModuleType", rows: "list[targets.Target] | None") -> None:
    if not rows:
        return
    for target in rows:
        try:
            found = _patch_target(module, target)
        except Exception as err:  # noqa: BLE001 - a target we cannot patch is skipped, never fatal
            found = False
            _missing.append(f"{target.key} ({err!r})")
            continue
        if not found:
            _missing.append(target.key)
    if _missing:
        _report_missing()


def _report_missing() -> None:
    """Warn once per run (the first process to notice) about targets absent from installed code."""
    missing = list(_missing)
    _missing.clear()
    _native.instant("lynshim.missing-targets", schema.CAT_TRACER, {"targets": ", ".join(missing)})
    directory = os.environ.get(schema.ENV_DIR)
    if directory:
        try:
            fd = os.open(
                os.path.join(directory, ".warned-missing-targets"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600
            )
            os.close(fd)
        except OSError:
            return
    print(f"lynshim: not in the installed version, not traced: {', '.join(missing)}", file=sys.stderr)


def _patch_target(module: "ModuleType", target: "targets.Target") -> bool:
    parts = target.qualname.split(".")
    if len(parts) == 1 and parts[0].endswith("*"):
        prefix = parts[0][:-1]
        for attr, value in list(vars(module).items()):
            if attr.startswith(prefix) and isinstance(value, _FunctionType) and value.__module__ == module.__name__:
                _patch_attribute(module, attr, f"{target.module}.{attr}", target.category)
        return True
    owner: Any = module
    for part in parts[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return False
    attr = parts[-1]
    if isinstance(owner, type):
        owner = next((cls for cls in owner.__mro__ if attr in vars(cls)), None)
        if owner is None:
            return False
    elif attr not in vars(owner):
        return False
    value = vars(owner)[attr]
    if isinstance(value, type):
        if "__init__" not in vars(value):
            return False
        return _patch_attribute(value, "__init__", target.span_name, target.category)
    return _patch_attribute(owner, attr, target.span_name, target.category)


def _patch_attribute(owner: "Any", attr: str, span_name: str, category: str) -> bool:
    raw = vars(owner)[attr]
    if isinstance(raw, classmethod):
        inner = raw.__func__
        if getattr(inner, _MARK, None) is None:
            setattr(owner, attr, classmethod(wrap(inner, span_name, category)))
        return True
    if isinstance(raw, staticmethod):
        inner = raw.__func__
        if getattr(inner, _MARK, None) is None:
            setattr(owner, attr, staticmethod(wrap(inner, span_name, category)))
        return True
    if callable(raw):
        if getattr(raw, _MARK, None) is None:
            setattr(owner, attr, wrap(raw, span_name, category))
        return True
    return False


def _signature_facts(fn: "Callable[..., Any]") -> "tuple[tuple[str, ...], dict[str, Any], bool]":
    code = getattr(fn, "__code__", None)
    if code is None:
        return (), {}, False
    positional = tuple(code.co_varnames[: code.co_argcount])
    defaults: dict[str, Any] = {}
    if fn.__defaults__:
        defaults.update(zip(positional[-len(fn.__defaults__) :], fn.__defaults__, strict=False))
    if fn.__kwdefaults__:
        defaults.update(fn.__kwdefaults__)
    all_params = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return positional, defaults, "field" in all_params


def wrap(fn: "Callable[..., Any]", span_name: str, category: str) -> "Callable[..., Any]":
    """A transparent wrapper that records each call of ``fn`` as a span.

    The wrapper is native: calling it hands the arguments to the probe, which describes them, records
    the span, calls ``fn`` and describes its result, with no Python frame in between (a traced call
    must cost at most a few hundred nanoseconds more than the bare call). Server requests also carry a
    flow id, set around the call in Python (:mod:`lynshim._flows`).
    """
    positional, defaults, takes_field = _signature_facts(fn)
    probe = _native.Probe(span_name, category, fn, positional, defaults, takes_field, _args.describe_value)
    wrapper: Callable[..., Any]
    if category in (schema.CAT_SERVER_CLIENT, schema.CAT_SERVER):
        wrapper = _request_wrapper(fn, probe, category == schema.CAT_SERVER_CLIENT)
    else:
        wrapper = _native.TracedFunction(probe)
    _look_like(wrapper, fn)
    setattr(wrapper, _MARK, span_name)
    return wrapper


def _request_wrapper(fn: "Callable[..., Any]", probe: "Any", is_client: bool) -> "Callable[..., Any]":
    """A wrapper for either end of a server request: the client span starts a flow and sends its id with
    the request; the server span records the id it received and ends the flow."""
    begin = _native.probe_begin
    end = _native.probe_end
    state = _state

    def wrapper(*args: "Any", **kwargs: "Any") -> "Any":
        if not state.active:
            return fn(*args, **kwargs)
        token, asks_for_field = begin(probe, args, kwargs)
        undo = _flows.client_request(args) if is_client else None
        server_args = None if is_client else _flows.server_request(args)
        try:
            result = fn(*args, **kwargs)
        except BaseException as err:
            if undo is not None:
                undo()
            end(probe, token, asks_for_field, error=err, extra=server_args)
            raise
        if undo is not None:
            undo()
        end(probe, token, asks_for_field, result=result, extra=server_args)
        return result

    return wrapper


def _look_like(wrapper: "Callable[..., Any]", fn: "Callable[..., Any]") -> "Callable[..., Any]":
    """What :func:`functools.update_wrapper` does: the wrapper takes the original's names, doc and dict."""
    for attr in _WRAPPER_ASSIGNMENTS:
        try:
            setattr(wrapper, attr, getattr(fn, attr))
        except AttributeError:
            pass
    wrapper.__dict__.update(getattr(fn, "__dict__", {}))
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper
