"""What a span records about a value: short, useful, and never a secret.

A traced call's arguments are described by its native probe (``crates/lynshim/src/probe.rs``), which
holds the rules for parameter names, defaults, credentials and ``details`` mappings, and describes the
common values itself; everything else — absolute paths (made relative to the working directory), path
objects, lists of paths, data frames, other objects — comes here, to :func:`describe_value`. Spans
opened with :func:`lynshim.span` describe their keyword arguments here too.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import os

from lynshim._native import schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_CHARS: int = schema.MAX_ARG_CHARS
REDACTED: str = schema.REDACTED
_CREDENTIAL_WORDS: tuple[str, ...] = tuple(schema.CREDENTIAL_WORDS)


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
    return _short(text)


_SCALARS = (bool, int, float, type(None))


def describe_value(value: "Any") -> "Any":
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
