"""analysis/REPORT.md and analysis/figures/*.png, written from analysis/study-data/*.json only.

No number in the report is typed here: every figure is read from a summary the study wrote. Each table
names the command and the runs that produced it. Noise rule: a difference between two sets of runs is called
a difference only when their min–max ranges do not overlap; otherwise the report says it is within the noise.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import common as c

VARIANT_ORDER = [
    "untraced",
    "direct",
    "server-cold",
    "server-warm",
    "quickwin:thin-client",
    "quickwin:no-teardown",
    "quickwin:lazy-imports",
    "quickwin:one-blas-thread",
    "direct-j2",
]
#: The quick-win variants (analysis/study/quickwins.py), in the order section 6 shows them.
QUICK_WINS = ("quickwin:no-teardown", "quickwin:lazy-imports", "quickwin:one-blas-thread", "quickwin:thin-client")
VARIANT_NAMES = {
    "untraced": "untraced (no lynshim)",
    "direct": "direct (lamd default)",
    "server-cold": "server mode, cold (server started by the build)",
    "server-warm": "server mode, warm (server already running)",
    "quickwin:thin-client": "warm server + thin mdfield client (no lynguine import)",
    "quickwin:no-teardown": "quick win: no interpreter teardown",
    "quickwin:lazy-imports": "quick win: lazy imports",
    "quickwin:one-blas-thread": "quick win: one OpenBLAS thread",
    "direct-j2": "direct, make -j2",
}


def ms(us: float | None, digits: int = 0) -> str:
    if us is None:
        return "–"
    return f"{us / 1e3:,.{digits}f}"


def s_(us: float | None) -> str:
    return "–" if us is None else f"{us / 1e6:.2f}"


def mib(b: float | None) -> str:
    return "–" if b is None else f"{b / 2**20:.0f}"


def rng(st: dict[str, float], unit=ms) -> str:
    if not st or not st.get("n"):
        return "–"
    if st["n"] == 1:
        return unit(st["median"])
    return f"{unit(st['median'])} ({unit(st['min'])}–{unit(st['max'])})"


def pct(x: float | None) -> str:
    # round() to an int: a change of -0.4 % reads "0 %", not "-0 %".
    return "–" if x is None else f"{round(100 * x)} %"


def first_upper(text: str) -> str:
    """``text`` with its first letter a capital, the rest as written (str.capitalize lowercases OpenBLAS)."""
    return text[:1].upper() + text[1:]


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    """Do two sets of runs overlap? With a single run on either side there is no spread to judge by, and the
    answer is yes (no difference can be claimed)."""
    if a.get("n", 0) < 2 or b.get("n", 0) < 2:
        return True
    return not (a["max"] < b["min"] or b["max"] < a["min"])


def group_runs(records: list[dict[str, Any]], measure: str = "wall_us") -> dict[tuple[str, str, str], dict[str, float]]:
    """Statistics of ``measure`` over the runs of each (mode, talk, format); runs without it are left out."""
    g: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.get(measure) is not None:
            g[(r["mode"], r["talk"], r["format"])].append(r[measure])
    return {k: c.stats(v) for k, v in g.items()}


def median_attr(records: list[dict[str, Any]]) -> dict[str, float]:
    """Median over runs of each phase (µs); phases absent from a run count as 0."""
    records = [r for r in records if "analysis" in r]
    if not records:
        return {}
    keys = sorted({k for r in records for k in r["analysis"]["attribution_us"]})
    return {k: statistics.median([r["analysis"]["attribution_us"].get(k, 0.0) for r in records]) for k in keys}


def is_outside_python(k: str) -> bool:
    return k.startswith("other") or k.startswith("idle") or k in ("outside Python", "unattributed")


def phase_group(k: str) -> str:
    if k.startswith("other: ") or k.startswith("other programs"):
        return "other programs (make, gpp, pandoc) / waiting"
    return k


def variant_cells(mode: str, r: dict[str, Any]) -> list[str]:
    """The cells every comparison of a variant with direct mode starts with: variant, talk, format, and
    both sides' build times."""
    return [VARIANT_NAMES[mode], f"`{Path(r['talk']).stem}`", r["format"], rng(r["direct"], s_), rng(r["variant"], s_)]


