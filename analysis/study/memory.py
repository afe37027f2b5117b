"""Memory: RSS at the moments lynshim samples, per lamd command over the direct-mode builds, and through the
operations sequence (baseline → after imports → after config load → after data load → after operations →
peak) measured in one process by the operations step.

Moments come from lynanalyze's ``memory`` section (``moments_bytes``) when it provides them; otherwise from
the traces' RSS counters: the first sample (at activation: the baseline), the last (at exit) and the peak.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import common as c


def command_kind(command: str, lamd_command: str | None) -> str:
    words = command.split()
    if lamd_command and lamd_command in ("mdfield", "dependencies", "flags") and len(words) > 1:
        return f"{lamd_command} {words[1]}"
    return lamd_command or (words[0] if words else "?")


def summarise(builds: dict[str, Any] | None, operations: dict[str, Any] | None) -> dict[str, Any]:
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    source = "trace RSS counters (first sample = baseline at activation, last = exit) and peak RSS"
    for rec in (builds or {}).get("records", []):
        if rec["mode"] != "direct":
            continue
        a = rec["analysis"]
        mem_rows = (a.get("sections") or {}).get("memory")
        moments_by_pid: dict[Any, dict[str, float]] = {}
        rows = mem_rows.get("processes") if isinstance(mem_rows, dict) else mem_rows
        for row in rows or []:
            if isinstance(row, dict) and row.get("moments_bytes"):
                peak = row.get("peak_bytes") or row.get("peak_rss_bytes")
                moments_by_pid[row.get("pid")] = {k: v for k, v in row["moments_bytes"].items() if v is not None} | (
                    {"peak": peak} if peak else {}
                )
        if moments_by_pid:
            source = "lynanalyze memory section (moments_bytes)"
        for p in a["processes"]:
            if p.get("source") == "exec":
                continue
            kind = command_kind(p["command"], p.get("lamd_command"))
            m = moments_by_pid.get(p["pid"])
            if m is None:
                s = p.get("rss_samples") or []
                m = {}
                if s:
                    m["baseline"] = s[0]
                    m["exit"] = s[-1]
                if p.get("peak_rss_bytes"):
                    m["peak"] = p["peak_rss_bytes"]
            for k, v in m.items():
                if v is not None:
                    per[kind][k].append(v)
    commands = {kind: {k: c.stats(v) for k, v in d.items()} for kind, d in per.items()}
    sequence = {subject: s.get("moments_bytes") for subject, s in ((operations or {}).get("subjects") or {}).items()}
    return {
        "source": source,
        "commands": commands,
        "operations_sequence": sequence,
        "command": "direct-mode builds (see builds.json); the sequence from the operations step",
    }
