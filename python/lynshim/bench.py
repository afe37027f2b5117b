"""``lynshim bench``: start-up baselines, cold and warm, broken down by phase.

Each timed run is an ordinary ``lynshim run`` (its traces are ordinary traces that lynanalyze reads). For
every Python process of a run, its trace is read and split into phases by lynload, as lynanalyze reads
and splits it (``_native.process_phases``, ``lynload::phases``), so they add up to the process's traced
wall time:

- ``interpreter start-up`` (before lynshim activated) and ``lynshim activation`` (lynshim's own cost);
- ``imports: <package>`` for each top-level package (self time of its modules' import spans);
- ``lamd work``, ``lynguine <category>`` and ``user spans`` (self time of the traced calls);
- ``rest``: the main program's own code, garbage collection, ``atexit`` handlers, lynshim writing its
  trace and interpreter shutdown, and Python running outside any traced span.

A first run with ``LYNSHIM_RECORD_FILES=1`` learns the files: every file the command's Python processes
opened (an audit hook on ``open``) or mapped (``/proc/self/maps``: the interpreter, libpython, extension
modules, shared libraries) is recorded in the trace. With ``--cold``, before each timed run those files
are evicted from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no root, and ``mincore`` checks
how many of their pages are resident before each run, cold or warm: eviction only works for clean pages of files on a filesystem
with a page cache of its own (not tmpfs), and the report says when it did not work.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from lynshim import _launch, _native
from lynshim._native import schema

TOP_PACKAGES = 8


def _phases(path: Path) -> tuple[str, dict[str, float], float, dict[str, Any]] | None:
    """(process name, phase → µs, wall µs, exit args) of one trace, read as lynanalyze reads it (see
    ``_native.process_phases``); ``None``, said on stderr, when it cannot be read."""
    try:
        return _native.process_phases(path)
    except ValueError as err:
        print(f"lynshim bench: left out {err}", file=sys.stderr)
        return None


def _file_set(discovery_traces: list[Path]) -> list[str]:
    files: set[str] = set()
    for path in discovery_traces:
        phases = _phases(path)
        if phases is not None:
            files.update(phases[3].get(schema.ARG_OPENED_FILES, []))
    return sorted(f for f in files if os.path.isfile(f))


def _site_packages(files: list[str]) -> list[str]:
    """The files of installed packages (pandas, lynguine…), apart from the interpreter and system libraries,
    which other processes on the machine may keep mapped and so resident."""
    return [f for f in files if f"{os.sep}site-packages{os.sep}" in f]


def residency(files: list[str]) -> tuple[int, int]:
    """(resident pages, total pages) over ``files``."""
    resident = total = 0
    for f in files:
        try:
            r, t = _native.page_residency(f)
        except OSError:
            continue
        resident += r
        total += t
    return resident, total


def evict(files: list[str]) -> int:
    """Evict every file; returns how many could not be evicted."""
    failed = 0
    for f in files:
        try:
            _native.evict_from_page_cache(f)
        except OSError:
            failed += 1
    return failed


def holders(files: list[str]) -> dict[str, int]:
    """Other processes that map any of ``files`` (from ``/proc/*/maps``), as ``"pid command"``, with how many of
    the files each maps: the kernel keeps a mapped file's pages resident, so eviction cannot make them cold."""
    wanted = set(files)
    found: dict[str, int] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/maps", encoding="utf-8", errors="replace") as maps:
                # address perms offset dev inode [path]: anonymous mappings have no path.
                fields = (line.split(maxsplit=5) for line in maps)
                mapped = {f[5].rstrip("\n") for f in fields if len(f) == 6}
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
        except OSError:
            continue  # gone, or not ours to read
        held = len(mapped & wanted)
        if held:
            found[f"{entry.name} {command}"] = held
    return found


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def bench(command: list[str], *, n: int, warmup: int, cold: bool, out: Path) -> int:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One traced run learns which files the command's Python processes open: evicted before each cold
    # run, and checked for residency before each run either way.
    print(f"lynshim bench: learning which files {command[0]} opens (one traced run)…", file=sys.stderr)
    found = _launch.launch(
        out / "discovery", "discovery", command, quiet=True, extra_env={schema.ENV_RECORD_FILES: "1"}
    )
    if isinstance(found, int):
        return found
    files = _file_set(found.python_traces)
    packages = _site_packages(files)
    print(
        f"lynshim bench: {len(files)} files ({len(packages)} in site-packages)"
        f"{' to evict before each run' if cold else ''}",
        file=sys.stderr,
    )
    for i in range(warmup):
        print(f"lynshim bench: warm-up {i + 1}/{warmup}", file=sys.stderr)
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    runs = []
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    walls: list[float] = []
    failures = 0
    for i in range(n):
        record: dict[str, Any] = {"run": i + 1}
        if cold:
            record["evict_failures"] = evict(files)
        record["resident_before"] = list(residency(files))
        record["resident_before_site_packages"] = list(residency(packages))
        print(f"lynshim bench: run {i + 1}/{n}{' (cold)' if cold else ''}", file=sys.stderr)
        result = _launch.launch(out, "cold" if cold else "warm", command, quiet=True)
        if isinstance(result, int):
            return result
        failures += result.returncode != 0
        walls.append(result.wall_s * 1e6)
        record.update(
            {"run_dir": str(result.run_dir), "wall_us": result.wall_s * 1e6, "exit": result.returncode, "processes": []}
        )
        # Python traces only: the exec records of make, sh… (and of the Python processes) have no phases.
        for trace in result.python_traces:
            read = _phases(trace)
            if read is None:
                continue
            name, phases, wall, _ = read
            record["processes"].append({"command": name, "wall_us": wall, "phases_us": phases})
            for phase, us in phases.items():
                samples[name][phase].append(us)
            samples[name]["total (traced wall)"].append(wall)
        runs.append(record)

    summary = {
        name: {phase: _stats(values) for phase, values in by_phase.items()} for name, by_phase in samples.items()
    }
    report: dict[str, Any] = {
        "schema_version": 1,
        "command": command,
        "n": n,
        "warmup": warmup,
        "cold": cold,
        "wall_us": _stats(walls),
        "processes": summary,
        "runs": runs,
        "evicted_files": len(files),
    }
    if files:
        for key, field in (
            ("resident_share", "resident_before"),
            ("resident_share_site_packages", "resident_before_site_packages"),
        ):
            report[key] = _stats([r[field][0] / max(r[field][1], 1) for r in runs])
    if cold and packages:
        # Pages another process maps stay resident: name who holds them (a lynguine server left running…).
        held = holders(packages)
        if held:
            report["held_by"] = held
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(render(report))
    print(f"lynshim bench: traces and bench.json in {out}/", file=sys.stderr)
    return 1 if failures else 0


def render(report: dict[str, Any]) -> str:
    """The bench report as a plain-text table (milliseconds)."""
    lines = [
        f"lynshim bench: {' '.join(report['command'])}  ({report['n']} runs, "
        f"{'cold' if report['cold'] else 'warm'}, {report['warmup']} warm-up)"
    ]
    w = report["wall_us"]
    lines.append(
        f"whole command wall time, ms: min {w['min'] / 1e3:.1f}  median {w['median'] / 1e3:.1f}  "
        f"max {w['max'] / 1e3:.1f}"
    )
    if "resident_share" in report:
        share, packages = report["resident_share"]["max"], report["resident_share_site_packages"]["max"]
        verb = "evicted before each run" if report["cold"] else "checked before each run"
        lines.append(
            f"page cache: {report['evicted_files']} files {verb}; at most {share:.1%} of their pages "
            f"resident ({packages:.1%} of the installed packages' pages; the rest is the interpreter "
            "and shared libraries other processes keep mapped)"
        )
        if report["cold"] and packages > 0.5:
            lines.append(
                "  warning: eviction did not work here (a filesystem without its own page cache, such as "
                "tmpfs or some overlays, keeps the pages): these runs were not cold"
            )
    if report.get("held_by"):
        held = "; ".join(f"pid {who} maps {n}" for who, n in sorted(report["held_by"].items(), key=lambda h: -h[1]))
        lines.append(
            f"  warning: pages stayed resident because other processes map the files ({held}): these runs "
            "were not fully cold; stop those processes and run again"
        )
    for name, phases in report["processes"].items():
        lines.append("")
        lines.append(f"process: {name}")
        lines.append(f"  {'phase':<34} {'min':>9} {'median':>9} {'max':>9}")
        imports = sorted((p for p in phases if p.startswith("imports: ")), key=lambda p: -phases[p]["median"])
        shown = imports[:TOP_PACKAGES]
        order = (
            ["interpreter start-up", "lynshim activation"]
            + shown
            + sorted(p for p in phases if p.startswith(("lamd", "lynguine", "user")))
            + ["rest", "total (traced wall)"]
        )
        for phase in order:
            if phase in phases:
                s = phases[phase]
                lines.append(f"  {phase:<34} {s['min'] / 1e3:>9.1f} {s['median'] / 1e3:>9.1f} {s['max'] / 1e3:>9.1f}")
        others = imports[TOP_PACKAGES:]
        if others:
            medians = sum(phases[p]["median"] for p in others)
            lines.append(
                f"  {'imports: ' + str(len(others)) + ' other packages (median sum)':<34} {'':>9} {medians / 1e3:>9.1f}"
            )
    return "\n".join(lines)
