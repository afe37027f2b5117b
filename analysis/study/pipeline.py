"""The steps in order; each writes one small JSON summary into analysis/study-data/."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from . import analysis as an
from . import common as c
from .builds import Study, build, buildable


def data_path(args: argparse.Namespace, name: str) -> Path:
    return args.report_dir / "study-data" / f"{name}.json"


def load(args: argparse.Namespace, name: str) -> Any:
    p = data_path(args, name)
    return json.loads(p.read_text()) if p.is_file() else None


def digest(outputs: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()[:16]


def summarise_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each build record with lynanalyze's view of its run, trimmed to what the report uses."""
    out = []
    for rec in records:
        try:
            report = c.analyze(Path(rec["run_dir"]))
        except (RuntimeError, FileNotFoundError, json.JSONDecodeError) as err:
            c.log(f"lynanalyze could not read {rec['run_dir']}: {err}; the study's own trace reading is used")
            report = {"error": str(err)[:500]}
        (Path(rec["run_dir"]).parent / (Path(rec["run_dir"]).name + ".lynanalyze.json")).write_text(json.dumps(report))
        rec = dict(rec)
        rec["outputs_digest"] = digest(rec["outputs"])
        rec["analysis"] = compact(an.trim(report, rec))
        out.append(rec)
    return out


def compact(analysis: dict[str, Any]) -> dict[str, Any]:
    """Keep the committed summaries small: the per-process rows of Python processes only (the exec-traced
    programs — make, sh, sed, pandoc… — are counted, and their time is in the attribution)."""
    procs = analysis.get("processes") or []
    analysis["processes"] = [p for p in procs if p.get("source") != "exec"]
    analysis["exec_processes"] = sum(1 for p in procs if p.get("source") == "exec")
    lb = analysis.get("lynanalyze_build")
    if lb and lb.get("critical_path"):
        path = lb["critical_path"]
        lb["critical_path_length"] = len(path)
        lb["critical_path"] = [
            dict(p, command=(p.get("command") or "")[:60]) for p in path if (p.get("own_us") or 0) >= 20_000
        ]
    return analysis


