"""Server mode, both ends: a flow arrow from each client request to the server span that handled it.

lynguine's ``ServerClient`` sends every request through its ``requests.Session``; while a traced client
method runs, that session carries one extra HTTP header, :data:`HEADER`, holding a flow id unique across
processes (pid and a counter), and the client span emits the flow's start. lynguine's server ignores
headers it does not know; its traced handler (``LynguineHandler.do_POST``/``do_GET``) reads the header
and emits the flow's end inside its own span, so Perfetto draws the arrow between the two processes.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import os

from lynshim import _native
from lynshim._native import schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

HEADER = "X-Lynshim-Flow"
_next = [0]


def client_request(args: "tuple[Any, ...]") -> "Callable[[], None] | None":
    """Inside a client span: start a flow and tag the client's HTTP session; returns the undo."""
    session = getattr(args[0], "_session", None) if args else None
    headers = getattr(session, "headers", None)
    if headers is None:
        return None
    _next[0] += 1
    flow_id = (os.getpid() << 24) | (_next[0] & 0xFFFFFF)
    _native.flow_out(flow_id)
    previous = headers.get(HEADER)
    headers[HEADER] = str(flow_id)

    def restore() -> None:
        if previous is None:
            headers.pop(HEADER, None)
        else:
            headers[HEADER] = previous

    return restore


def server_request(args: "tuple[Any, ...]") -> "dict[str, Any]":
    """Inside a server span: end the flow the request carries; returns args for the span."""
    handler = args[0] if args else None
    headers = getattr(handler, "headers", None)
    value = headers.get(HEADER) if headers is not None else None
    out: dict[str, Any] = {"path": str(getattr(handler, "path", ""))[:200]}
    if value and value.isdigit():
        _native.flow_in(int(value))
        out[schema.ARG_REQUEST_ID] = int(value)
    return out
