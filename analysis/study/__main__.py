"""``python -m analysis.study``: run the study's steps and regenerate the report.

Raw traces go to ``--out`` (default build/study/, never committed); the report, its figures and the small
JSON summaries go to ``--report-dir`` (default analysis/). ``--steps`` runs a subset; ``--report-only``
rebuilds the report from the summaries already there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import common as c

STEPS = ["startup", "operations", "builds", "memory", "server", "quickwins", "report"]
DEFAULT_TALKS = [
    "_ai/the-atomic-human-google.md",
    "_ai/ai-and-data-science.md",
    "_ai/the-atomic-human-max-planck-lecture.md",
    "_business/knowledge-work-in-the-ai-era.md",
    "_ai/the-atomic-human-st-andrews.md",
]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m analysis.study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lamd-src", type=Path, default=c.REPO.parent / "shared" / "lamd")
    p.add_argument(
        "--talks",
        type=Path,
        default=c.REPO.parent / "shared" / "corpus",
        help="the corpus folder (with talks/ and snippets/)",
    )
    p.add_argument(
        "--study-talks",
        default=" ".join(DEFAULT_TALKS),
        help="talks to build, space-separated, relative to TALKS/talks",
    )
    p.add_argument("--formats", default="notes slides posts", help="formats of the direct-mode builds")
    p.add_argument(
        "--variant-formats",
        default="notes",
        help="formats of the server-mode and quick-win builds (a subset keeps the run short)",
    )
    p.add_argument("--runs", type=int, default=3, help="repeats of every build")
    p.add_argument("-n", type=int, default=5, help="repeats of every bench and operation")
    p.add_argument("--modules", default=None, help="modules for the start-up benches (default: the task's list)")
    p.add_argument("--out", type=Path, default=c.REPO / "build" / "study")
    p.add_argument("--report-dir", type=Path, default=c.REPO / "analysis")
    p.add_argument("--steps", default=",".join(STEPS))
    p.add_argument(
        "--lazy-candidates",
        type=int,
        default=6,
        help="how many of lynanalyze's lazy-import candidates to probe for the lazy-imports quick win",
    )
    p.add_argument("--jobs-talk", default=None, help="talk for the make -j comparison (default: the largest)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for what, path, needle in (
        ("lamd source (LAMD_SRC)", args.lamd_src, "lamd"),
        ("talks corpus (TALKS)", args.talks, "talks"),
    ):
        if not (path / needle).is_dir():
            print(
                f"study: the {what} is not at {path} (no {needle}/ folder there). Point the study at it: "
                f"make study LAMD_SRC=/path/to/lamd TALKS=/path/to/corpus",
                file=sys.stderr,
            )
            return 2
    talks = args.study_talks.split()
    for t in talks:
        if not (args.talks / "talks" / t).is_file():
            print(f"study: talk {t} is not in {args.talks / 'talks'}", file=sys.stderr)
            return 2
    try:
        import lamd  # noqa: F401
    except ImportError:
        print("study: lamd is not installed in this Python; `make study` installs it", file=sys.stderr)
        return 2
    from . import pipeline

    started = time.time()
    try:
        pipeline.run(args, talks, [s.strip() for s in args.steps.split(",") if s.strip()])
    finally:
        left = c.lynguine_servers()
        if left:
            c.log(f"ending lynguine servers still running: {left}")
            c.end_servers(left)
    c.log(f"study done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