def run(args: argparse.Namespace, talks: list[str], steps: list[str]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.report_dir / "study-data").mkdir(parents=True, exist_ok=True)
    study = Study(
        out=args.out.resolve(),
        corpus_src=args.talks.resolve(),
        lamd_src=args.lamd_src.resolve(),
        talks=talks,
        formats=args.formats.split(),
        runs=args.runs,
        n=args.n,
    )
    variant_formats = [f for f in args.variant_formats.split() if f]
    sizes = buildable(study)
    meta = load(args, "meta") or {}
    if set(steps) - {"report"}:
        meta = {
            "stamp": c.stamp(study.lamd_src),
            "knobs": {
                "talks": talks,
                "formats": study.formats,
                "variant_formats": variant_formats,
                "runs": study.runs,
                "n": study.n,
                "lamd_src": str(args.lamd_src),
                "corpus": str(args.talks),
            },
            "talk_sizes": sizes,
            "corpus_fixes": study.corpus.fixes,
            "steps_run": steps,
            "started_unix": time.time(),
        }
    timings = meta.setdefault("step_seconds", {})

    def step(name: str, fn) -> None:
        if name not in steps and not (name == "builds" and {"server", "quickwins"} & set(steps)):
            return
        t = time.time()
        c.log(f"step {name}…")
        data = fn()
        if data is not None:
            c.write_json(data_path(args, name), data, compact=name in ("builds", "server", "quickwins"))
        timings[name] = round(time.time() - t, 1)
        c.write_json(data_path(args, "meta"), meta)

    from . import memory, operations, quickwins, startup

    modules = args.modules.split() if args.modules else None
    step("startup", lambda: startup.run_startup(study, modules))
    step("operations", lambda: operations.run_operations(study, sizes))

    def lazy_probe() -> tuple[list[str], list[str], list[dict[str, Any]]]:
        """lynanalyze's lazy-import candidates from one direct build of the smallest talk, then probed."""
        small = min(talks, key=lambda t: sizes[t]["includes"])
        fmt = variant_formats[0] if variant_formats else study.formats[0]
        rec = build(study, small, fmt, mode="probe:direct", run_no=1)
        candidates = an.lazy_candidates({"records": summarise_records([rec])})[: args.lazy_candidates]
        lazy, probes = quickwins.probe_lazy(study, candidates, small, fmt, reference=rec["outputs"])
        return candidates, lazy, probes

    def builds_step() -> None:
        from .schedule import run_schedule

        candidates, lazy, probes = lazy_probe() if "quickwins" in steps else ([], [], [])
        jobs_talk = args.jobs_talk or max(talks, key=lambda t: sizes[t]["includes"])
        data = run_schedule(
            study,
            variant_formats=variant_formats,
            server="server" in steps,
            quickwins="quickwins" in steps,
            lazy=lazy,
            jobs_talk=jobs_talk if variant_formats else None,
        )
        recs = data["records"]
        traced = summarise_records([r for r in recs if r["mode"] != "untraced"])
        untraced = [dict(r, outputs_digest=digest(r["outputs"])) for r in recs if r["mode"] == "untraced"]
        direct = [r for r in traced if r["mode"] in ("direct", "direct-j2")]
        c.write_json(
            data_path(args, "builds"),
            {
                "command": "lynshim run -o OUT/traces/<mode> --label '<mode>|<talk>|<format>|<run>' -- "
                "maketalk TALK [--format F --to html], in the subject folder of the corpus copy (reset "
                "before every build); untraced: the same maketalk without lynshim",
                "records": untraced + direct,
                "merged_trace": merge_example(args, direct),
            },
            compact=True,
        )
        if "server" in steps:
            c.write_json(
                data_path(args, "server"),
                {
                    "records": [r for r in traced if r["mode"].startswith("server-")],
                    "warm_server_starts": data["warm_server_starts"],
                    "servers_left_running": data["servers_left_running"],
                },
                compact=True,
            )
        if "quickwins" in steps:
            c.write_json(
                data_path(args, "quickwins"),
                {
                    "lazy_candidates": candidates,
                    "lazy_packages": lazy,
                    "lazy_probes": probes,
                    "records": [r for r in traced if r["mode"].startswith("quickwin:")],
                    "servers_left_running": data["servers_left_running"],
                },
                compact=True,
            )

    if {"builds", "server", "quickwins"} & set(steps):
        step("builds", builds_step)
    step("memory", lambda: memory.summarise(load(args, "builds"), load(args, "operations")))
    if set(steps) - {"report"}:
        meta["finished_unix"] = time.time()
        c.write_json(data_path(args, "meta"), meta)
    if "report" in steps:
        from . import report

        report.write(args.report_dir)
        timings["report"] = 0


def merge_example(args: argparse.Namespace, records: list[dict[str, Any]]) -> str | None:
    """One direct-mode build of the largest talk (notes), merged into one trace that opens in Perfetto."""
    direct = [r for r in records if r["mode"] == "direct"]
    if not direct:
        return None
    pick = max(direct, key=lambda r: (r["mode"] == "direct", r["format"] == "notes", r["wall_us"]))
    name = f"build-{Path(pick['talk']).stem}-{pick['format']}.json.gz"
    dest = args.report_dir / "study-data" / name
    for old in dest.parent.glob("build-*.json.gz"):
        old.unlink()
    try:
        res = c.run([c.tool("lynanalyze"), "merge", pick["run_dir"], "-o", str(dest)])
    except OSError as err:
        c.log(f"lynanalyze merge failed: {err}")
        return None
    if res.returncode != 0:
        c.log(f"lynanalyze merge failed: {res.stderr[-500:]}")
        return None
    return name
