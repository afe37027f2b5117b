"""How the traced process is started, and what lynshim's start-up cost reads as: by Python, or by a shell.

    .venv/bin/python analysis/spawn_route.py [--rounds N]

Until 2026-12-01 `make bench` timed its start-up rows with each command started directly by the bench's
own Python process (`subprocess.run`); `lynshim run`'s launcher starts the program itself, and in a lamd
build make, or the shell it runs a command in, starts every Python process. In the bench's five runs of
2026-11-30 and 2026-12-01 the in-process row on `import lynguine` read 0.001 to 0.029 above `lynshim run`'s
(README's table), though `lynshim run` does all that in-process tracing does and more (its launcher, the
preload library); the bench now starts every command by `sh` (`bench.started_by_sh`). This script times
`python -c 'import lynguine'` bare and traced in-process, each started both ways (directly by this Python
process, and by `sh`, a small native process that waits for it, as make or its shell is in a build), and
under `lynshim run`, in the same rounds (the order rotating from round to round), so that the route's share
of the difference is measured rather than guessed:

- each traced route against the bare run started the same way (the ratio `make bench` reports);
- the bare run started by `sh` against the one started directly (what the route does without lynshim);
- in-process traced, started directly less started by `sh`, as a share of the round's bare run.

Never part of `make test` (it takes minutes and measures time); its arithmetic is tested in
tests/test_benchmark_statistics.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis import bench  # noqa: E402 - needs the repository on sys.path

#: The routes, in the order of a round's rotation; each traced one names the bare route it is set against.
BARE, BARE_SH = "bare, started directly", "bare, started by sh"
IN_PROCESS, IN_PROCESS_SH = "in-process, started directly", "in-process, started by sh"
RUN = "lynshim run (its launcher starts it)"
AGAINST = {IN_PROCESS: BARE, IN_PROCESS_SH: BARE_SH, RUN: BARE}


def routes(script: Path, out: Path) -> dict[str, Callable[[int], list[str]]]:
    """Each route's command for round `i`, as `bench.timed` runs it (NAME=VALUE words in front: a fresh trace
    directory per traced run, as `lynshim run` makes)."""
    program = [bench.PY, str(script)]

    def traced(i: int, name: str) -> list[str]:
        return bench.env_words(bench.in_process_env(out / name / str(i)))

    return {
        BARE: lambda i: program,
        BARE_SH: lambda i: bench.started_by_sh(program),
        IN_PROCESS: lambda i: [*traced(i, "direct"), *program],
        IN_PROCESS_SH: lambda i: bench.started_by_sh([*traced(i, "sh"), *program]),
        RUN: lambda i: [bench.LYNSHIM, "run", "-o", str(out / "run"), "--", *program],
    }


def summary(rows: list[dict[str, float]]) -> list[str]:
    """The report's lines from each round's wall times by route: ratios with the 95 % interval of their
    median, and in-process tracing started directly less started by sh, as a share of the round's bare run."""
    lines = ["| route | against | median ratio | 95 % interval of the median |", "| --- | --- | --- | --- |"]
    for name, against in [*AGAINST.items(), (BARE_SH, BARE)]:
        ratios = [row[name] / row[against] for row in rows]
        lines.append(f"| {name} | {against} | {statistics.median(ratios):.4f} | {bench.interval_text(ratios)} |")
    gap = [(row[IN_PROCESS] - row[IN_PROCESS_SH]) / row[BARE] for row in rows]
    lines.append("")
    lines.append(
        f"{IN_PROCESS} less {IN_PROCESS_SH}, as a share of the round's bare run: median "
        f"{100 * statistics.median(gap):+.2f} %, 95 % interval of the median {_percent_interval(gap)} "
        f"(rounds: {len(rows)})"
    )
    return lines


def _percent_interval(values: list[float]) -> str:
    interval = bench.median_interval(values)
    if interval is None:
        return "(too few rounds)"
    low, high = interval
    return f"{100 * low:+.2f} to {100 * high:+.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=160, help="rounds of every route (default 160: about 11 minutes)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="lynshim-spawn-") as tmp:
        work = Path(tmp)
        script = work / "import_lynguine.py"
        script.write_text("import lynguine\n")
        launches = routes(script, work / "out")
        bench.timed(launches[BARE](-1))  # warm the page cache
        rows: list[dict[str, float]] = []
        for i, round_ in enumerate(bench.interleaved(dict.fromkeys(launches, args.rounds))):
            rows.append({name: bench.timed(launches[name](i)) for name in round_})
            if (i + 1) % 20 == 0:
                print(f"{i + 1}/{args.rounds} rounds", file=sys.stderr, flush=True)
    print(f"python -c 'import lynguine'; rounds: {args.rounds}; CPUs: {os.cpu_count()}; {bench.PY}")
    print()
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
