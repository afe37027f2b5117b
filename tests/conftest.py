"""Shared helpers for lynshim's tests: run commands under ``lynshim run`` and read what they wrote.

Tests run real processes with the interpreter running pytest (the project's ``.venv`` in ``make test``),
which has lynshim and the pinned lynguine installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lynshim._native import schema

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
SAMPLE = REPO / "tests" / "sample"

#: The `lynshim` command as users type it: the native launcher (crates/lynlaunch), installed beside the
#: interpreter by `make install`.
LYNSHIM = Path(sys.executable).parent / "lynshim"
#: Both launchers of `lynshim run`: the native command, and the Python one it hands other command lines to
#: (which `lynshim bench` and the study launch through). Tests of the launcher's behaviour run on both.
LAUNCHERS: dict[str, tuple[str, ...]] = {"native": (str(LYNSHIM),), "python": (sys.executable, "-m", "lynshim")}


@pytest.fixture(params=sorted(LAUNCHERS))
def launcher(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The command line that starts ``lynshim``, once per launcher."""
    return LAUNCHERS[request.param]


@pytest.fixture(autouse=True, scope="session")
def _bootstrap_bytecode() -> None:
    """The bootstrap's bytecode is cached, as after an installation's first run, so that the native launcher
    launches every run itself (with none cached it hands the run to the Python launcher, which writes it)."""
    from lynshim import _launch

    _launch.cache_bootstrap_bytecode()


#: The keys of a process's phases in lynanalyze's `processes` section: they add up to its wall time.
PROCESS_PHASES = (
    "startup_us",
    "activation_us",
    "import_us",
    "work_us",
    "program_us",
    "gc_us",
    "atexit_us",
    "shim_write_us",
    "teardown_us",
    "waiting_us",
    "unattributed_us",
)


