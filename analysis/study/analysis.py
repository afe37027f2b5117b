"""Reading one traced build: lynanalyze's JSON report, trimmed to what the study reports, with a fallback
computed from the traces for what this lynanalyze does not (yet) provide (each value says its source).

The fallback attribution of a build's wall time: every Python process's lifetime is cut into labelled
segments by its innermost open span (start-up, imports, lynguine work, lamd work, gc, atexit, the rest);
the build's wall clock is swept, and each instant goes to the non-root Python processes running then
(split evenly when several are), else to the root (``maketalk``): its time waiting in ``make`` is
"other programs (make, gpp, pandoc) / waiting", and outside every Python process it is "outside Python".
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lynshim._native import schema

from . import common as c

# The study's phase labels of a process's time, by the category of its innermost open span (lynguine's
# calls, of every other category, are "lynguine work").
PHASE_OF_CATEGORY = {
    schema.CAT_IMPORT: "imports",
    schema.CAT_LAMD: "lamd work",
    schema.CAT_STARTUP: "python start-up",
    schema.CAT_TRACER: "lynshim",
    schema.CAT_PROGRAM: "main program",
    schema.CAT_GC: "gc",
    schema.CAT_ATEXIT: "atexit",
    schema.CAT_TEARDOWN: "teardown",
    schema.CAT_SERVER: "server",
    schema.CAT_PROCESS: "other program",
}
# Categories of spans that are not calls of lamd or lynguine (the process's life, lynshim's own).
NOT_CALLS = {
    schema.CAT_IMPORT,
    schema.CAT_STARTUP,
    schema.CAT_TRACER,
    schema.CAT_PROGRAM,
    schema.CAT_GC,
    schema.CAT_ATEXIT,
    schema.CAT_MEMORY,
    schema.CAT_TEARDOWN,
}


def label_of(cat: str | None) -> str:
    return PHASE_OF_CATEGORY.get(cat or "", "lynguine work")


def process_facts(trace: Path) -> dict[str, Any]:
    events = c.load_events(trace)
    meta = c.process_meta(events)
    exit_args = next((e.get("args", {}) for e in events if e.get("name") == schema.EVENT_EXIT), {})
    zero_us = meta.get(schema.ARG_WALL_ZERO_NS, 0) / 1e3
    tid = meta.get(schema.ARG_PID)
    segs: list[tuple[float, float, str]] = []
    stack: list[tuple[str, str]] = []
    cursor = 0.0
    end = 0.0
    calls: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    config_reads: Counter[str] = Counter()
    rss = []
    peak = exit_args.get(schema.ARG_PEAK_RSS_BYTES)

    def current() -> str:
        if not stack:
            return "rest"
        return label_of(stack[-1][0])

    for e in events:
        ts = float(e.get("ts", 0.0))
        ph = e.get("ph")
        end = max(end, ts + float(e.get("dur", 0.0) or 0.0))
        if ph == "C" and e.get("name") == schema.EVENT_RSS:
            rss.append((ts, e["args"].get(schema.ARG_BYTES)))
        if e.get("tid") != tid:
            continue
        if ph in ("B", "X"):
            # A call begins: a `B`, or an `X` for a call written whole (one with nothing recorded inside it).
            cat = e.get("cat") or ""
            if cat not in NOT_CALLS:
                calls[e.get("name", "")] += 1
                cats[cat] += 1
            if cat == schema.CAT_CONFIG:
                for v in (e.get("args") or {}).values():
                    if isinstance(v, str) and (".yml" in v or ".yaml" in v):
                        config_reads[v] += 1
        if ph == "X" and e.get("cat") != schema.CAT_MEMORY and (e.get("dur") or 0) > 0:
            if ts > cursor:
                segs.append((cursor, ts, current()))
            segs.append((max(ts, cursor), ts + e["dur"], label_of(e.get("cat"))))
            cursor = max(cursor, ts + e["dur"])
        elif ph == "B":
            if ts > cursor:
                segs.append((cursor, ts, current()))
                cursor = ts
            stack.append((e.get("cat") or "", e.get("name") or ""))
        elif ph == "E" and stack:
            if ts > cursor:
                segs.append((cursor, ts, current()))
                cursor = ts
            stack.pop()
    if end > cursor:
        segs.append((cursor, end, current()))
    return {
        "pid": meta.get(schema.ARG_PID),
        "ppid": meta.get(schema.ARG_PPID),
        "command": meta.get(schema.ARG_COMMAND) or trace.name,
        "lamd_command": meta.get(schema.ARG_LAMD_COMMAND),
        "source": meta.get(schema.ARG_SOURCE, schema.SOURCE_PYTHON),
        "start_us": zero_us,
        "end_us": zero_us + end,
        "wall_us": end,
        "segments": [(zero_us + a, zero_us + b, l) for a, b, l in segs if b > a],
        "calls": dict(calls),
        "call_categories": dict(cats),
        "config_reads": dict(config_reads),
        "rss_samples": [b for _, b in rss],
        "peak_rss_bytes": peak,
        "exit_status": exit_args.get(schema.ARG_EXIT_STATUS),
    }


def attribute(run_dir: Path, procs: list[dict[str, Any]]) -> dict[str, Any]:
    record = json.loads((run_dir / "run.json").read_text())
    t0, t1 = record["start_unix_ns"] / 1e3, record["end_unix_ns"] / 1e3
    pids = {p["pid"] for p in procs}
    roots = [p for p in procs if p["ppid"] not in pids]
    root_pids = {p["pid"] for p in roots if p.get("lamd_command") == "maketalk"} or {p["pid"] for p in roots}
    python = [p for p in procs if p.get("source", "python") != "exec"]
    bounds = {t0, t1}
    for p in python:
        for a, b, _ in p["segments"]:
            bounds.add(min(max(a, t0), t1))
            bounds.add(min(max(b, t0), t1))
    points = sorted(bounds)
    index = [([s[0] for s in p["segments"]], p) for p in python]
    out: dict[str, float] = defaultdict(float)
    for a, b in zip(points, points[1:], strict=False):
        if b <= a:
            continue
        m = (a + b) / 2
        active = []
        for starts, p in index:
            i = bisect.bisect_right(starts, m) - 1
            if i >= 0 and p["segments"][i][1] > m:
                active.append((p, p["segments"][i][2]))
        children = [(p, l) for p, l in active if p["pid"] not in root_pids]
        if children:
            share = (b - a) / len(children)
            for _, l in children:
                out[l] += share
        elif active:
            l = active[0][1]
            out[
                "other programs (make, gpp, pandoc) / waiting" if l in ("lamd work", "main program", "rest") else l
            ] += b - a
        else:
            out["outside Python"] += b - a
    return {"wall_us": t1 - t0, "attribution_us": dict(out)}


def trim(report: dict[str, Any], rec: dict[str, Any]) -> dict[str, Any]:
    """What the study keeps of one run: lynanalyze's sections it uses, and the trace-computed fallbacks."""
    run_dir = Path(rec["run_dir"])
    sections = report.get("sections", {})
    procs = [process_facts(p) for p in sorted(run_dir.glob("*.lynshim.json"))]
    out: dict[str, Any] = {"lynanalyze_summary": report.get("summary", {})}
    build = (sections.get("build") or {}).get("data")
    runs = build.get("runs") if isinstance(build, dict) else None
    a = attribute(run_dir, procs)
    study_attr = {
        "attribution_us": a["attribution_us"],
        "build_wall_us": a["wall_us"],
        "python_processes": sum(1 for p in procs if p.get("source", "python") != "exec"),
        "other_processes": sum(1 for p in procs if p.get("source") == "exec"),
    }
    if runs:
        r = runs[0]
        out["lynanalyze_build"] = {
            "attribution_us": r.get("attribution_us", {}),
            "critical_path": r.get("critical_path", []),
            "wall_us": r.get("wall_us"),
            "python_processes": r.get("python_processes"),
            "other_processes": r.get("other_processes"),
            "unattributed_share": r.get("unattributed_share"),
        }
    if runs and (runs[0].get("other_processes") or 0) > 0:
        # make, sh, gpp and pandoc are traced (the exec preload): lynanalyze's critical path can follow the
        # build from maketalk through make to every command, and is the better account.
        out["attribution_source"] = "lynanalyze build section (critical path)"
        out["attribution_us"] = runs[0].get("attribution_us", {})
        out["build_wall_us"] = runs[0].get("wall_us")
        out["python_processes"] = runs[0].get("python_processes")
        out["other_processes"] = runs[0].get("other_processes")
    else:
        out["attribution_source"] = (
            "study sweep of the traces on the build's clock (make, sh, gpp and pandoc "
            "are not traced, so lynanalyze's critical path cannot pass from maketalk "
            "to the commands make runs)"
        )
        out.update(study_attr)
    out["processes"] = [
        {
            k: p[k]
            for k in (
                "pid",
                "ppid",
                "command",
                "lamd_command",
                "source",
                "wall_us",
                "calls",
                "call_categories",
                "config_reads",
                "rss_samples",
                "peak_rss_bytes",
                "exit_status",
            )
        }
        | {"phases_us": phase_totals(p)}
        for p in procs
    ]
    out["sections"] = small_sections(sections)
    return out