class Report:
    def __init__(self, data_dir: Path):
        self.d = {p.stem: json.loads(p.read_text()) for p in data_dir.glob("*.json")}
        self.meta = self.d.get("meta", {})
        self.records: list[dict[str, Any]] = []
        for key in ("builds", "server", "quickwins"):
            self.records += (self.d.get(key) or {}).get("records", [])
        self.walls = group_runs(self.records)
        self.cpus = group_runs(self.records, "cpu_us")
        self.out: list[str] = []
        self.figures: list[str] = []
        self.checks: dict[str, str] = {}

    def w(self, *lines: str) -> None:
        self.out.extend(lines)

    # --- findings used in the summary -------------------------------------------------------------------
    def direct(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["mode"] == "direct"]

    def python_share(self) -> dict[str, float]:
        """Over all direct builds: summed attribution by group, and the total wall."""
        tot: dict[str, float] = defaultdict(float)
        for r in self.direct():
            for k, v in r["analysis"]["attribution_us"].items():
                tot[phase_group(k)] += v
        return dict(tot)

    def compare(self, mode: str, measure: str = "wall_us") -> list[dict[str, Any]]:
        """Each talk/format's runs of ``mode`` against direct mode's: build wall time, or the builds' CPU.

        CPU is what the launcher's ``RUSAGE_CHILDREN`` counts, the processes of the build it waited for: not a
        server's, which no build waits for, so server modes and the thin client have no CPU comparison."""
        if measure == "cpu_us" and (mode.startswith("server") or mode == "quickwin:thin-client"):
            return []
        runs = self.cpus if measure == "cpu_us" else self.walls
        rows = []
        for (m, talk, fmt), st in sorted(runs.items()):
            if m != mode:
                continue
            base = runs.get(("direct", talk, fmt))
            if not base:
                continue
            diff = st["median"] - base["median"]
            rows.append(
                {
                    "talk": talk,
                    "format": fmt,
                    "direct": base,
                    "variant": st,
                    "diff_us": diff,
                    "rel": diff / base["median"],
                    "distinct": not overlap(st, base),
                }
            )
        return rows

    def differing_files(self, mode: str) -> list[str]:
        direct: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        for r in self.direct():
            direct[(r["talk"], r["format"])].append(r.get("outputs") or {})
        bad: set[str] = set()
        for r in self.records:
            if r["mode"] != mode or not direct.get((r["talk"], r["format"])):
                continue
            ref = direct[(r["talk"], r["format"])][0]
            mine = r.get("outputs") or {}
            for f in set(ref) | set(mine):
                if ref.get(f) != mine.get(f):
                    bad.add(f)
        return sorted(bad)

    def identical(self, mode: str) -> tuple[int, int, bool]:
        """(variant runs whose outputs equal direct's, variant runs, direct runs agree among themselves)."""
        direct: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in self.direct():
            direct[(r["talk"], r["format"])].add(r["outputs_digest"])
        same = total = 0
        for r in self.records:
            if r["mode"] != mode:
                continue
            total += 1
            same += r["outputs_digest"] in direct.get((r["talk"], r["format"]), set())
        stable = all(len(v) == 1 for v in direct.values())
        return same, total, stable

    # --- sections -----------------------------------------------------------------------------------------
    def header(self) -> None:
        st = self.meta.get("stamp", {})
        k = self.meta.get("knobs", {})
        took = None
        if self.meta.get("finished_unix") and self.meta.get("started_unix"):
            took = self.meta["finished_unix"] - self.meta["started_unix"]
        self.w(
            "# Where the time goes in a lamd build, and is CIP-0008's server mode the fix?",
            "",
            "*Generated by `make study` (`python -m analysis.study`) from real lamd builds traced with lynshim "
            "and analysed with lynanalyze. Do not edit by hand: every number below is read from "
            "`analysis/study-data/*.json`.*",
            "",
            table(
                ["", ""],
                [
                    ["date", st.get("date_utc", "?")],
                    ["machine", st.get("machine", "?")],
                    ["kernel / filesystem", f"{st.get('kernel', '?')} / {st.get('filesystem', '?')}"],
                    ["Python", st.get("python", "?")],
                    ["lynguine", st.get("lynguine", "?")],
                    ["lamd", st.get("lamd", "?")],
                    ["lynshim/lynanalyze commit", st.get("lynshim_commit", "?")],
                    ["talks", ", ".join(f"`{t}`" for t in k.get("talks", []))],
                    [
                        "formats (direct / server & quick wins)",
                        f"{' '.join(k.get('formats', []))} / {' '.join(k.get('variant_formats', []))}",
                    ],
                    ["repeats", f"RUNS={k.get('runs')} per build, N={k.get('n')} per bench and operation"],
                    ["study wall time", f"{took / 60:.1f} min" if took else "?"],
                ],
            ),
            "",
        )
        fixes = self.meta.get("corpus_fixes") or []
        if fixes:
            self.w(
                "Corpus copy fixes (the corpus itself is untouched): "
                + "; ".join(
                    f"`{f['talk']}` includes `{f['included_as']}`, which has moved to "
                    f"`{f['copied_from']}` in the snippets; copied to the old path in the study's copy"
                    for f in fixes
                )
                + ".",
                "",
            )
        self.w(
            "The machine is noisy (2 cores, other work running): every timing is the median over the repeats "
            "with (min–max); two sets of runs are called different only when their ranges do not overlap.",
            "",
        )

    def summary(self) -> None:
        self.w("## Executive summary", "")
        d = self.direct()
        if not d:
            self.w("No direct-mode builds were run.", "")
            return
        tot = self.python_share()
        wall = sum(r["wall_us"] for r in d)
        py = sum(v for k, v in tot.items() if not is_outside_python(k))
        imports = tot.get("imports", 0.0) + tot.get("python start-up", 0.0) + tot.get("lynshim", 0.0)
        work = tot.get("lynguine work", 0.0) + tot.get("lamd work", 0.0)
        nproc = statistics.median([r["analysis"]["python_processes"] for r in d])
        src = d[0]["analysis"]["attribution_source"]
        self.w(
            f"- Over {len(d)} direct-mode builds ({len({r['talk'] for r in d})} talks, formats "
            f"{', '.join(sorted({r['format'] for r in d}))}), {pct(py / wall)} of the build wall time is Python "
            f"(`maketalk` and the lamd commands make runs, as opposed to make, gpp and pandoc); interpreter "
            f"start-up and imports alone are {pct(imports / wall)}, lynguine and lamd work {pct(work / wall)}. A build starts a "
            f"median of {nproc:g} Python processes (attribution: {src})."
        )
        over = self.compare("untraced")
        if over:
            rels = [-r["diff_us"] / r["variant"]["median"] for r in over]
            distinct = sum(r["distinct"] for r in over)
            self.w(
                f"- Tracing cost (lynshim with its exec preload; traced direct against untraced builds, {len(over)} "
                f"talk/format pairs): medians differ by {pct(min(rels))} to {pct(max(rels))}, {distinct} of {len(over)} "
                f"outside the noise{' — no tracing overhead can be told apart from the noise here' if not distinct else ''}. "
                f"Every variant below is traced the same way and compared with traced direct builds."
            )
        for mode, what in (
            ("server-warm", "lamd's server mode with a warm server"),
            ("server-cold", "lamd's server mode with a cold server"),
            ("quickwin:thin-client", "a warm server with a thin mdfield client"),
            ("quickwin:no-teardown", "skipping interpreter teardown"),
            ("quickwin:lazy-imports", "lazy imports of unused packages"),
            ("quickwin:one-blas-thread", "one OpenBLAS thread per process (OPENBLAS_NUM_THREADS=1)"),
        ):
            rows = self.compare(mode)
            if not rows:
                continue
            rels = [r["rel"] for r in rows]
            distinct = sum(r["distinct"] for r in rows)
            cpu = self.compare(mode, "cpu_us")
            cpu_text = (
                f"; the builds' CPU changes by {pct(min(r['rel'] for r in cpu))} to {pct(max(r['rel'] for r in cpu))}, "
                f"{sum(r['distinct'] for r in cpu)} of {len(cpu)} outside the noise"
                if cpu
                else ""
            )
            self.w(
                f"- {first_upper(what)}: median build-time change {pct(min(rels))} to {pct(max(rels))} "
                f"across {len(rows)} talk/format pairs; {distinct} of {len(rows)} outside the run-to-run noise{cpu_text}."
            )
        self.w("", "**Recommendation.** " + self.recommendation(), "")

    def recommendation(self) -> str:
        warm = self.compare("server-warm")
        cold = self.compare("server-cold")
        thin = self.compare("quickwin:thin-client")
        wins = {
            m: self.compare(m) for m in ("quickwin:no-teardown", "quickwin:lazy-imports", "quickwin:one-blas-thread")
        }
        parts = []
        if warm:
            med = statistics.median([r["rel"] for r in warm])
            helped = sum(r["distinct"] and r["diff_us"] < 0 for r in warm)
            if helped <= len(warm) // 2:
                parts.append(
                    f"Server mode as lamd implements it today shows no saving the noise supports: with a "
                    f"warm server the median change per talk is {pct(med)} (over {len(warm)} talks), within "
                    f"the run-to-run noise in {sum(not r['distinct'] for r in warm)} of {len(warm)}; and the "
                    f"traces say why none is to be expected: only `mdfield` asks the server, it still imports "
                    f"lynguine (and pandas) before asking, and every other lamd command still starts Python "
                    f"and imports lynguine. The corrected (real-client) model, which predicts about no change, "
                    f"is the one the measurements agree with (§5)."
                )
            else:
                parts.append(f"A warm server shortens {helped} of {len(warm)} builds (median {pct(med)}).")
        if cold:
            parts.append(
                f"Cold (the first build of a session) it costs a median {pct(statistics.median([r['rel'] for r in cold]))} "
                f"more, the server's own start-up."
            )
        if thin:
            good = sum(r["distinct"] and r["diff_us"] < 0 for r in thin)
            parts.append(
                f"A thin client for `mdfield` (warm server, no lynguine import) changes builds by a median "
                f"{pct(statistics.median([r['rel'] for r in thin]))} ({good} of {len(thin)} outside the noise): "
                f"at most it removes one process's start-up and imports out of the "
                f"{statistics.median([r['analysis']['python_processes'] for r in self.direct()]):g} or more a "
                f"build starts. CIP-0008 pays only if every lamd command (mdfield, flags, dependencies, mdpp) "
                f"becomes a thin client of one long-lived server, or lamd runs its steps in one process."
            )
        for m, rows in wins.items():
            if rows:
                med = statistics.median([r["rel"] for r in rows])
                good = sum(r["distinct"] and r["diff_us"] < 0 for r in rows)
                cpu = self.compare(m, "cpu_us")
                cpu_text = (
                    f"; CPU median {pct(statistics.median([r['rel'] for r in cpu]))} "
                    f"({sum(r['distinct'] and r['diff_us'] < 0 for r in cpu)} of {len(cpu)} outside the noise)"
                    if cpu
                    else ""
                )
                parts.append(
                    f"{first_upper(VARIANT_NAMES[m].split(': ')[-1])}: median {pct(med)} "
                    f"({good} of {len(rows)} outside the noise{cpu_text})."
                )
        return " ".join(parts) or "Not enough data for a recommendation."

    def section(self, title: str, key: str) -> Any:
        """Write a section's heading; its study data, or None (saying "Not run.") when that step was not run."""
        self.w(f"## {title}", "")
        data = self.d.get(key)
        if not data:
            self.w("Not run.", "")
        return data

    def startup(self) -> None:
        data = self.section("1. Start-up breakdown (cold and warm)", "startup")
        if not data:
            return
        self.w(
            f"`lynshim bench -n {data['n']} --warmup 1 [--cold] -- python -c 'import X'` for each module "
            "(cold: every file the process opened evicted from the page cache before each run). "
            "Milliseconds, median (min–max).",
            "",
        )
        by = {(r["module"], r["mode"]): r for r in data["results"]}
        rows = []
        for (mod, mode), r in by.items():
            if mode != "warm":
                continue
            cold = by.get((mod, "cold"))
            ph = r["phases_us"]
            imp = (ph.get("imports (all packages)") or {}).get("median")
            rows.append(
                [
                    f"`{mod}`",
                    rng(r["wall_us"]),
                    rng(cold["wall_us"]) if cold else "–",
                    ms((ph.get("interpreter start-up") or {}).get("median")),
                    ms((ph.get("lynshim activation") or {}).get("median")),
                    ms(imp),
                    ms((ph.get("rest") or {}).get("median")),
                    pct(cold.get("resident_share_site_packages", {}).get("max"))
                    if cold and cold.get("resident_share_site_packages")
                    else "–",
                ]
            )
        self.w(
            table(
                [
                    "import",
                    "warm wall",
                    "cold wall",
                    "interpreter start-up (warm)",
                    "lynshim activation",
                    "imports (warm)",
                    "rest: teardown etc. (warm)",
                    "cold: site-packages pages resident before a run (max)",
                ],
                rows,
            ),
            "",
        )
        if data.get("not_installed"):
            self.w(
                "Not installed here (so not measured): " + ", ".join(f"`{m}`" for m in data["not_installed"]) + ".", ""
            )
        main = (
            "lynguine"
            if ("lynguine", "warm") in by
            else max(
                (m for m, mode in by if mode == "warm"),
                key=lambda m: by[(m, "warm")]["wall_us"]["median"],
                default=None,
            )
        )
        lyn = by.get((main, "warm"))
        lync = by.get((main, "cold"))
        if lyn:
            self.w(
                f"### `import {main}`: imports by top-level package",
                "",
                "Self: time in the package's own module bodies; cumulative: from entering the package until "
                "leaving it, including other packages it imports. Medians over the runs, ms.",
                "",
            )
            rows = []
            for pkg, v in list(lyn["packages"].items())[:15]:
                cv = (lync or {}).get("packages", {}).get(pkg, {})
                rows.append(
                    [
                        f"`{pkg}`",
                        ms(v["self_us"]["median"], 1),
                        ms(v["cumulative_us"]["median"], 1),
                        ms(cv.get("self_us", {}).get("median"), 1) if cv else "–",
                        ms(cv.get("cumulative_us", {}).get("median"), 1) if cv else "–",
                    ]
                )
            self.w(table(["package", "self, warm", "cumulative, warm", "self, cold", "cumulative, cold"], rows), "")
            self.fig_imports(lyn, lync, main)

    def operations(self) -> None:
        data = self.section("2. Operation costs on real data", "operations")
        if not data:
            return
        self.w(
            f"One warm process per subject folder (imports paid before timing), each operation repeated "
            f"{data['n']} times: `{data['command']}`. Milliseconds, median (min–max).",
            "",
        )
        for subject, s in data["subjects"].items():
            self.w(
                f"**`{subject}`**: {s['rows']} talks × {s['columns']} columns read as a markdown directory; "
                f"config files {', '.join(s['config_files'])}; lamd operations on `{s['largest_talk']}`; "
                f"the imports before timing took {ms(s['import_us'])} ms.",
                "",
            )
            self.w(table(["operation", "ms"], [[k, rng(v, lambda u: ms(u, 2))] for k, v in s["ops"].items()]), "")

    def usage(self) -> None:
        self.w("## 3. Usage patterns in real lamd builds", "")
        d = self.direct()
        if not d:
            self.w("Not run.", "")
            return
        b = self.d["builds"]
        sizes = self.meta.get("talk_sizes", {})
        self.w(
            f"Command: `{b['command']}`. Direct mode, {self.meta.get('knobs', {}).get('runs')} runs each. "
            "Seconds, median (min–max); spread = (max−min)/median.",
            "",
        )
        rows = []
        for (mode, talk, fmt), st in sorted(
            self.walls.items(), key=lambda kv: (sizes.get(kv[0][1], {}).get("includes", 0), kv[0][2])
        ):
            if mode != "direct":
                continue
            rr = [r for r in d if r["talk"] == talk and r["format"] == fmt]
            nproc = sorted({r["analysis"]["python_processes"] for r in rr})
            calls = statistics.median([sum(sum(p["calls"].values()) for p in r["analysis"]["processes"]) for r in rr])
            ok = sum(r["make_ok"] for r in rr)
            rows.append(
                [
                    f"`{talk}`",
                    sizes.get(talk, {}).get("includes", "?"),
                    fmt,
                    rng(st, s_),
                    pct(st.get("spread")),
                    "/".join(map(str, nproc)),
                    f"{calls:g}",
                    f"{ok}/{len(rr)}",
                ]
            )
        self.w(
            table(
                [
                    "talk",
                    "includes",
                    "format",
                    "build wall s",
                    "spread",
                    "Python processes",
                    "traced lynguine/lamd calls",
                    "builds ok",
                ],
                rows,
            ),
            "",
        )
        failed = [r for r in self.records if not r["make_ok"]]
        if failed:
            self.w(
                "Builds whose make output shows an error (not silently counted): "
                + "; ".join(
                    f"{r['mode']} `{r['talk']}` {r['format']} #{r['run']}: {r['make_errors'][:1]}" for r in failed[:8]
                )
                + ".",
                "",
            )
        # per command
        per_cmd: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        ops: dict[str, int] = defaultdict(int)
        cfg: dict[str, list[int]] = defaultdict(list)
        for r in d:
            cfg_build: dict[str, int] = defaultdict(int)
            for p in r["analysis"]["processes"]:
                if p.get("source") == "exec":
                    continue
                from .memory import command_kind

                kind = command_kind(p["command"], p.get("lamd_command"))
                per_cmd[kind]["wall"].append(p["wall_us"])
                per_cmd[kind]["calls"].append(sum(p["calls"].values()))
                ph = p["phases_us"]
                per_cmd[kind]["start-up+imports"].append(ph.get("python start-up", 0) + ph.get("imports", 0))
                per_cmd[kind]["work"].append(ph.get("lynguine work", 0) + ph.get("lamd work", 0))
                per_cmd[kind]["config parses"].append(p["call_categories"].get("config", 0))
                for cat, n in p["call_categories"].items():
                    ops[cat] += n
                for f, n in p["config_reads"].items():
                    cfg_build[f] += n
            for f, n in cfg_build.items():
                cfg[f].append(n)
        self.w(
            "### Per lamd command (direct builds, all talks and formats)",
            "",
            "Per process, median (min–max): wall ms; start-up + imports ms; lamd + lynguine work ms; traced calls; "
            "config-category calls (configuration parsed or looked up).",
            "",
        )
        rows = []
        for kind, v in sorted(per_cmd.items(), key=lambda kv: -len(kv[1]["wall"])):
            n_builds = len(d)
            rows.append(
                [
                    f"`{kind}`",
                    f"{len(v['wall']) / n_builds:.1f}",
                    rng(c.stats(v["wall"])),
                    rng(c.stats(v["start-up+imports"])),
                    rng(c.stats(v["work"]), lambda u: ms(u, 1)),
                    rng(c.stats(v["calls"]), lambda x: f"{x:g}"),
                    rng(c.stats(v["config parses"]), lambda x: f"{x:g}"),
                ]
            )
        self.w(
            table(
                [
                    "command",
                    "processes per build",
                    "wall ms",
                    "start-up+imports ms",
                    "work ms",
                    "calls",
                    "config calls",
                ],
                rows,
            ),
            "",
        )
        self.w(
            "Operation types over all direct builds (traced calls by category): "
            + ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]))
            + ".",
            "",
        )
        if cfg:
            self.w(
                "Configuration files named in config calls, times per build, median (min–max): "
                + "; ".join(f"`{f}` {rng(c.stats(v), lambda x: f'{x:g}')}" for f, v in sorted(cfg.items()))
                + ".",
                "",
            )
        # where the time goes
        self.w(
            "### Where the build's wall time goes",
            "",
            f"Attribution of each build's wall clock (source: {d[0]['analysis']['attribution_source']}); the "
            "phases of a build add up to its wall time. Seconds, median over the runs.",
            "",
        )
        phases = sorted({phase_group(k) for r in d for k in r["analysis"]["attribution_us"]})
        rows = []
        for (mode, talk, fmt), st in sorted(self.walls.items()):
            if mode != "direct":
                continue
            rr = [r for r in d if r["talk"] == talk and r["format"] == fmt]
            grouped = []
            for r in rr:
                g: dict[str, float] = defaultdict(float)
                for k, v in r["analysis"]["attribution_us"].items():
                    g[phase_group(k)] += v
                grouped.append(g)
            rows.append(
                [f"`{Path(talk).stem}`", fmt]
                + [s_(statistics.median([g.get(p, 0) for g in grouped])) for p in phases]
                + [s_(st["median"])]
            )
        self.w(table(["talk", "format"] + phases + ["wall"], rows), "")
        others: dict[str, list[float]] = defaultdict(list)
        for r in d:
            for k, v in r["analysis"]["attribution_us"].items():
                if k.startswith("other: "):
                    others[k[7:]].append(v)
        if others:
            self.w(
                "Other programs on the critical path, summed over all direct builds, s: "
                + ", ".join(f"{k} {s_(sum(v))}" for k, v in sorted(others.items(), key=lambda kv: -sum(kv[1])))
                + "; other "
                f"(non-Python) processes per build: "
                f"{rng(c.stats([r['analysis'].get('other_processes') or 0 for r in d]), lambda x: f'{x:g}')}.",
                "",
            )
        self.fig_phases()
        j2 = self.compare("direct-j2")
        if j2:
            self.w(
                "### Sequential against `make -j2`",
                "",
                "lamd's `maketalk` runs `make`; with `MAKEFLAGS=-j2` in the environment its rules may run in parallel.",
                "",
            )
            self.w(
                table(
                    ["talk", "format", "make (sequential) s", "make -j2 s", "change", "outside the noise?"],
                    [
                        [
                            f"`{r['talk']}`",
                            r["format"],
                            rng(r["direct"], s_),
                            rng(r["variant"], s_),
                            pct(r["rel"]),
                            "yes" if r["distinct"] else "no",
                        ]
                        for r in j2
                    ],
                ),
                "",
            )
            self.w("", "")

    def memory(self) -> None:
        m = self.section("4. Memory profile", "memory")
        if not m:
            return
        self.w(f"Per lamd command over the direct builds (source: {m['source']}). MiB, median (min–max).", "")
        order = [
            "baseline",
            "after imports",
            "after config load",
            "after data load",
            "after operations",
            "exit",
            "peak",
        ]
        seen = {k for v in m["commands"].values() for k in v}
        moments = [k for k in order if k in seen] + sorted(seen - set(order))
        self.w(
            table(
                ["command"] + moments,
                [[f"`{k}`"] + [rng(v.get(x, {}), mib) for x in moments] for k, v in m["commands"].items()],
            ),
            "",
        )
        seq = m.get("operations_sequence") or {}
        if seq:
            keys = list(next(iter(seq.values())).keys())
            self.w(
                "The operations sequence (one process: imports, config load, data load of a subject folder, the "
                "operations of section 2), RSS in MiB:",
                "",
                table(["subject"] + keys, [[f"`{s}`"] + [mib(v.get(k)) for k in keys] for s, v in seq.items()]),
                "",
            )

    def server(self) -> None:
        s = self.section("5. Server mode, measured", "server")
        if not s:
            return
        self.w(
            "`LAMD_USE_SERVER=1` with lynguine's own server (`lynguine.client.ServerClient`, started on first use). "
            "Cold: no server when the build starts; its start-up is inside the build. Warm: the study started the "
            "server before the builds (time until it answered, below, is outside the build). Each server was ended "
            "by SIGTERM afterwards; servers left running at the end: "
            f"{s.get('servers_left_running') or 'none'}.",
            "",
        )
        rows = []
        for mode in ("server-cold", "server-warm", "quickwin:thin-client"):
            for r in self.compare(mode):
                rows.append(variant_cells(mode, r) + [pct(r["rel"]), "yes" if r["distinct"] else "no (within noise)"])
        self.w(table(["variant", "talk", "format", "direct s", "variant s", "change", "outside the noise?"], rows), "")
        starts = s.get("warm_server_starts") or []
        if starts:
            self.w(
                f"Warm server start-up (spawn until it answers `/api/health`), paid once before the builds: "
                f"{rng(c.stats([x['ready_us'] for x in starts]), s_)} s over {len(starts)} starts.",
                "",
            )
        self.projection()
        same, total, stable = self.identical("server-warm")
        self.w(
            f"Outputs: {same} of {total} warm-server builds produced files byte-identical to a direct build "
            f"(direct builds {'agree' if stable else 'do not all agree'} among themselves).",
            "",
        )
        unstable: dict[tuple[str, str], set[str]] = defaultdict(set)
        groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
        for r in self.records:
            if r["mode"] in ("direct", "untraced"):
                groups[(r["talk"], r["format"])].append(r.get("outputs") or {})
        for key, outs in groups.items():
            for f in set().union(*outs):
                if len({o.get(f) for o in outs}) > 1:
                    unstable[key].add(f)
        if unstable:
            self.w(
                "Direct builds that differ from one run to the next (so no variant can be byte-identical to them): "
                + "; ".join(
                    f"`{Path(t).stem}` {fmt}: " + ", ".join(f"`{Path(f).name}`" for f in sorted(fs)[:4])
                    for (t, fmt), fs in sorted(unstable.items())
                )
                + ".",
                "",
            )
        for mode in ("server-cold", "server-warm"):
            diff = self.differing_files(mode)
            if diff:
                self.w(
                    f"Files that differ from direct mode in {VARIANT_NAMES[mode]}: "
                    + ", ".join(f"`{f}`" for f in diff[:10])
                    + ".",
                    "",
                )

    def projection(self) -> None:
        """lynanalyze's CIP-0008 projection (direct traces) against the measured warm-server builds, and the
        corrected model for lamd's real client."""
        proj_rows = []
        for (mode, talk, fmt), st in sorted(self.walls.items()):
            if mode != "server-warm":
                continue
            direct = [r for r in self.direct() if r["talk"] == talk and r["format"] == fmt]
            warm = [r for r in self.records if r["mode"] == "server-warm" and r["talk"] == talk and r["format"] == fmt]
            if not direct:
                continue
            base = self.walls[("direct", talk, fmt)]["median"]
            req = request_cost_us(warm)
            thin = statistics.median([thin_client_saving(r, req) for r in direct])
            lyn = [lynanalyze_projection(r) for r in direct]
            lyn = [x for x in lyn if x is not None]
            real = statistics.median([real_client_saving(r, req) for r in direct])
            measured = st["median"]
            rows = [talk, fmt, base, measured, base - thin, (statistics.median(lyn) if lyn else None), base - real, st]
            proj_rows.append(rows)
        if not proj_rows:
            return
        self.w(
            "### The CIP-0008 projection against the measurement",
            "",
            "Projected warm-server build wall = direct build wall − the saving the model predicts, from the direct "
            "builds' traces. *Thin-client world* (lynanalyze's model): every lynguine-using process keeps only "
            "interpreter start-up; its imports and work move to the server. *lamd's real client* (corrected "
            "model): only the processes that lamd routes through the server (`mdfield`) change, they still import "
            "lynguine, and their lynguine work is replaced by requests at the cost measured in the warm-server "
            "traces. Error = (projected − measured) / measured; the target is ±15 %.",
            "",
        )
        rows = []
        for talk, fmt, base, measured, thin, lyn, real, st in proj_rows:
            rows.append(
                [
                    f"`{Path(talk).stem}`",
                    fmt,
                    s_(base),
                    rng(st, s_),
                    s_(thin),
                    pct((thin - measured) / measured),
                    s_(lyn) if lyn is not None else "–",
                    pct((lyn - measured) / measured) if lyn is not None else "–",
                    s_(real),
                    pct((real - measured) / measured),
                    "yes" if st["min"] * 0.85 <= real <= st["max"] * 1.15 else "no",
                ]
            )
        self.w(
            table(
                [
                    "talk",
                    "format",
                    "direct s",
                    "measured warm s",
                    "thin-client projection s",
                    "error",
                    "lynanalyze projection s",
                    "error",
                    "real-client projection s",
                    "error",
                    "real-client within ±15 % of the measured range?",
                ],
                rows,
            ),
            "",
        )
        held = sum(1 for *_, real, st in proj_rows if st["min"] * 0.85 <= real <= st["max"] * 1.15)
        thin_held = sum(1 for _, _, _, measured, thin, *_ in proj_rows if abs(thin - measured) <= 0.15 * measured)
        self.w(
            f"The thin-client projection is within ±15 % of the measured warm-server build in {thin_held} of "
            f"{len(proj_rows)} cases; the real-client projection is within ±15 % of the measured range in {held} of "
            f"{len(proj_rows)}. The assumption that fails is the thin client: lamd's `mdfield` imports all of "
            "lynguine (and pandas) before it asks the server, and `flags`, `dependencies` and `mdpp` never ask "
            "it. Numbers in the thin-client world say what CIP-0008 could give if *every* lamd command were a "
            "client that does not import lynguine; numbers in the real-client world say what lamd's server mode "
            "gives today.",
            "",
        )

    def quickwins(self) -> None:
        q = self.section("6. Quick wins, measured", "quickwins")
        if not q:
            return
        self.w(
            "Each variant puts executables first on PATH for the build, standing in for lamd's console scripts "
            "(`analysis/study/quickwins.py` has them); lamd and lynguine are not edited. Same builds, same runs, "
            f"same measurement as direct mode. Lazy-import packages (lynanalyze's lazy-import candidates over the "
            f"direct builds): {', '.join(f'`{p}`' for p in q.get('lazy_packages', [])) or 'none'}.",
            "",
        )
        rows = []
        for mode in QUICK_WINS:
            same, total, stable = self.identical(mode)
            cpu = {(r["talk"], r["format"]): r for r in self.compare(mode, "cpu_us")}
            for r in self.compare(mode):
                rc = cpu.get((r["talk"], r["format"]))
                rows.append(
                    variant_cells(mode, r)
                    + [ms(r["diff_us"]), pct(r["rel"]), "yes" if r["distinct"] else "no"]
                    + ([rng(rc["direct"], s_), rng(rc["variant"], s_), pct(rc["rel"])] if rc else ["–", "–", "–"])
                    + [f"{same}/{total}"]
                )
        self.w(
            table(
                [
                    "variant",
                    "talk",
                    "format",
                    "direct s",
                    "variant s",
                    "saving ms (−: faster)",
                    "change",
                    "outside the noise?",
                    "direct CPU s",
                    "variant CPU s",
                    "CPU change",
                    "runs of this variant (all talks) byte-identical to a direct build",
                ],
                rows,
            ),
            "",
        )
        for mode in QUICK_WINS:
            diff = self.differing_files(mode)
            if diff:
                self.w(
                    f"Files that differ from direct mode in {VARIANT_NAMES[mode]}: "
                    + ", ".join(f"`{f}`" for f in diff[:10])
                    + ".",
                    "",
                )
        self.fig_walls()

    def recommendations(self) -> None:
        self.w("## 7. Recommendations", "", self.recommendation(), "")
        d = self.direct()
        if d:
            tot = self.python_share()
            wall = sum(r["wall_us"] for r in d)
            per_proc = []
            for r in d:
                for p in r["analysis"]["processes"]:
                    if p.get("lamd_command") and p.get("lamd_command") != "maketalk":
                        ph = p["phases_us"]
                        per_proc.append(ph.get("python start-up", 0) + ph.get("imports", 0))
            if per_proc:
                self.w(
                    f"Realistic target: the start-up and imports of a lamd command process are "
                    f"{rng(c.stats(per_proc))} ms each; removing them from every command (one long-lived process, or "
                    f"thin clients for all commands) bounds the saving at {pct((tot.get('imports', 0) + tot.get('python start-up', 0)) / wall)} "
                    f"of the direct builds' wall time; what remains is make, gpp and pandoc, and lynguine's real work.",
                    "",
                )

    def checklist(self) -> None:
        have = lambda k: "done" if self.d.get(k) else "not run"
        self.w(
            "## Acceptance checklist",
            "",
            table(
                ["criterion (task: Profile Lynguine Startup Performance and Usage Patterns)", "where", "status"],
                [
                    ["start-up breakdown, cold and warm, per module, self and cumulative", "§1", have("startup")],
                    [
                        "operation costs on real data (config, first load, read, read+compute, write), repeated",
                        "§2",
                        have("operations"),
                    ],
                    ["≥ 5 talks, notes/slides/posts, n ≥ 3, traced; usage patterns; make -j", "§3", have("builds")],
                    ["memory at moments, per command and for the sequence", "§4", have("memory")],
                    ["server mode cold and warm vs direct; projection within ±15 % or corrected", "§5", have("server")],
                    ["≥ 2 quick wins measured, outputs byte-identical", "§6", have("quickwins")],
                    [
                        "recommendation and realistic targets",
                        "Executive summary, §7",
                        "done" if self.direct() else "not run",
                    ],
                    ["stamped; tables name their commands; noise reported", "header, every table", "done"],
                ],
            ),
            "",
        )
        self.w(
            "## How this report was made",
            "",
            "`make study` (knobs `RUNS=`, `N=`, `STUDY_TALKS=`, `TALKS=`, `LAMD_SRC=`, `FORMATS=`, `VARIANT_FORMATS=`) "
            "installs lamd into `.venv` from `LAMD_SRC`, copies the corpus to `build/study/corpus` and runs "
            "`python -m analysis.study`. Raw traces stay in `build/study/` (not committed). The summaries are in "
            "`analysis/study-data/`; "
            + (
                f"one direct build merged into one trace that opens in Perfetto: "
                f"`analysis/study-data/{self.d['builds']['merged_trace']}`."
                if (self.d.get("builds") or {}).get("merged_trace")
                else ""
            )
            + " Step times (s): "
            + ", ".join(f"{k} {v}" for k, v in self.meta.get("step_seconds", {}).items())
            + ".",
            "",
        )

    # --- figures ------------------------------------------------------------------------------------------
    def _plt(self):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            return plt
        except ImportError:
            return None

    def fig_imports(self, warm: dict[str, Any], cold: dict[str, Any] | None, module: str) -> None:
        plt = self._plt()
        if plt is None:
            return
        pk = list(warm["packages"].items())[:12][::-1]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        y = range(len(pk))
        ax.barh([i + 0.2 for i in y], [v["cumulative_us"]["median"] / 1e3 for _, v in pk], height=0.4, label="warm")
        if cold:
            ax.barh(
                [i - 0.2 for i in y],
                [cold["packages"].get(k, {}).get("cumulative_us", {}).get("median", 0) / 1e3 for k, _ in pk],
                height=0.4,
                label="cold",
            )
        ax.set_yticks(list(y), [k for k, _ in pk])
        ax.set_xlabel("cumulative import time, ms (median)")
        ax.set_title(f"import {module}: cumulative import cost by top-level package")
        ax.legend()
        fig.tight_layout()
        self.save(fig, "import-cost.png", f"Import cost by package, `import {module}`, warm and cold")

    def fig_phases(self) -> None:
        plt = self._plt()
        if plt is None:
            return
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.records:
            groups[r["mode"]].append(r)
        modes = [m for m in VARIANT_ORDER if groups.get(m) and m != "untraced"]
        if not modes:
            return
        vf = (self.meta.get("knobs") or {}).get("variant_formats") or ["notes"]
        talks = sorted({r["talk"] for r in self.records if r["mode"] != "direct"}) or sorted(
            {r["talk"] for r in self.direct()}
        )
        talk = max(talks, key=lambda t: self.meta.get("talk_sizes", {}).get(t, {}).get("includes", 0))
        fmt = vf[0]
        med = {
            m: {
                phase_group(k): v
                for k, v in median_attr([r for r in groups[m] if r["talk"] == talk and r["format"] == fmt]).items()
            }
            for m in modes
            if any(r["talk"] == talk and r["format"] == fmt for r in groups[m])
        }
        order = [
            "python start-up",
            "lynshim",
            "imports",
            "main program",
            "lamd work",
            "lynguine work",
            "lynguine via server",
            "server",
            "gc",
            "atexit",
            "teardown",
            "other programs (make, gpp, pandoc) / waiting",
            "idle / untraced",
            "outside Python",
            "unattributed",
            "rest",
        ]
        seen = {k for v in med.values() for k in v}
        phases = [p for p in order if p in seen] + sorted(seen - set(order))
        fig, ax = plt.subplots(figsize=(11, 4.8))
        left = [0.0] * len(med)
        names = list(med)
        colours = plt.get_cmap("tab20").colors
        for i, ph in enumerate(phases):
            vals = [med[m].get(ph, 0) / 1e6 for m in names]
            ax.barh(range(len(names)), vals, left=left, label=ph, color=colours[i % len(colours)])
            left = [a + b for a, b in zip(left, vals, strict=False)]
        ax.set_yticks(range(len(names)), [VARIANT_NAMES[m] for m in names], fontsize=8)
        ax.set_xlabel("seconds of build wall time (median over runs)")
        ax.set_title(f"Where the time goes: {Path(talk).stem}, {fmt}")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        self.save(
            fig, "build-phases.png", f"Build wall time by phase, `{Path(talk).stem}` {fmt}, direct against the variants"
        )

    def fig_walls(self) -> None:
        plt = self._plt()
        if plt is None:
            return
        vf = (self.meta.get("knobs") or {}).get("variant_formats") or ["notes"]
        fmt = vf[0]
        talks = sorted(
            {r["talk"] for r in self.records if r["mode"] != "direct" and r["format"] == fmt},
            key=lambda t: self.meta.get("talk_sizes", {}).get(t, {}).get("includes", 0),
        )
        modes = [m for m in VARIANT_ORDER if any((m, t, fmt) in self.walls for t in talks)]
        if not talks or not modes:
            return
        fig, ax = plt.subplots(figsize=(11, 5.6))
        width = 0.8 / len(modes)
        for j, m in enumerate(modes):
            xs, meds, lo, hi = [], [], [], []
            for i, t in enumerate(talks):
                st = self.walls.get((m, t, fmt))
                if st:
                    xs.append(i + j * width)
                    meds.append(st["median"] / 1e6)
                    lo.append((st["median"] - st["min"]) / 1e6)
                    hi.append((st["max"] - st["median"]) / 1e6)
            ax.bar(xs, meds, width=width, yerr=[lo, hi], capsize=2, label=VARIANT_NAMES[m])
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(talks))], [Path(t).stem for t in talks], fontsize=7, rotation=10
        )
        ax.set_ylabel(f"build wall time, s ({fmt}; median, min–max)")
        ax.set_title("Direct against server mode and the quick wins")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4)
        fig.tight_layout()
        self.save(fig, "build-walls.png", "Build wall time per talk: direct, server mode, quick wins")

    def save(self, fig, name: str, caption: str) -> None:
        path = self.fig_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        self.w(f"![{caption}](figures/{name})", "")

    def render(self, report_dir: Path) -> str:
        self.fig_dir = report_dir / "figures"
        self.header()
        body_start = len(self.out)
        self.summary()
        self.startup()
        self.operations()
        self.usage()
        self.memory()
        self.server()
        self.quickwins()
        self.recommendations()
        self.checklist()
        del body_start
        return "\n".join(self.out).rstrip() + "\n"


