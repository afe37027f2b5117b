"""lamd's real server mode (``LAMD_USE_SERVER=1``, lynguine's own server) against direct mode.

- cold: no server is running when the build starts; lamd's first ``mdfield`` starts one (its start-up is
  inside the build's wall time), and the study ends it after the build (SIGTERM by pid, so its trace is
  complete: it is traced into the build's run directory, having inherited the tracing environment).
- warm: the study starts one server before a talk's warm builds, the way lynguine's client does
  (``python -m lynguine.server --idle-timeout 300``, traced into its own run directory), waits until it
  answers, records how long that took (accounted before the builds), runs the builds, then ends it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from . import common as c
from .builds import Study

URL = "http://127.0.0.1:8765"


def ping(timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(URL + "/api/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_warm_server(study: Study, tag: str) -> tuple[subprocess.Popen[bytes], float, list[int]]:
    """Start a traced lynguine server; returns (the lynshim process, seconds until it answered, server pids)."""
    out = study.out / "traces" / "server-daemon"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            c.tool("lynshim"),
            "run",
            "-o",
            str(out),
            "--label",
            f"warm server|{tag}",
            "--",
            sys.executable,
            "-m",
            "lynguine.server",
            "--host",
            "127.0.0.1",
            "--port",
            "8765",
            "--idle-timeout",
            "300",
        ],
        env=c.env_with_venv(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=study.subject_dir(tag.split("|")[0]),
    )
    deadline = time.monotonic() + 60
    while not ping():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the lynguine server did not answer within 60 s")
        time.sleep(0.02)
    ready_s = time.perf_counter() - started
    return proc, ready_s, c.lynguine_servers()


def stop_warm_server(proc: subprocess.Popen[bytes], pids: list[int]) -> None:
    c.end_servers(pids)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
