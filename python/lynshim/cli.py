"""The ``lynshim`` command: ``lynshim run [-o DIR] [--label NAME] -- CMD [ARGS…]``, and ``lynshim bench``.

``run`` starts CMD with the bootstrap ``sitecustomize`` first on ``PYTHONPATH``, so that every Python
process of its tree that can import lynshim writes a trace into one run directory, and with the preload
library ``_preload/liblynexec.so`` (``crates/lynexec``) first in ``LD_PRELOAD``, so that every program
image of the tree, Python or not, writes an exec record there too. CMD inherits stdin, stdout and stderr
untouched; ``lynshim run`` exits with CMD's status (dying of the same signal when CMD did), writes a run
record beside the traces and prints one line on stderr saying what was traced and where. The launching
itself is ``_launch``'s (``lynshim bench`` launches through it too); the bench is ``bench``'s.

This is the command line's one definition. The ``lynshim`` command users type is native
(``crates/lynlaunch``): it launches the plain forms of ``run`` itself, the same way, without a Python
start-up in front of the command, and hands every other command line here (``python -m lynshim``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from lynshim import _launch, _native


def run(out: Path, label: str | None, command: list[str], exec_trace: bool = True) -> int:
    result = _launch.launch(out, label, command, exec_trace=exec_trace)
    if isinstance(result, int):
        return die_of(-result) if result < 0 else result
    cwd = Path.cwd()
    where = os.path.relpath(result.run_dir) if result.run_dir.is_relative_to(cwd) else str(result.run_dir)
    print(_launch.summary(result, exec_trace, where), file=sys.stderr)
    return die_of(-result.returncode) if result.returncode < 0 else result.returncode


def die_of(signum: int) -> int:
    """Die of the command's signal, so whoever started us sees what they would have seen; 128 + signum when
    that signal does not end a process. No core file is written for the launcher: the command's own, when it
    dumped one, is the one to keep (the same name in the same folder, with the default core_pattern)."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError):
        pass
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL and SIGSTOP cannot be handled, and need not be reset
        pass
    os.kill(os.getpid(), signum)
    return 128 + signum


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lynshim",
        description="Trace every Python process of a command (a lamd build, say) into Chrome-trace "
        "files that open in Perfetto and that lynanalyze reads.",
    )
    parser.add_argument("--version", action="version", version=f"lynshim {_native.__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    run_parser = sub.add_parser(
        "run",
        help="run a command with every process in it traced (Python in detail)",
        description="Run CMD so that every Python process it starts that can import lynshim writes a "
        "trace file into DIR/<run-id>/, and every other dynamically linked program (make, sh, pandoc…) "
        "an exec record there. Exits with CMD's status.",
        epilog="example: lynshim run -o traces -- make talk.slides.html",
    )
    run_parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("lynshim-traces"),
        metavar="DIR",
        help="directory for the run's traces (default: ./lynshim-traces)",
    )
    run_parser.add_argument("--label", help="a label stored with the run (e.g. 'cold' or 'server-mode')")
    run_parser.add_argument(
        "--no-exec-trace",
        dest="exec_trace",
        action="store_false",
        help="trace Python processes only: leave the preload library out of LD_PRELOAD",
    )
    run_parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS…]", help="the command to trace")
    bench_parser = sub.add_parser(
        "bench",
        help="time a command N times under tracing, phase by phase (start-up, imports, work)",
        description="Run CMD N times under tracing (after W untimed warm-up runs) and report, for every "
        "Python process it starts, min/median/max of each phase: interpreter start-up, imports by "
        "package, lamd work, lynguine work by category, the rest; and the command's wall time. With "
        "--cold, every file the command's Python processes opened is evicted from the page cache "
        "before each run (no root needed), and the residency check says whether that worked.",
        epilog="example: lynshim bench -n 5 --cold -- python -c 'import lynguine'",
    )
    bench_parser.add_argument("-n", type=int, default=5, metavar="N", help="timed runs (default 5)")
    bench_parser.add_argument("--warmup", type=int, default=1, metavar="W", help="untimed runs first (default 1)")
    bench_parser.add_argument("--cold", action="store_true", help="evict the command's files before each run")
    bench_parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("lynshim-bench"),
        metavar="DIR",
        help="directory for the traces and bench.json (default: ./lynshim-bench)",
    )
    bench_parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS…]")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error(f"{args.verb}: no command given (usage: lynshim {args.verb} [options] -- CMD [ARGS…])")
    if args.verb == "run":
        return run(args.out, args.label, command, args.exec_trace)
    if args.verb == "bench":
        if args.n < 1 or args.warmup < 0:
            parser.error("bench: -n must be at least 1 and --warmup at least 0")
        from lynshim import bench

        return bench.bench(command, n=args.n, warmup=args.warmup, cold=args.cold, out=args.out)
    parser.error(f"unknown command {args.verb}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