# --- the models ---------------------------------------------------------------------------------------------


def lynguine_processes(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for p in r["analysis"]["processes"]
        if p.get("lamd_command") and p.get("lamd_command") != "maketalk" and p.get("source") != "exec"
    ]


def thin_client_saving(r: dict[str, Any], request_us: float) -> float:
    """Thin-client world: every lamd command process keeps interpreter start-up only, and makes one request
    per traced lynguine call at the measured request cost."""
    saving = 0.0
    for p in lynguine_processes(r):
        kept = p["phases_us"].get("python start-up", 0)
        # one request per field mdfield asks for, one per other command (its batch call)
        requests = max(1, sum(v for k, v in p["calls"].items() if k.endswith("talk_field")))
        saving += p["wall_us"] - kept - requests * request_us
    return saving


def real_client_saving(r: dict[str, Any], request_us: float) -> float:
    """lamd's real client: only mdfield asks the server; its lynguine work becomes requests."""
    saving = 0.0
    for p in lynguine_processes(r):
        if p.get("lamd_command") != "mdfield":
            continue
        n = sum(v for k, v in p["calls"].items() if "talk_field" in k) or 1
        saving += p["phases_us"].get("lynguine work", 0) - n * request_us
    return saving


def request_cost_us(warm: list[dict[str, Any]]) -> float:
    """Median client-side cost of one server request in the warm builds: mdfield's lynguine-work time (the
    traced client calls) divided by its talk_field requests; 0 when not observable."""
    per = []
    for r in warm:
        for p in lynguine_processes(r):
            if p.get("lamd_command") == "mdfield":
                n = sum(v for k, v in p["calls"].items() if "talk_field" in k or "extract_talk_field" in k)
                if n:
                    per.append(p["phases_us"].get("lynguine work", 0) / n)
    return statistics.median(per) if per else 0.0


def lynanalyze_projection(r: dict[str, Any]) -> float | None:
    """lynanalyze's projection is in summed process time; as a build wall time: the direct build's wall time
    less the process time it projects to save."""
    proj = (r["analysis"].get("sections") or {}).get("cip0008_projection")
    if not isinstance(proj, dict):
        return None
    for key in ("projected_build_wall_us", "projected_wall_us"):
        if isinstance(proj.get(key), (int, float)):
            return float(proj[key])
    if isinstance(proj.get("process_time_us"), (int, float)) and isinstance(
        proj.get("projected_process_time_us"), (int, float)
    ):
        return r["wall_us"] - (proj["process_time_us"] - proj["projected_process_time_us"])
    return None


def write(report_dir: Path) -> Path:
    rep = Report(report_dir / "study-data")
    text = rep.render(report_dir)
    path = report_dir / "REPORT.md"
    path.write_text(text)
    c.log(f"wrote {path}")
    return path
