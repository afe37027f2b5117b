"""The build schedule: every variant of a talk/format is built once per round, rounds repeated RUNS times,
so that the machine's slow drifts (another engineer's compile, say) fall on every variant alike instead of on
whichever ran during them. Per round, for each talk × format:

    untraced → direct → [no-teardown → lazy-imports → one-blas-thread] → server-cold → (server started) server-warm →
    thin-client → (server ended)

Formats outside VARIANT_FORMATS get direct builds only. ``make -j2`` builds of the largest talk follow.
"""

from __future__ import annotations

from typing import Any

from . import common as c
from .builds import Study, build, build_untraced
from .quickwins import make_shims
from .server import start_warm_server, stop_warm_server

SERVER_ENV = {"LAMD_USE_SERVER": "1"}


def say(rec: dict[str, Any]) -> None:
    extra = f", servers started and ended: {rec['servers_started']}" if rec.get("servers_started") else ""
    procs = f", {rec['traced_processes']} traced processes" if rec.get("traced_processes") is not None else ""
    c.log(
        f"{rec['mode']} {rec['talk']} {rec['format']} #{rec['run']}: {rec['wall_us'] / 1e6:.2f} s{procs}, "
        f"make {'ok' if rec['make_ok'] else 'FAILED: ' + str(rec['make_errors'][:1])}{extra}"
    )


def run_schedule(
    study: Study, *, variant_formats: list[str], server: bool, quickwins: bool, lazy: list[str], jobs_talk: str | None
) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    warm_starts: list[dict[str, Any]] = []
    shims = {}
    if quickwins:
        shims["no-teardown"] = make_shims(study.out, "no-teardown", lazy)
        if lazy:
            shims["lazy-imports"] = make_shims(study.out, "lazy-imports", lazy)
        shims["one-blas-thread"] = make_shims(study.out, "one-blas-thread", lazy)
        shims["thin-client"] = make_shims(study.out, "thin-client", lazy)
    leftover = c.lynguine_servers()
    if leftover:
        c.log(f"ending lynguine server(s) running before the builds: {leftover}")
        c.end_servers(leftover)

    def add(rec: dict[str, Any]) -> None:
        say(rec)
        records.append(rec)

    for i in range(1, study.runs + 1):
        for talk in study.talks:
            for fmt in study.formats:
                variants = fmt in variant_formats
                if variants:
                    add(build_untraced(study, talk, fmt, run_no=i))
                add(build(study, talk, fmt, mode="direct", run_no=i))
                if not variants:
                    continue
                for name in ("no-teardown", "lazy-imports", "one-blas-thread"):
                    if name in shims:
                        add(build(study, talk, fmt, mode=f"quickwin:{name}", run_no=i, path_prefix=shims[name]))
                if server:
                    assert not c.lynguine_servers(), "a server is running before a cold build"
                    add(build(study, talk, fmt, mode="server-cold", run_no=i, extra_env=SERVER_ENV))
                if server or "thin-client" in shims:
                    proc, ready_s, pids = start_warm_server(study, f"{talk}|{fmt}|{i}")
                    warm_starts.append({"talk": talk, "format": fmt, "run": i, "ready_us": ready_s * 1e6, "pids": pids})
                    try:
                        if server:
                            rec = build(
                                study, talk, fmt, mode="server-warm", run_no=i, extra_env=SERVER_ENV, keep_servers=True
                            )
                            rec["server_ready_us_before_build"] = ready_s * 1e6
                            add(rec)
                        if "thin-client" in shims:
                            rec = build(
                                study,
                                talk,
                                fmt,
                                mode="quickwin:thin-client",
                                run_no=i,
                                extra_env=SERVER_ENV,
                                path_prefix=shims["thin-client"],
                                keep_servers=True,
                            )
                            rec["server_ready_us_before_build"] = ready_s * 1e6
                            add(rec)
                    finally:
                        stop_warm_server(proc, pids)
    if jobs_talk:
        for i in range(1, study.runs + 1):
            for fmt in variant_formats:
                add(build(study, jobs_talk, fmt, mode="direct-j2", run_no=i, make_args="-j2"))
    left = c.lynguine_servers()
    if left:
        c.end_servers(left)
    return {"records": records, "warm_server_starts": warm_starts, "servers_left_running": c.lynguine_servers()}
