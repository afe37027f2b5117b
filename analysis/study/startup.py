"""Start-up breakdown, cold and warm: ``lynshim bench`` of ``import X`` for lynguine and each module the
profiling task lists, plus an empty interpreter for the baseline.

Per module and mode: the whole command's wall time and each phase (interpreter start-up, lynshim's
activation, imports by top-level package, lynguine work, the rest), min/median/max over the runs, from
``bench.json``; and from the bench's own traces, each top-level package's self and cumulative import time
(cumulative: from entering the package until leaving it, including what it imports from other packages).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from lynshim._native import schema

from . import common as c
from .builds import Study

MODULES = [
    "pandas",
    "numpy",
    "yaml",
    "lynguine",
    "lynguine.access.io",
    "lynguine.assess.data",
    "lynguine.assess.compute",
    "lynguine.config.interface",
    "spacy",
]


def import_costs(trace: Path) -> dict[str, dict[str, float]]:
    """Top-level package -> {"self_us", "cumulative_us"} of one process's imports."""
    full = c.spans(c.load_events(trace))
    child_time: dict[int, float] = defaultdict(float)
    for s in full:
        if s["cat"] == schema.CAT_IMPORT and s["dur"] is not None and s["parent"] is not None:
            child_time[s["parent"]] += s["dur"]
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"self_us": 0.0, "cumulative_us": 0.0})
    for i, s in enumerate(full):
        if s["cat"] != schema.CAT_IMPORT or s["dur"] is None:
            continue
        pkg = s["name"].split(".")[0]
        out[pkg]["self_us"] += s["dur"] - child_time[i]
        # the outermost span of this package on its stack counts once towards cumulative
        p = s["parent"]
        inside = False
        while p is not None:
            if full[p]["cat"] == schema.CAT_IMPORT and full[p]["name"].split(".")[0] == pkg:
                inside = True
                break
            p = full[p]["parent"]
        if not inside:
            out[pkg]["cumulative_us"] += s["dur"]
    return dict(out)


def bench_one(study: Study, module: str, cold: bool) -> dict[str, Any]:
    code = "pass" if module == "(none)" else f"import {module}"
    out = study.out / "startup" / f"{module}-{'cold' if cold else 'warm'}"
    args = [c.tool("lynshim"), "bench", "-n", str(study.n), "--warmup", "1", "-o", str(out)]
    if cold:
        args.append("--cold")
    res = c.run(args + ["--", sys.executable, "-c", code], env=c.env_with_venv(), cwd=study.out, timeout=900)
    bench_json = out / "bench.json"
    if not bench_json.is_file():
        raise RuntimeError(f"lynshim bench failed for {module}: {res.stderr[-2000:]}")
    bench = json.loads(bench_json.read_text())
    per_pkg: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in bench["runs"]:
        for trace in sorted(Path(r["run_dir"]).glob("*.lynshim.json")):
            for pkg, v in import_costs(trace).items():
                per_pkg[pkg]["self_us"].append(v["self_us"])
                per_pkg[pkg]["cumulative_us"].append(v["cumulative_us"])
    packages = {pkg: {k: c.stats(vals) for k, vals in d.items()} for pkg, d in per_pkg.items()}
    process = next(iter(bench["processes"].values()), {})
    imports_total = [
        sum(v for k, v in p["phases_us"].items() if k.startswith("imports:"))
        for r in bench["runs"]
        for p in r["processes"][:1]
    ]
    phases = {k: v for k, v in process.items() if not k.startswith("imports:")}
    phases["imports (all packages)"] = c.stats(imports_total)
    return {
        "module": module,
        "mode": "cold" if cold else "warm",
        "command": f"lynshim bench -n {study.n} --warmup 1{' --cold' if cold else ''} -- python -c '{code}'",
        "wall_us": bench["wall_us"],
        "phases_us": phases,
        "resident_share_site_packages": bench.get("resident_share_site_packages"),
        "evicted_files": bench.get("evicted_files"),
        "packages": dict(sorted(packages.items(), key=lambda kv: -kv[1]["cumulative_us"].get("median", 0))[:25]),
    }


def run_startup(study: Study, modules: list[str] | None = None) -> dict[str, Any]:
    modules = modules if modules is not None else MODULES
    results = []
    missing = []
    for module in ["(none)"] + modules:
        if module != "(none)" and importlib.util.find_spec(module.split(".")[0]) is None:
            missing.append(module)
            c.log(f"startup: {module} is not installed")
            continue
        for cold in (False, True):
            r = bench_one(study, module, cold)
            c.log(f"startup: import {module} {r['mode']}: median {r['wall_us']['median'] / 1e3:.0f} ms")
            results.append(r)
    return {"n": study.n, "results": results, "not_installed": missing}
