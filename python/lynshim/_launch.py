"""Launching a traced run: the command under the bootstrap and the preload library, into a new run
directory, with a run record written beside its traces. ``python -m lynshim run`` and ``lynshim bench`` both
launch through here; the native ``lynshim`` command (``crates/lynlaunch``) launches plain runs the same way
itself, and ``tests/test_launcher.py`` holds the two to the same environment, record and summary.

The bootstrap ``sitecustomize`` goes first on ``PYTHONPATH``, so that every Python process of the tree
that can import lynshim writes a trace into the run directory, and the preload library
``_preload/liblynexec.so`` (``crates/lynexec``) first in ``LD_PRELOAD``, so that every program image of
the tree, Python or not, writes an exec record there too.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lynshim import _native, targets
from lynshim._native import schema

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"
#: Built by ``make install`` (``cargo build -p lynexec``), shipped in the wheel; never committed.
PRELOAD_LIBRARY = Path(__file__).resolve().parent / "_preload" / "liblynexec.so"


def preload_library() -> tuple[Path | None, str]:
    """The exec-tracing library to preload, or ``None`` and why not (for the summary line)."""
    if not PRELOAD_LIBRARY.is_file():
        return None, f"{PRELOAD_LIBRARY} is missing; `make install` builds it"
    # The dynamic loader splits LD_PRELOAD at spaces and colons, and says so on every program's stderr
    # when a piece is not a library: a path holding either cannot be preloaded cleanly.
    if any(c in str(PRELOAD_LIBRARY) for c in " :"):
        return None, f"its path {PRELOAD_LIBRARY} holds a space or colon, which LD_PRELOAD cannot carry"
    return PRELOAD_LIBRARY, ""


def new_run_id() -> str:
    # os.urandom is what secrets.token_hex reads; importing secrets (hashlib, random…) would cost the
    # launcher, which runs in front of every traced command, about 13 ms here.
    return time.strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(3).hex()


def cache_bootstrap_bytecode() -> None:
    """Write the bootstrap's ``.pyc`` when it is missing or stale, once per run, here in the launcher.

    ``site`` imports the bootstrap before lynshim can do anything about ``PYTHONDONTWRITEBYTECODE``
    (which lynshim's own modules ignore, see the bootstrap), so under that variable every traced
    process would compile it again. Nothing is lost when the directory cannot be written.
    """
    import importlib.util

    source = BOOTSTRAP_DIR / "sitecustomize.py"
    try:
        cached = Path(importlib.util.cache_from_source(str(source)))
        if cached.is_file() and cached.stat().st_mtime >= source.stat().st_mtime:
            return
    except (OSError, ValueError):
        return
    # Imported only when there is something to compile: py_compile costs the launcher about 10 ms.
    import py_compile

    try:
        py_compile.compile(str(source), cfile=str(cached), doraise=True)
    except (OSError, py_compile.PyCompileError):
        pass


def traced_environment(
    run_dir: Path, run_id: str, label: str | None, cwd: Path, preload: Path | None = None
) -> dict[str, str]:
    """The environment CMD runs in: bootstrap on PYTHONPATH, the preload library first in LD_PRELOAD
    (when given; any existing value is kept after it), where to write, which targets."""
    env = dict(os.environ)
    cache_bootstrap_bytecode()
    paths = [str(BOOTSTRAP_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if preload is not None:
        env["LD_PRELOAD"] = ":".join(p for p in (str(preload), env.get("LD_PRELOAD", "")) if p)
    env[schema.ENV_DIR] = str(run_dir)
    env[schema.ENV_RUN_ID] = run_id
    env[schema.ENV_BOOTSTRAP] = str(BOOTSTRAP_DIR)
    if label:
        env[schema.ENV_LABEL] = label
    added, dropped = targets.from_pyproject(str(cwd / "pyproject.toml"))
    if added or dropped:
        env_added, env_dropped = targets.parse_env(env.get(schema.ENV_TARGETS, ""))
        env[schema.ENV_TARGETS] = targets.to_env(added + env_added, dropped | env_dropped)
    return env


def trace_source(path: Path) -> str:
    """Who wrote a trace file: ``schema.SOURCE_EXEC`` (the preload library) or ``schema.SOURCE_PYTHON``
    (lynshim in a Python process; also what a file without the key, or one that cannot be read, counts
    as). The rule is the native launcher's (``crates/lynlaunch/src/summary.rs``)."""
    return _native.trace_source(path)


class Launch:
    """What one traced run of a command gave."""

    def __init__(
        self, returncode: int, run_dir: Path, traces: list[Path], wall_s: float, exec_traced: bool = False
    ) -> None:
        self.returncode = returncode
        self.run_dir = run_dir
        #: Every trace file of the run, of either source.
        self.traces = traces
        self.wall_s = wall_s
        #: The preload library was in the command's environment.
        self.exec_traced = exec_traced
        sources = {path: trace_source(path) for path in traces}
        #: lynshim's traces of Python processes.
        self.python_traces = [p for p in traces if sources[p] != schema.SOURCE_EXEC]
        #: The preload library's exec records (one per program image, Python or not).
        self.exec_records = [p for p in traces if sources[p] == schema.SOURCE_EXEC]


def launch(
    out: Path,
    label: str | None,
    command: list[str],
    *,
    extra_env: dict[str, str] | None = None,
    quiet: bool = False,
    exec_trace: bool = True,
) -> Launch | int:
    """Run ``command`` traced into a new run directory under ``out``; an int is an exit status on failure.
    With ``exec_trace``, every program image is recorded too (when the preload library is installed)."""
    cwd = Path.cwd()
    run_id = new_run_id()
    run_dir = (out / run_id).resolve()
    try:
        run_dir.mkdir(mode=0o700, parents=True)
    except OSError as err:
        print(
            f"lynshim: cannot create the trace directory {run_dir}: {err.strerror}; choose another with -o DIR",
            file=sys.stderr,
        )
        return 2
    preload = preload_library()[0] if exec_trace else None
    try:
        env = traced_environment(run_dir, run_id, label, cwd, preload)
    except (ValueError, KeyError, OSError) as err:
        print(f"lynshim: {cwd / 'pyproject.toml'}: bad [tool.lynshim] table: {err}", file=sys.stderr)
        return 2
    env.update(extra_env or {})

    start_ns = time.time_ns()
    started = time.perf_counter()
    output = subprocess.DEVNULL if quiet else None
    # Like a shell, and in place before the command starts (so that no signal can end the launcher and leave
    # the command running without a record): SIGTERM sent to us is passed on; the terminal's Ctrl-C reaches
    # the command directly, and we outlive it. Caught, not ignored, so that the command starts with both at
    # their defaults; a signal the caller ignores stays ignored, for us and the command alike.
    child: subprocess.Popen[bytes] | None = None
    terminated: list[int] = []

    def on_sigterm(signum: int, _frame: object) -> None:
        if child is not None:
            child.send_signal(signum)
        else:
            terminated.append(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    # A caller that ignores SIGCHLD would have the kernel reap the command unseen, with no status for us to
    # report: SIGCHLD goes back to its default here, and the command gets it ignored, as from the caller.
    give_back_sigchld = None
    if previous[signal.SIGCHLD] is signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        give_back_sigchld = functools.partial(signal.signal, signal.SIGCHLD, signal.SIG_IGN)
    if previous[signal.SIGINT] is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    if previous[signal.SIGTERM] is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        try:
            # subprocess closes descriptors above 2 for the command (the native launcher passes them on, as a
            # shell does); passing them here would start it by posix_spawn, which leaves glibc's internal
            # signal 32 ignored in it (see crates/lynlaunch/src/launch.rs).
            child = subprocess.Popen(command, env=env, stdout=output, stderr=output, preexec_fn=give_back_sigchld)
        except OSError as err:
            code, what = {
                FileNotFoundError: (127, "command not found"),
                PermissionError: (126, "permission denied"),
            }.get(type(err), (126, err.strerror or str(err)))
            print(f"lynshim: {command[0]}: {what}", file=sys.stderr)
            return -signal.SIGTERM if terminated else code
        if terminated:
            child.send_signal(signal.SIGTERM)
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    wall_s = time.perf_counter() - started
    end_ns = time.time_ns()

    result = Launch(returncode, run_dir, sorted(run_dir.glob("*" + schema.TRACE_SUFFIX)), wall_s, preload is not None)
    user_s, sys_s = _native.children_cpu_s()
    record = {
        "run_id": run_id,
        "label": label,
        "command": command,
        "cwd": str(cwd),
        "start_unix_ns": start_ns,
        "end_unix_ns": end_ns,
        "exit_status": returncode if returncode >= 0 else None,
        "exit_signal": -returncode if returncode < 0 else None,
        "children_user_s": user_s,
        "children_sys_s": sys_s,
        # Python processes, as before exec records existed (lynanalyze counts the others from their files).
        "traced_processes": len(result.python_traces),
    }
    try:
        _native.write_run_record(run_dir / schema.RUN_RECORD, record)
    except ValueError as err:
        print(f"lynshim: could not write the run record: {err}", file=sys.stderr)
    return result


def summary(result: Launch, exec_trace: bool, where: str) -> str:
    """The one line ``lynshim run`` ends with: what was traced, and where the traces are (worded by the native
    launcher's code, so that both launchers end alike)."""
    not_traced = preload_library()[1] if exec_trace and not result.exec_traced else None
    return _native.run_summary(result.python_traces, result.exec_records, not_traced, where)
