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
#: Keys of a mapping argument worth recording (lynguine's ``details`` dicts, request payloads).
DETAIL_KEYS = ("type", "filename", "directory", "glob", "source", "field", "name", "user_file")
_SKIP_PARAMS = frozenset({"self", "cls"})


def is_credential(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in _CREDENTIAL_WORDS)


def _short(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _path_or_text(text: str, cwd: str) -> str:
    if text.startswith(cwd) and (len(text) == len(cwd) or text[len(cwd)] == os.sep):
        text = os.path.relpath(text, cwd)
    return _short(text)


def describe_value(value: Any, cwd: str) -> Any:
    """One argument as a short JSON scalar."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _path_or_text(value, cwd)
    if isinstance(value, os.PathLike):
        return _path_or_text(os.fspath(value), cwd)
    if isinstance(value, (list, tuple)):
        if len(value) <= 20 and all(isinstance(v, (str, os.PathLike)) for v in value):
            return _short(",".join(_path_or_text(os.fspath(v), cwd) for v in value))
        return f"{type(value).__name__}[{len(value)}]"
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        return f"{type(value).__name__}({shape[0]}x{shape[1]})"
    if isinstance(value, dict):
        return f"dict[{len(value)}]"
    return type(value).__name__


def describe_call(
    params: tuple[str, ...],
    defaults: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The args of a call as a dict of short values, keyed by parameter name."""
    cwd = os.getcwd()
    out: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if name in _SKIP_PARAMS:
            return
        if is_credential(name):
            out[name] = REDACTED
            return
        if isinstance(value, dict):
            details = {k: value[k] for k in DETAIL_KEYS if k in value}
            if details:
                for key, detail in details.items():
                    out[key] = REDACTED if is_credential(key) else describe_value(detail, cwd)
                return
        out[name] = describe_value(value, cwd)

    for name, value in zip(params, args):
        put(name, value)
    for index in range(len(params), len(args)):
        put(f"arg{index}", args[index])
    for name, value in kwargs.items():
        put(name, value)
    for name, value in defaults.items():
        if name not in out and name not in kwargs and name not in params[: len(args)]:
            put(name, value)
    return out


def describe_result(result: Any) -> dict[str, Any] | None:
    """A cheap size of a result: rows of a data frame, length of a list or dict."""
    shape = getattr(result, "shape", None)
    if isinstance(shape, tuple) and shape:
        return {schema.ARG_ROWS: shape[0]}
    if isinstance(result, (list, tuple, dict, set)):
        return {schema.ARG_RESULT: f"{type(result).__name__}[{len(result)}]"}
    return None