def small_sections(sections: dict[str, Any]) -> dict[str, Any]:
    """The parts of lynanalyze's sections the report uses, small enough to commit."""
    data = {k: (v or {}).get("data") for k, v in sections.items()}
    out: dict[str, Any] = {}
    for key in ("config_files", "cip0008_projection", "operation_mix", "startup_vs_work"):
        if data.get(key) is not None:
            out[key] = data[key]
    conc = data.get("concurrency")
    if isinstance(conc, dict):
        out["concurrency"] = {k: v for k, v in conc.items() if k != "timeline"}
    imp = data.get("imports")
    if isinstance(imp, dict):
        out["imports"] = {
            "lazy_import_candidates": (imp.get("lazy_import_candidates") or [])[:15],
            "total_import_self_us": imp.get("total_import_self_us"),
        }
    mem = data.get("memory")
    if isinstance(mem, dict):
        out["memory"] = mem
    cf = data.get("call_frequency")
    if isinstance(cf, dict):
        out["call_frequency"] = {
            "entry_points": [
                {k: e.get(k) for k in ("name", "category", "calls", "processes", "total_us", "p50_us")}
                for e in (cf.get("entry_points") or [])[:12]
            ]
        }
    return out


def phase_totals(p: dict[str, Any]) -> dict[str, float]:
    t: dict[str, float] = defaultdict(float)
    for a, b, l in p["segments"]:
        t[l] += b - a
    return dict(t)


def lazy_candidates(builds: dict[str, Any] | None) -> list[str]:
    """Packages lynanalyze names as lazy-import candidates in the direct-mode builds."""
    cost: dict[str, float] = defaultdict(float)
    for rec in (builds or {}).get("records", []):
        imports = (rec["analysis"].get("sections") or {}).get("imports") or {}
        for row in imports.get("lazy_import_candidates", imports.get("lazy", [])) or []:
            pkg = row.get("package") if isinstance(row, dict) else None
            if pkg:
                cost[pkg] += row.get("self_us") or 0.0
    return sorted(cost, key=lambda p: -cost[p])