def load_events(path: Path) -> list[dict[str, Any]]:
    """Events of a trace file; a file cut short (no closing ``]``) is read as far as it goes."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        body = text.rstrip().rstrip(",")
        return json.loads(body + "\n]")


@dataclass
class Trace:
    path: Path
    events: list[dict[str, Any]]

    @property
    def pid(self) -> int:
        return self.meta["pid"]

    @property
    def meta(self) -> dict[str, Any]:
        return next(e["args"] for e in self.events if e.get("name") == schema.EVENT_PROCESS)

    @property
    def is_exec_record(self) -> bool:
        """Written by the preload library (one program image), not by lynshim inside Python."""
        return self.meta.get(schema.ARG_SOURCE) == schema.SOURCE_EXEC

    @property
    def exit(self) -> dict[str, Any] | None:
        return next((e["args"] for e in self.events if e.get("name") == schema.EVENT_EXIT), None)

    @property
    def process_name(self) -> str:
        return next(e["args"]["name"] for e in self.events if e.get("ph") == "M" and e["name"] == "process_name")

    def spans(self, cat: str | None = None) -> list[dict[str, Any]]:
        """Spans as dicts with name, cat, ts, dur, tid, depth (not counting the ``main program`` span that
        encloses the program's work), args (begin and end merged), and the name and the dict of the span
        directly enclosing each (``parent``, ``parent_span``)."""
        out: list[dict[str, Any]] = []
        stacks: dict[int, list[dict[str, Any]]] = {}
        for e in self.events:
            ph = e.get("ph")
            if ph in ("B", "X"):
                # lynshim writes a span with nothing recorded inside it whole, as an `X` event (its own
                # start-up and teardown spans too): inside the spans open on its thread, like a `B`.
                stack = stacks.setdefault(e["tid"], [])
                span = {
                    "name": e["name"],
                    "cat": e["cat"],
                    "ts": e["ts"],
                    "tid": e["tid"],
                    # Depth below the main program, which encloses everything the program does.
                    "depth": sum(1 for o in stack if o["cat"] != schema.CAT_PROGRAM),
                    "args": dict(e.get("args", {})),
                    "parent": stack[-1]["name"] if stack else None,
                    "parent_span": stack[-1] if stack else None,
                }
                out.append(span)
                if ph == "X":
                    span["dur"] = e["dur"]
                else:
                    stack.append(span)
            elif ph == "E":
                stack = stacks.get(e["tid"], [])
                if stack:
                    span = stack.pop()
                    span["dur"] = e["ts"] - span["ts"]
                    span["args"].update(e.get("args", {}))
        return [s for s in out if cat is None or s["cat"] == cat]

    def counters(self, name: str) -> list[float]:
        return [e["args"]["bytes"] for e in self.events if e.get("ph") == "C" and e["name"] == name]


@dataclass
class Run:
    proc: subprocess.CompletedProcess[bytes]
    run_dir: Path | None
    #: lynshim's traces of the Python processes.
    traces: list[Trace] = field(default_factory=list)
    #: The preload library's exec records: one per program image of every process, Python or not.
    programs: list[Trace] = field(default_factory=list)

    def trace_for(self, needle: str) -> Trace:
        found = [t for t in self.traces if needle in t.process_name]
        assert len(found) == 1, (needle, [t.process_name for t in self.traces])
        return found[0]


def lynshim_run(
    out: Path,
    command: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    label: str | None = None,
    timeout: float = 300,
    launcher: tuple[str, ...] = LAUNCHERS["native"],
) -> Run:
    """Run ``lynshim run -o out -- command`` (the native launcher unless told) and load the traces it wrote."""
    # lynguine writes lynguine.log into the working directory: never the repository's.
    if cwd is None:
        cwd = out.parent
        cwd.mkdir(parents=True, exist_ok=True)
    args = [*launcher, "run", "-o", str(out)]
    if label:
        args += ["--label", label]
    proc = subprocess.run(args + ["--", *command], cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout)
    runs = sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []
    run_dir = runs[-1] if runs else None
    every = [Trace(p, load_events(p)) for p in sorted(run_dir.glob("*" + schema.TRACE_SUFFIX))] if run_dir else []
    return Run(proc, run_dir, [t for t in every if not t.is_exec_record], [t for t in every if t.is_exec_record])


def trace_sample_build(root: Path) -> Run:
    """The sample build (seven Python processes calling lynguine under make), traced into ``root/traces``."""
    work = root / "sample"
    shutil.copytree(SAMPLE, work)
    env = clean_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    run = lynshim_run(root / "traces", ["make", "-s", f"PYTHON={sys.executable}"], cwd=work, env=env)
    assert run.proc.returncode == 0, run.proc.stderr
    assert len(run.traces) == 7
    return run


def untraced(
    command: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout)


def clean_env() -> dict[str, str]:
    """The environment without any LYNSHIM_* variable (tests must not inherit a tracing session)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LYNSHIM_")}


LAMD_SRC = REPO.parent / "shared" / "lamd"


def require_lamd() -> None:
    """Real lamd and the talks beside it, installed into this venv as `make study-deps` does; skip when absent."""
    import importlib.util
    import shutil
    import tomllib

    if not CORPUS.is_dir() or not (LAMD_SRC / "lamd").is_dir():
        pytest.skip(f"../shared is absent ({CORPUS} or {LAMD_SRC} missing): these tests need real lamd and talks")
    missing = [t for t in ("gpp", "pandoc", "make") if shutil.which(t) is None]
    if missing:
        reason = f"lamd needs {', '.join(missing)}, not installed here (`make test` installs them as root)"
        # CI (.ci/run sets LYNSHIM_REQUIRE_LAMD_TOOLS=1) has lamd and runs `make test` as root, which
        # installs them: there a missing tool is a failure, not a skip that hides the tests of real builds.
        if os.environ.get("LYNSHIM_REQUIRE_LAMD_TOOLS") == "1" or os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    if importlib.util.find_spec("lamd") is None or importlib.util.find_spec("matplotlib") is None:
        # lamd from ../shared (never PyPI's), and the few PyPI packages beside it.
        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["study"]
        for args in (["--no-deps", str(LAMD_SRC)], deps):
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True, timeout=600)


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is absent ({CORPUS} does not exist); corpus tests need it")
    return CORPUS
