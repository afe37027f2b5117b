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
from pathlib import Path
from typing import Any

from . import common as c
from .builds import Study, build

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
    proc = subprocess.Popen([c.tool("lynshim"), "run", "-o", str(out), "--label", f"warm server|{tag}", "--",
                             sys.executable, "-m", "lynguine.server", "--host", "127.0.0.1", "--port", "8765",
                             "--idle-timeout", "300"],
                            env=c.env_with_venv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=study.subject_dir(tag.split("|")[0]))
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


def run_server(study: Study, talks: list[str] | None = None, formats: list[str] | None = None) -> dict[str, Any]:
    """Cold- and warm-server builds of every talk × format, ``study.runs`` times each."""
    talks = talks or study.talks
    formats = formats or study.formats
    leftover = c.lynguine_servers()
    if leftover:
        c.log(f"ending {len(leftover)} lynguine server(s) left from before the study: {leftover}")
        c.end_servers(leftover)
    env = {"LAMD_USE_SERVER": "1"}
    records: list[dict[str, Any]] = []
    warm_starts: list[dict[str, Any]] = []
    for talk in talks:
        for fmt in formats:
            for i in range(study.runs):
                assert not c.lynguine_servers(), "a server is running before a cold build"
                rec = build(study, talk, fmt, mode="server-cold", run_no=i + 1, extra_env=env)
                c.log(f"server-cold {talk} {fmt} #{i + 1}: {rec['wall_us'] / 1e6:.2f} s, "
                      f"servers started and ended: {rec['servers_started']}")
                records.append(rec)
            proc, ready_s, pids = start_warm_server(study, f"{talk}|{fmt}")
            warm_starts.append({"talk": talk, "format": fmt, "ready_us": ready_s * 1e6, "pids": pids})
            try:
                for i in range(study.runs):
                    rec = build(study, talk, fmt, mode="server-warm", run_no=i + 1, extra_env=env,
                                keep_servers=True)
                    rec["server_ready_us_before_build"] = ready_s * 1e6
                    c.log(f"server-warm {talk} {fmt} #{i + 1}: {rec['wall_us'] / 1e6:.2f} s")
                    records.append(rec)
            finally:
                stop_warm_server(proc, pids)
    left = c.lynguine_servers()
    if left:
        c.end_servers(left)
    return {"records": records, "warm_server_starts": warm_starts, "servers_left_running": c.lynguine_servers()}
