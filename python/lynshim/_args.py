"""What a span records about a call: short, useful, and never a secret.

Each traced call gets its arguments by parameter name (defaults included, since a default config file
is still a file read), each as a short scalar: strings cut to ``MAX_ARG_CHARS``, paths inside the
working directory made relative, lists of strings joined, mappings reduced to the keys that say what is
read (``type``, ``filename``, ``directory``…), data frames to their shape, anything else to its type
name. Arguments whose names look like credentials are replaced by a marker, whatever their value.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from lynshim._native import schema

MAX_CHARS: int = schema.MAX_ARG_CHARS
REDACTED: str = schema.REDACTED
_CREDENTIAL_WORDS: tuple[str, ...] = tuple(schema.CREDENTIAL_WORDS)
#: Keys of a mapping argument worth recording (lynguine's ``details`` dicts, request payloads)…
DETAIL_KEYS = ("type", "filename", "directory", "glob", "source", "field", "name", "user_file")
#: …for parameters with these names only: other mappings (a talk's header fields, say) are data, not a
#: description of what is read, and are recorded by their size.
DETAIL_PARAMS = frozenset({"details", "data_source", "request_data", "source", "spec"})
_SKIP_PARAMS = frozenset({"self", "cls"})


def is_credential(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in _CREDENTIAL_WORDS)


def _short(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _path_or_text(text: str) -> str:
    # Only an absolute path can lie inside the working directory: getcwd (a system call) is asked only then.
    if text.startswith(os.sep):
        cwd = os.getcwd()
        if text.startswith(cwd) and (len(text) == len(cwd) or text[len(cwd)] == os.sep):
            text = os.path.relpath(text, cwd)
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


_SCALARS = (bool, int, float, type(None))


def describe_value(value: Any) -> Any:
    """One argument as a short JSON scalar."""
    kind = type(value)
    if kind is str:
        return _path_or_text(value)
    if kind in _SCALARS:
        return value
    if isinstance(value, str):
        return _path_or_text(str(value))
    if isinstance(value, os.PathLike):
        return _path_or_text(os.fspath(value))
    if isinstance(value, (list, tuple)):
        if len(value) <= 20 and all(isinstance(v, (str, os.PathLike)) for v in value):
            return _short(",".join(_path_or_text(os.fspath(v)) for v in value))
        return f"{type(value).__name__}[{len(value)}]"
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        return f"{type(value).__name__}({shape[0]}x{shape[1]})"
    if isinstance(value, dict):
        return f"dict[{len(value)}]"
    return type(value).__name__


class CallDescriber:
    """Describes the calls of one function. What does not change between calls — which parameters are
    credentials, how the defaults read — is worked out once, when the function is wrapped. (Defaults are
    described then: a function that mutates its own default list would be misreported.)"""

    __slots__ = ("_defaults", "_positional", "_redacted")

    def __init__(self, positional: tuple[str, ...], defaults: dict[str, Any]) -> None:
        self._positional = positional
        names = set(positional) | set(defaults)
        self._redacted = frozenset(name for name in names if is_credential(name))
        self._defaults = {
            name: (REDACTED if name in self._redacted else describe_value(value))
            for name, value in defaults.items()
            if name not in _SKIP_PARAMS
        }

    def _put(self, out: dict[str, Any], name: str, value: Any) -> None:
        if name in _SKIP_PARAMS:
            return
        if name in self._redacted or (name not in self._positional and is_credential(name)):
            out[name] = REDACTED
            return
        if name in DETAIL_PARAMS and type(value) is dict:
            found = False
            for key in DETAIL_KEYS:
                if key in value and key not in out:
                    out[key] = REDACTED if is_credential(key) else describe_value(value[key])
                    found = True
            if found:
                return
        out[name] = describe_value(value)

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        positional = self._positional
        for index, value in enumerate(args):
            self._put(out, positional[index] if index < len(positional) else f"arg{index}", value)
        for name, value in kwargs.items():
            self._put(out, name, value)
        for name, described in self._defaults.items():
            if name not in out and name not in kwargs:
                out[name] = described
        return out


def describe_call(
    params: tuple[str, ...],
    defaults: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The args of a call as a dict of short values, keyed by parameter name (one-off form)."""
    return CallDescriber(params, defaults)(args, kwargs)


def describe_result(result: Any) -> dict[str, Any] | None:
    """A cheap size of a result: rows of a data frame, length of a list or dict."""
    kind = type(result)
    if kind is str or kind in _SCALARS:
        return None
    shape = getattr(result, "shape", None)
    if isinstance(shape, tuple) and shape:
        return {schema.ARG_ROWS: shape[0]}
    if isinstance(result, (list, tuple, dict, set)):
        return {schema.ARG_RESULT: f"{type(result).__name__}[{len(result)}]"}
    return None
