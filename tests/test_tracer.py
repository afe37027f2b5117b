"""lynshim's tracer on real processes: activation, trace contents, multi-process builds and faults.

Every test runs real Python processes under ``lynshim run`` (or with ``LYNSHIM_DIR``) and asserts on the
trace files they leave; the library imported is the real lynguine pinned in pyproject.toml.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SAMPLE, Trace, clean_env, load_events, lynshim_run, untraced
from lynshim._native import schema

PY = sys.executable


def test_import_lynguine_process_is_traced(tmp_path: Path) -> None:
    run = lynshim_run(tmp_path / "t", [PY, "-c", "import lynguine; print('hello')"], env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == b"hello\n"
    assert len(run.traces) == 1
    trace = run.traces[0]
    meta = trace.meta
    # Real pid everywhere, and the metadata the analysis needs.
    assert {e["pid"] for e in trace.events} == {meta["pid"]}
    for key in ("argv", "ppid", "cwd", "executable", "python_version", "run_id", "wall_zero_ns"):
        assert key in meta, key
    assert meta["run_id"] == run.run_dir.name
    assert trace.process_name.startswith("python") and "import lynguine" in trace.process_name
    assert any(
        e.get("ph") == "M" and e["name"] == "thread_name" and e["args"]["name"] == "MainThread" for e in trace.events
    )
    # Start-up: one span from the process's start (ts 0) to activation, with CPU so far.
    startup = trace.spans(schema.CAT_STARTUP)
    assert len(startup) == 1 and startup[0]["ts"] == 0 and startup[0]["dur"] > 0
    # getrusage splits the process's exact CPU time between user and system in proportion to the clock ticks
    # that fell in each: this early, every tick may have fallen in the kernel and user time read 0 (seen in CI).
    # Their sum is the exact time, never 0.
    assert startup[0]["args"]["cpu_user_us"] + startup[0]["args"]["cpu_sys_us"] > 0
    # Imports: pandas, numpy and lynguine, nested as they nest.
    imports = {s["name"]: s for s in trace.spans(schema.CAT_IMPORT)}
    for module in ("pandas", "numpy", "lynguine", "lynguine.util.talk", "yaml"):
        assert module in imports, module
    assert imports["lynguine"]["depth"] == 0
    assert imports["lynguine.util.talk"]["depth"] > imports["lynguine"]["depth"]
    numpy, pandas = imports["numpy"], imports["pandas"]
    assert numpy["parent"] is not None and pandas["dur"] > 0 and numpy["dur"] > 0
    # Every import span closes, and children lie inside their parents.
    spans = trace.spans(schema.CAT_IMPORT)
    assert all("dur" in s for s in spans)
    nested = [s for s in spans if s["parent_span"] is not None]
    assert len(nested) > 100
    for s in nested:
        parent = s["parent_span"]
        assert parent["ts"] <= s["ts"] and s["ts"] + s["dur"] <= parent["ts"] + parent["dur"], (
            s["name"],
            parent["name"],
        )
    # Memory: RSS at activation, after imports and at exit; peak at exit.
    rss = trace.counters(schema.EVENT_RSS)
    assert len(rss) >= 2 and rss[0] < rss[-1]
    assert trace.counters("peak rss")[0] >= max(rss) * 0.5
    # Exit.
    assert trace.exit["exit_status"] == 0
    assert trace.exit["lynguine_version"] == "0.1.2"
    assert trace.path.read_text().rstrip().endswith("]")


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["lamd/__init__.py", "lamd-0.1.3.dist-info/RECORD"], "0.1.3"),
        (["lamd/__init__.py", "Lamd-0.1.3.dist-info/RECORD", "lamd_extras-2.0.dist-info/RECORD"], "0.1.3"),
        # Two versions' leftovers, none, or only an egg: importlib.metadata is asked instead.
        (["lamd/__init__.py", "lamd-0.1.3.dist-info/RECORD", "lamd-0.1.2.dist-info/RECORD"], None),
        (["lamd/__init__.py"], None),
        (["lamd/__init__.py", "lamd-0.1.3.egg-info/PKG-INFO"], None),
        # A module that is not a package directory of that name (a single file, a vendored copy).
        (["lamd.py", "lamd-0.1.3.dist-info/RECORD"], None),
        (["vendor/lamd/__init__.py", "lamd-0.1.3.dist-info/RECORD"], None),
    ],
)
def test_a_library_version_is_read_beside_its_package(tmp_path: Path, entries: list[str], expected: str | None) -> None:
    import types

    from lynshim import _activate

    for entry in entries:
        (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / entry).touch()
    module = types.ModuleType("lamd")
    module.__file__ = str(tmp_path / entries[0])
    assert _activate._version_beside(module, "lamd") == expected


def test_run_record_and_summary_line(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    # The program names its parent: the launcher asked for, which launched the run itself.
    code = "import os, sys; print(os.readlink(f'/proc/{os.getppid()}/exe')); sys.exit(3)"
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env(), label="cold", launcher=launcher)
    assert run.proc.returncode == 3
    assert Path(run.proc.stdout.decode().strip()) == Path(launcher[0]).resolve()
    record = json.loads((run.run_dir / schema.RUN_RECORD).read_text())
    assert record["exit_status"] == 3 and record["label"] == "cold"
    assert record["command"][0] == PY and record["traced_processes"] == 1
    assert record["end_unix_ns"] > record["start_unix_ns"]
    assert record["children_user_s"] + record["children_sys_s"] > 0
    assert run.proc.stderr.decode().strip().splitlines()[-1].startswith("lynshim: traced 1 Python process;")
    assert run.traces[0].exit["exit_status"] == 3


def test_multi_process_make_build(tmp_path: Path) -> None:
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    env = clean_env()
    env["PATH"] = str(Path(PY).parent) + os.pathsep + env["PATH"]
    run = lynshim_run(tmp_path / "t", ["make", "-s", f"PYTHON={PY}"], cwd=work, env=env)
    assert run.proc.returncode == 0, run.proc.stderr
    # One file per Python process make started (seven rules), each named by its command.
    assert len(run.traces) == 7
    names = sorted(t.process_name for t in run.traces)
    assert "lamd_calls.py mdfield title talk.md" in names
    assert len({t.pid for t in run.traces}) == 7
    assert len({t.path.name for t in run.traces}) == 7
    # make and sh are not Python: each trace's parent is the exec record of the program that started it.
    records = {str(p.path): p for p in run.programs}
    for trace in run.traces:
        parent = records[trace.meta["parent_trace"]]
        assert parent.pid == trace.meta["parent_pid"] == trace.meta["ppid"]
        assert parent.process_name.startswith(("make", "sh")), parent.process_name
        assert trace.exit["exit_status"] == 0
    assert (work / "out" / "title.txt").read_text() == "Where does the time go?\n"


def test_parent_links_between_python_processes(tmp_path: Path) -> None:
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'print(1)'], check=True)"
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == 0
    assert len(run.traces) == 2
    parent = next(t for t in run.traces if "subprocess" in t.process_name)
    child = next(t for t in run.traces if t is not parent)
    # The parent's lynshim trace, never its exec record (both exist, with the same pid and start ticks).
    assert child.meta["parent_trace"] == str(parent.path)
    assert child.meta["parent_pid"] == parent.pid
    assert any(p.pid == parent.pid for p in run.programs)
    # One clock: the child starts after its parent.
    assert child.meta["wall_zero_ns"] > parent.meta["wall_zero_ns"]


IMPORTS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("csv") is not None  # asks only: no span
    import xml.dom.minidom  # each parent package first, as a span of its own
    assert xml.dom.minidom.__loader__ is xml.dom.minidom.__spec__.loader
    assert type(xml.dom.minidom.__loader__).__name__ == "SourceFileLoader"
    try:
        import no_such_module_here
    except ModuleNotFoundError:
        print("not found")
    """
)


def test_import_spans_leave_the_import_system_as_it_was(tmp_path: Path) -> None:
    run = lynshim_run(tmp_path / "t", [PY, "-c", IMPORTS_SCRIPT], env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == b"not found\n"
    (trace,) = run.traces
    spans = {s["name"]: s for s in trace.spans(schema.CAT_IMPORT)}
    assert "csv" not in spans
    assert spans["xml"]["depth"] == spans["xml.dom"]["depth"] == spans["xml.dom.minidom"]["depth"] == 0
    assert spans["no_such_module_here"]["args"][schema.ARG_ERROR] == "ModuleNotFoundError"


def _import_spans_traced_and_bare(tmp_path: Path, files: dict[str, str], code: str) -> list[dict]:
    """Run ``code`` beside ``files`` bare and traced; check the program saw the same (output, exit status,
    tracebacks) and return the traced process's import spans."""
    work = tmp_path / "work"
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(textwrap.dedent(text))
    code = textwrap.dedent(code)
    # Without bytecode files, so that the second run finds exactly what the first did.
    env = clean_env() | {"PYTHONDONTWRITEBYTECODE": "1"}
    bare = untraced([PY, "-c", code], cwd=work, env=env)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], cwd=work, env=env)
    assert run.proc.returncode == bare.returncode, run.proc.stderr
    assert run.proc.stdout == bare.stdout
    assert run.proc.stderr.decode().splitlines()[:-1] == bare.stderr.decode().splitlines()
    (trace,) = run.traces
    return trace.spans(schema.CAT_IMPORT)


def test_two_threads_importing_one_package_share_the_module_and_one_span(tmp_path: Path) -> None:
    files = {"slowpkg/__init__.py": "import time\ntime.sleep(0.3)\nTOKEN = object()\n"}
    code = """
        import importlib, threading
        barrier = threading.Barrier(2)
        got = []
        def load():
            barrier.wait()
            got.append(importlib.import_module("slowpkg"))
        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(got), got[0] is got[1], got[0].TOKEN is got[1].TOKEN)
        """
    spans = _import_spans_traced_and_bare(tmp_path, files, code)
    assert [s["name"] for s in spans].count("slowpkg") == 1


def test_import_module_of_a_package_and_its_submodules_nests_spans(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "",
        "pkg/sub.py": "from . import leaf\nVALUE = leaf.VALUE + 1\n",
        "pkg/leaf.py": "VALUE = 41\n",
        "other/__init__.py": "",
        "other/deep.py": "NAME = __name__\n",
    }
    code = """
        import importlib, sys
        pkg = importlib.import_module("pkg")
        sub = importlib.import_module("pkg.sub")
        deep = importlib.import_module("other.deep")  # its parent package first, as its own span
        print(sub.VALUE, pkg.sub is sub, deep.NAME, sys.modules["other"].deep is deep)
        """
    spans = {s["name"]: s for s in _import_spans_traced_and_bare(tmp_path, files, code)}
    assert spans["pkg"]["depth"] == spans["pkg.sub"]["depth"] == 0
    assert spans["pkg.leaf"]["parent"] == "pkg.sub"
    assert spans["other"]["depth"] == spans["other.deep"]["depth"] == 0


def test_circular_imports_behave_as_in_bare_python(tmp_path: Path) -> None:
    files = {
        "ring_a.py": "import ring_b\nX = 1\ndef f():\n    return ring_b.Y\n",
        "ring_b.py": "import ring_a\nY = 2\ndef g():\n    return ring_a.X\n",
        "knot_a.py": "from knot_b import B\nA = 1\n",
        "knot_b.py": "from knot_a import A\nB = 2\n",
    }
    code = """
        import traceback
        import ring_a
        print(ring_a.f(), ring_a.ring_b.g())
        try:
            import knot_a
        except ImportError as err:
            print(type(err).__name__, err, err.name)
            traceback.print_exc()
        """
    spans = {s["name"]: s for s in _import_spans_traced_and_bare(tmp_path, files, code)}
    assert spans["ring_b"]["parent"] == "ring_a"
    assert spans["knot_b"]["parent"] == "knot_a"
    assert spans["knot_a"]["args"][schema.ARG_ERROR] == spans["knot_b"]["args"][schema.ARG_ERROR] == "ImportError"


def test_reload_behaves_as_in_bare_python(tmp_path: Path) -> None:
    files = {"counted.py": "import builtins\nbuiltins.runs = getattr(builtins, 'runs', 0) + 1\nRUNS = runs\n"}
    code = """
        import importlib
        import counted
        again = importlib.reload(counted)
        print(again is counted, counted.RUNS)
        """
    spans = _import_spans_traced_and_bare(tmp_path, files, code)
    assert [s["name"] for s in spans].count("counted") == 1  # reload runs the module without importing it


def test_namespace_packages_behave_as_in_bare_python(tmp_path: Path) -> None:
    files = {"nspkg/part.py": "V = 'part'\n", "elsewhere/nspkg/other.py": "V = 'other'\n"}
    code = """
        import sys
        sys.path.append("elsewhere")
        import nspkg.part, nspkg.other
        print(nspkg.__file__, list(nspkg.__path__), nspkg.__spec__.origin, nspkg.part.V, nspkg.other.V)
        """
    spans = {s["name"]: s for s in _import_spans_traced_and_bare(tmp_path, files, code)}
    assert {"nspkg", "nspkg.part", "nspkg.other"} <= set(spans)
    assert spans["nspkg.part"]["depth"] == 0


@pytest.mark.parametrize("how", ["statement", "import_module", "uncaught", "parent"])
def test_a_module_raising_a_non_import_error_gives_the_bare_traceback(tmp_path: Path, how: str) -> None:
    files = {
        "broken/__init__.py": "",
        "broken/child.py": "X = 1\nraise ValueError('boom')\n",
        "brokenparent/__init__.py": "raise ValueError('boom')\n",
        "brokenparent/child.py": "",
    }
    load = {
        "statement": "import broken.child",
        "import_module": "importlib.import_module('broken.child')",
        "uncaught": "import broken.child",
        "parent": "importlib.import_module('brokenparent.child')",
    }[how]
    if how == "uncaught":
        code = load
    else:
        code = f"""
        import importlib, traceback
        try:
            {load}
        except ValueError:
            traceback.print_exc()
        """
    spans = {s["name"]: s for s in _import_spans_traced_and_bare(tmp_path, files, code)}
    if how == "parent":
        assert spans["brokenparent"]["args"][schema.ARG_ERROR] == "ValueError"
        assert "brokenparent.child" not in spans
    else:
        assert spans["broken.child"]["args"][schema.ARG_ERROR] == "ValueError"
        assert schema.ARG_ERROR not in spans["broken"]["args"]


OUTPUT_SCRIPT = textwrap.dedent(
    """
    import sys
    from lynguine.util.talk import talk_field
    print("field:", talk_field("title", "talk.md", user_file=["_lamd.yml"]))
    print("to stderr", file=sys.stderr)
    sys.stdout.write(sys.stdin.read().upper())
    sys.exit(7)
    """
)


def test_output_and_exit_status_are_byte_identical(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    script = work / "script.py"
    script.write_text(OUTPUT_SCRIPT)
    bare = untraced([PY, str(script)], cwd=work, env=clean_env(), input=b"some input\n")
    traced = lynshim_run(
        tmp_path / "t", [PY, str(script)], cwd=work, env=clean_env(), input=b"some input\n", launcher=launcher
    )
    assert bare.returncode == traced.proc.returncode == 7
    assert traced.proc.stdout == bare.stdout
    summary = b"lynshim: traced 1 Python process;"
    lines = traced.proc.stderr.splitlines(keepends=True)
    assert lines[-1].startswith(summary)
    assert b"".join(lines[:-1]) == bare.stderr


def test_uncaught_exception(tmp_path: Path) -> None:
    code = "import lynguine\nraise KeyError('boom')"
    bare = untraced([PY, "-c", code], env=clean_env(), cwd=tmp_path)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == bare.returncode == 1
    assert run.proc.stderr.splitlines()[:-1] == bare.stderr.splitlines()
    trace = run.traces[0]
    assert trace.exit["exit_status"] == 1
    assert trace.path.read_text().rstrip().endswith("]")


def test_sigterm_closes_the_trace_and_dies_of_sigterm(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    code = "import os, signal, lynguine\nos.kill(os.getpid(), signal.SIGTERM)\nimport time; time.sleep(5)"
    bare = untraced([PY, "-c", code], env=clean_env(), cwd=tmp_path)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env(), launcher=launcher)
    assert bare.returncode == run.proc.returncode == -15
    trace = run.traces[0]
    assert trace.exit["exit_signal"] == 15 and trace.exit["exit_status"] is None
    assert json.loads(trace.path.read_text())  # complete JSON, closing bracket included


def test_sigterm_ends_the_process_where_python_never_gets_to_its_handler(tmp_path: Path) -> None:
    # CPython runs a Python-level handler only when its main thread next checks for signals. Here that thread
    # is in a long computation in C, which no signal interrupts; bare, SIGTERM's default action ends the
    # process at once. (The same wait, for ever, hung a multiprocessing pool whose worker was taking its
    # queue's lock as the pool terminated it.) lynshim's native guard ends it soon after, with a complete
    # trace. SIGALRM's default action is the backstop that fails the test instead of waiting a minute.
    code = textwrap.dedent(
        """
        import itertools, os, signal, subprocess, lynguine
        signal.alarm(30)
        # From another process: a thread of this one would wait for the GIL, which sum() never lets go.
        subprocess.Popen(["sh", "-c", f"sleep 1; kill -TERM {os.getpid()}"])
        sum(itertools.repeat(1, 10**11))
        print("not ended")
        """
    )
    bare = untraced([PY, "-c", code], env=clean_env(), cwd=tmp_path)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert bare.returncode == run.proc.returncode == -signal.SIGTERM, run.proc.stderr
    assert run.proc.stdout == bare.stdout == b""
    trace = run.traces[0]
    assert trace.exit["exit_signal"] == signal.SIGTERM and trace.exit["exit_status"] is None
    assert json.loads(trace.path.read_text())  # complete JSON, closing bracket included
    assert any(s["name"] == "lynguine" for s in trace.spans(schema.CAT_IMPORT))


def test_a_signal_handled_in_a_fork_child_before_lynshims_fork_handler(tmp_path: Path) -> None:
    # A SIGTERM that a forked child handles before lynshim's fork handler has run (a multiprocessing pool
    # terminating a worker it had just started) found the parent's session there and ended it: it joined the
    # parent's threads, which the child does not have, said "internal error" on stderr, and would have
    # written the exit into the parent's file. The program's own fork handler, registered before lynshim
    # starts tracing so that it runs first, ends the session here as lynshim's SIGTERM handler would.
    code = textwrap.dedent(
        """
        import os, sys, lynshim
        from lynshim import _native
        os.register_at_fork(after_in_child=lambda: _native.killed_by_signal(15))
        lynshim.start(sys.argv[1])
        with lynshim.span("before fork"):
            pass
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        """
    )
    out = tmp_path / "t"
    proc = subprocess.run([PY, "-c", code, str(out)], env=clean_env(), cwd=tmp_path, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"0\n", b"")
    (parent,) = [Trace(p, load_events(p)) for p in out.glob("*" + schema.TRACE_SUFFIX)]
    assert json.loads(parent.path.read_text())
    assert parent.exit["exit_status"] == 0 and parent.exit["exit_signal"] is None
    assert [s["name"] for s in parent.spans(schema.CAT_USER)] == ["before fork"]


def test_multiprocessing_pool_terminated_as_bare(tmp_path: Path) -> None:
    # A fork pool's `with` block terminates its workers: the program ends as it does bare, and each worker's
    # trace is complete, whichever way the worker ended: by the pool's SIGTERM (blocked on the queue's lock,
    # say), or through os._exit(0) after taking the pool's sentinel, the way every forked child of
    # multiprocessing ends.
    code = textwrap.dedent(
        """
        import multiprocessing
        def started(both):
            global barrier
            barrier = both
        def square(x):
            barrier.wait(timeout=60)  # one task each: both workers are up and traced
            return x * x
        if __name__ == "__main__":
            context = multiprocessing.get_context("fork")
            with context.Pool(2, initializer=started, initargs=(context.Barrier(2),)) as pool:
                print(pool.map(square, range(2), chunksize=1))
        """
    )
    script = tmp_path / "pool.py"
    script.write_text(code)
    bare = untraced([PY, str(script)], env=clean_env(), cwd=tmp_path, timeout=60)
    run = lynshim_run(tmp_path / "t", [PY, str(script)], env=clean_env(), timeout=60)
    expected = (0, b"[0, 1]\n")
    assert (run.proc.returncode, run.proc.stdout) == (bare.returncode, bare.stdout) == expected
    workers = [t for t in run.traces if "forked_from" in t.meta]
    (pool,) = [t for t in run.traces if t not in workers]
    assert len(workers) == 2 and pool.exit["exit_status"] == 0
    for worker in workers:
        assert worker.meta["forked_from"] == str(pool.path)
        assert (worker.exit["exit_status"], worker.exit["exit_signal"]) in ((0, None), (None, signal.SIGTERM))
        assert json.loads(worker.path.read_text())


def test_program_sigterm_handler_is_left_alone(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, signal, sys
        signal.signal(signal.SIGTERM, lambda *a: (print("handled"), sys.exit(4)))
        os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == 4 and run.proc.stdout == b"handled\n"
    assert run.traces[0].exit["exit_status"] == 4


def test_killed_process_leaves_a_loadable_partial_trace(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, signal, time, lynshim
        import lynguine
        for i in range(200):
            with lynshim.span("step", i=i):
                pass
        time.sleep(0.3)  # the writer thread catches up; what follows is lost
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == -9
    trace = run.traces[0]
    text = trace.path.read_text()
    assert not text.rstrip().endswith("]")
    events = load_events(trace.path)  # parses once the missing ] is allowed
    steps = [s for s in Trace(trace.path, events).spans(schema.CAT_USER) if s["name"] == "step"]
    # At most the last few events are lost.
    assert len(steps) >= 200 - 64 // 2
    assert any(s["name"] == "lynguine" for s in Trace(trace.path, events).spans(schema.CAT_IMPORT))
    assert trace.exit is None


@pytest.mark.parametrize("where", ["process", "fork child"])
def test_os_exit_writes_the_trace_out(tmp_path: Path, where: str) -> None:
    # os._exit runs neither Python's exit nor C's exit handlers (every forked multiprocessing child ends that
    # way): lynshim's wrapper writes every span and the exit status first. The function still looks like
    # the real one to the program.
    code = textwrap.dedent(
        f"""
        import inspect, os, pickle, posix, sys, lynshim, lynguine
        assert os._exit.__name__ == "_exit" and str(inspect.signature(os._exit)) == "(status)"
        assert posix._exit is os._exit and pickle.loads(pickle.dumps(os._exit)) is os._exit
        if {where == "fork child"!r} and os.fork():
            print(os.waitstatus_to_exitcode(os.wait()[1]))
            sys.exit(0)
        for i in range(200):
            with lynshim.span("step", i=i):
                pass
        print("done", flush=True)
        os._exit(9)
        print("after")
        """
    )
    bare = untraced([PY, "-c", code], env=clean_env(), cwd=tmp_path)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert (run.proc.returncode, run.proc.stdout) == (bare.returncode, bare.stdout), run.proc.stderr
    (trace,) = [t for t in run.traces if (where == "fork child") == ("forked_from" in t.meta)]
    assert json.loads(trace.path.read_text())  # complete JSON, closing bracket included
    assert trace.exit["exit_status"] == 9 and trace.exit["exit_signal"] is None
    assert trace.exit.get("lynguine_version")
    assert [s["args"]["i"] for s in trace.spans(schema.CAT_USER)] == list(range(200))


def test_lynshim_threads_are_named_and_take_no_signals(tmp_path: Path) -> None:
    # Both threads lynshim adds to a traced process carry its name, as `top -H`, `perf` and /proc show them:
    # its emitter, and tracing-chrome's writer, which tracing-chrome spawns unnamed (it showed under the
    # program's own name). The program's thread keeps its name. Nothing here starts other threads.
    # Both block every signal but a fault's: a signal sent to the process goes to a thread that does not
    # block it, and on one of lynshim's CPython's handler only notes it for the main thread, which a blocking
    # call then never leaves. The program's thread keeps its mask.
    code = textwrap.dedent(
        """
        import os, time, lynshim
        from lynshim import _native
        with lynshim.span("something to write"):
            pass
        _native.flush()
        task = f"/proc/{os.getpid()}/task"
        for _ in range(200):
            threads = {True: [], False: []}  # is it the program's own thread: (name, blocked signals)
            for tid in os.listdir(task):
                status = dict(line.split(":\t", 1) for line in open(f"{task}/{tid}/status").read().splitlines())
                threads[int(tid) == os.getpid()].append((status["Name"], int(status["SigBlk"], 16)))
            if "lynshim-writer" in dict(threads[False]):
                break
            time.sleep(0.01)
        print(repr((threads[True], sorted(threads[False]))))
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    [(program, program_mask)], others = ast.literal_eval(run.proc.stdout.decode())
    assert (program, program_mask) == (Path(PY).name[:15], 0)
    assert [name for name, _ in others] == ["lynshim-emitter", "lynshim-writer"], others
    for name, mask in others:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            assert mask & (1 << (signum - 1)), (name, signum)
        assert not mask & (1 << (signal.SIGSEGV - 1) | 1 << (signal.SIGBUS - 1)), name


def test_fork_child_writes_its_own_file(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, lynshim
        with lynshim.span("before fork"):
            pass
        pid = os.fork()
        if pid == 0:
            with lynshim.span("in child"):
                import json
            raise SystemExit(0)
        _, status = os.waitpid(pid, 0)
        with lynshim.span("in parent"):
            pass
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert len(run.traces) == 2
    child = next(t for t in run.traces if "forked_from" in t.meta)
    parent = next(t for t in run.traces if t is not child)
    assert child.meta["forked_from"] == str(parent.path)
    assert {s["name"] for s in child.spans(schema.CAT_USER)} == {"in child"}
    assert {s["name"] for s in parent.spans(schema.CAT_USER)} == {"before fork", "in parent"}
    assert json.loads(parent.path.read_text()) and json.loads(child.path.read_text())
    assert child.exit["exit_status"] == 0 and parent.exit["exit_status"] == 0


def test_threads_get_their_own_tracks(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import threading, lynshim
        def work():
            with lynshim.span("in thread"):
                pass
        t = threading.Thread(target=work, name="worker-1")
        t.start(); t.join()
        with lynshim.span("in main"):
            pass
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    trace = run.traces[0]
    names = {e["tid"]: e["args"]["name"] for e in trace.events if e.get("ph") == "M" and e["name"] == "thread_name"}
    spans = {s["name"]: s for s in trace.spans(schema.CAT_USER)}
    assert names[spans["in thread"]["tid"]] == "worker-1"
    assert names[spans["in main"]["tid"]] == "MainThread"
    assert spans["in main"]["tid"] == trace.pid


def test_a_program_recording_faster_than_the_writer_writes_loses_nothing(tmp_path: Path) -> None:
    """A traced function called in a tight loop records faster than the writer can write (on a machine
    with two cores, where the writer shares one with lynshim's emitter): the traced thread waits for it
    rather than have its oldest records dropped, which lynshim did beyond 256 batches in flight (a fifth
    of these calls, on the machine this was written on). Every call is in the file, and nothing is said on
    stderr."""
    calls = 600_000
    code = textwrap.dedent(
        f"""
        import sys, lynshim
        from lynshim import _patch
        lynshim.start(sys.argv[1])
        def tight(x, note):
            return x
        tight = _patch.wrap(tight, "tight", "compute")
        note = "n" * 200  # recorded whole: every event is a few hundred bytes for the writer
        for i in range({calls}):
            tight(i, note)
        print("done")
        """
    )
    proc = subprocess.run([PY, "-c", code, str(tmp_path / "t")], env=clean_env(), capture_output=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout == b"done\n", proc.stderr.decode()
    assert proc.stderr == b""
    (trace,) = (tmp_path / "t").glob("*.lynshim.json")
    # Counted in the text: as Python dicts, this many spans would take a gigabyte of memory.
    text = trace.read_text()
    # One event per call, `X`, or a `B` and an `E` where a list of records ends between the two.
    assert text.count('"ph":"X","name":"tight"') + text.count('"ph":"B","name":"tight"') == calls
    assert text.count('"ph":"B","name":"tight"') == text.count('"ph":"E","name":"tight"')
    assert text.rstrip().endswith("]")


def test_a_call_whose_end_repeats_a_begin_key_keeps_both_values(tmp_path: Path) -> None:
    """A traced call with nothing recorded inside it is written as one complete event, its begin's and its
    end's args in one object, when the end's keys are known to be none of the begin's. A parameter named as
    an end key (`result`), by name or passed by keyword, keeps the begin and the end apart: one object could
    hold the key once, and the begin's value would be lost."""
    code = textwrap.dedent(
        """
        import sys, lynshim
        from lynshim import _patch
        lynshim.start(sys.argv[1])
        def by_name(result):
            return [1, 2]
        def by_keyword(x, **kwargs):
            return [1, 2, 3]
        def plain(x):
            return [1]
        by_name = _patch.wrap(by_name, "by_name", "compute")
        by_keyword = _patch.wrap(by_keyword, "by_keyword", "compute")
        plain = _patch.wrap(plain, "plain", "compute")
        by_name("asked")
        by_keyword(1, result="given")
        plain("p")
        """
    )
    proc = subprocess.run([PY, "-c", code, str(tmp_path / "t")], env=clean_env(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    (path,) = (tmp_path / "t").glob("*.lynshim.json")
    events = {(e["name"], e["ph"]): e.get("args") for e in load_events(path) if e.get("cat") == schema.CAT_COMPUTE}
    assert events[("by_name", "B")] == {"result": "asked"}
    assert events[("by_name", "E")] == {"result": "list[2]"}
    assert events[("by_keyword", "B")] == {"x": 1, "result": "given"}
    assert events[("by_keyword", "E")] == {"result": "list[3]"}
    assert events[("plain", "X")] == {"x": "p", "result": "list[1]"}


def test_unwritable_trace_dir_warns_once_and_runs_on(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    env = clean_env()
    env[schema.ENV_DIR] = str(blocked / "traces")
    code = "import lynshim, lynguine; print('ran')\nwith lynshim.span('x'): pass"
    proc = subprocess.run([PY, "-c", code], env=env, capture_output=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == b"ran\n"
    warnings = [line for line in proc.stderr.decode().splitlines() if line.startswith("lynshim:")]
    assert len(warnings) == 1 and "tracing is off" in warnings[0]


def test_in_code_activation_and_api(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import lynshim
        assert not lynshim.is_active()
        path = lynshim.start(DIR)
        assert lynshim.is_active() and path == lynshim.trace_path()

        @lynshim.span("decorated", what="x")
        def f(a, b=2):
            "doc"
            return a + b

        import os
        with lynshim.span("outer", api_token=os.environ["SECRET"], rss=True):
            assert f(1) == 3
        assert f.__name__ == "f" and f.__doc__ == "doc"
        lynshim.stop()
        assert not lynshim.is_active()
        print(path)
        """
    ).replace("DIR", repr(str(tmp_path / "api")))
    env = clean_env()
    env["SECRET"] = "s3cret"
    proc = subprocess.run(
        [PY, "-c", code, "--password", "hunter2", "--api-key=k3y"], env=env, capture_output=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.decode().strip())
    trace = Trace(path, json.loads(path.read_text()))
    spans = {s["name"]: s for s in trace.spans(schema.CAT_USER)}
    assert spans["decorated"]["parent"] == "outer"
    assert spans["decorated"]["args"]["what"] == "x"
    assert spans["outer"]["args"]["api_token"] == schema.REDACTED
    text = path.read_text()
    assert "s3cret" not in text and "hunter2" not in text and "k3y" not in text
    assert trace.meta["argv"][-3:] == ["--password", schema.REDACTED, "--api-key=" + schema.REDACTED]
    assert trace.exit is None  # stopped, not exited
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_import_lynshim_without_environment_does_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PY, "-c", "import lynshim, os; print(lynshim.is_active())"], cwd=tmp_path, env=clean_env(), capture_output=True
    )
    assert proc.stdout == b"False\n" and proc.stderr == b""
    assert list(tmp_path.iterdir()) == []


def test_import_lynshim_with_environment_activates(tmp_path: Path) -> None:
    env = clean_env()
    env[schema.ENV_DIR] = str(tmp_path / "env")
    proc = subprocess.run(
        [PY, "-c", "import lynshim; print(lynshim.is_active())"], env=env, capture_output=True, cwd=tmp_path
    )
    assert proc.stdout == b"True\n"
    files = list((tmp_path / "env").glob("*" + schema.TRACE_SUFFIX))
    assert len(files) == 1
    assert stat.S_IMODE((tmp_path / "env").stat().st_mode) == 0o700


def test_existing_sitecustomize_still_runs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE'] = 'ran'\n")
    env = clean_env()
    env["PYTHONPATH"] = str(site)
    run = lynshim_run(tmp_path / "t", [PY, "-c", "import os; print(os.environ.get('USER_SITECUSTOMIZE'))"], env=env)
    assert run.proc.stdout == b"ran\n"
    assert len(run.traces) == 1


def test_python_that_cannot_import_lynshim_runs_untraced(tmp_path: Path) -> None:
    other = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True)
    run = lynshim_run(tmp_path / "t", [str(other / "bin" / "python"), "-c", "print('plain')"], env=clean_env())
    assert run.proc.returncode == 0 and run.proc.stdout == b"plain\n"
    assert run.traces == []
    assert b"traced 0 Python processes" in run.proc.stderr


def test_a_lynshim_that_cannot_load_leaves_the_program_alone(tmp_path: Path) -> None:
    # A Python half and a native module from two different builds (an interrupted rebuild): the native
    # module lacks a schema name the Python half needs. The program runs as without lynshim; one line says why.
    broken = tmp_path / "broken"
    shutil.copytree(Path(__import__("lynshim").__file__).parent, broken / "lynshim")
    init = broken / "lynshim" / "_lifecycle.py"
    init.write_text(
        init.read_text().replace("schema.EVENT_GC", "schema.EVENT_NOT_IN_THIS_BUILD", 1) + "\nschema.NO_SUCH_NAME\n"
    )
    env = clean_env()
    env["PYTHONPATH"] = str(broken)
    run = lynshim_run(tmp_path / "t", [PY, "-c", "print('plain')"], env=env)
    assert run.proc.returncode == 0 and run.proc.stdout == b"plain\n"
    lines = run.proc.stderr.decode().splitlines()
    assert sum("lynshim: tracing is off for this process" in line for line in lines) == 1, lines
    assert not any("Error in sitecustomize" in line for line in lines), lines
    assert run.traces == []


def test_command_not_found(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    run = lynshim_run(tmp_path / "t", ["definitely-not-a-command-xyz"], env=clean_env(), launcher=launcher)
    assert run.proc.returncode == 127
    assert b"definitely-not-a-command-xyz: command not found" in run.proc.stderr


def test_lynshim_help() -> None:
    proc = subprocess.run([PY, "-m", "lynshim", "run", "--help"], capture_output=True)
    assert proc.returncode == 0 and b"-o DIR" in proc.stdout


def test_trace_files_are_private_and_never_clobbered(tmp_path: Path) -> None:
    run = lynshim_run(tmp_path / "t", [PY, "-c", "pass"], env=clean_env())
    path = run.traces[0].path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pid, start, nonce = path.name.removesuffix(schema.TRACE_SUFFIX).split("-")
    assert int(pid) == run.traces[0].pid and int(start) > 0 and len(nonce) == 8


def test_import_lynshim_with_tracing_off_loads_no_native_module() -> None:
    code = (
        "import sys, lynshim; loaded = [m for m in ('lynshim._native', '__future__') if m in sys.modules]; "
        "print(loaded); print(lynshim.schema.ENV_DIR == lynshim._ENV_DIR, lynshim.__version__ != '', "
        "lynshim.is_active())"
    )
    proc = subprocess.run([PY, "-c", code], env=clean_env(), capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["[]", "True True False"]


def test_lynshim_bytecode_is_written_whatever_pythondontwritebytecode_says(tmp_path: Path) -> None:
    # A copy of the package, so that its __pycache__ starts empty; only lynshim's own modules get bytecode.
    package = Path(__import__("lynshim").__file__).parent
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy / "lynshim", ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        **clean_env(),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": f"{copy / 'lynshim' / '_bootstrap'}:{copy}",
        schema.ENV_DIR: str(tmp_path / "t"),
    }
    script = tmp_path / "prog.py"
    (tmp_path / "helper.py").write_text("X = 1\n")
    script.write_text(
        "import sys; sys.path.insert(0, sys.argv[1]); import helper; import lynshim; print(lynshim.is_active())\n"
    )
    proc = subprocess.run([PY, str(script), str(tmp_path)], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "True"
    cached = {p.name.split(".")[0] for p in (copy / "lynshim" / "__pycache__").glob("*.pyc")}
    assert {"__init__", "_activate", "_imports", "_patch", "targets"} <= cached
    assert not (tmp_path / "__pycache__").exists()  # the program's own modules: as the variable says


def test_bootstrap_leaves_sys_path_as_an_untraced_run_has_it(tmp_path: Path) -> None:
    code = "import sys, json; print(json.dumps(sys.path))"
    bare = subprocess.run([PY, "-c", code], env=clean_env(), capture_output=True, text=True, check=True)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == 0
    assert json.loads(run.proc.stdout) == json.loads(bare.stdout)


def _activate_with_bootstrap(tmp_path: Path, stand_in: str) -> subprocess.CompletedProcess[bytes]:
    # lynshim.start sees `stand_in` as importlib's bootstrap module (the import system keeps using the
    # real one, which is put back at once), then the program imports, forks and exits.
    code = textwrap.dedent(
        f"""
        import os, sys, types
        real = sys.modules["_frozen_importlib"]
        {stand_in}
        import lynshim
        path = lynshim.start(DIR)
        sys.modules["_frozen_importlib"] = real
        print(path is not None, lynshim.is_active(), os.getpid())
        import csv
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)
        os.waitpid(pid, 0)
        """
    ).replace("DIR", repr(str(tmp_path / "out")))
    return subprocess.run([PY, "-c", code], env=clean_env(), capture_output=True, cwd=tmp_path)


def test_a_python_without_the_hooks_private_names_is_traced_without_import_spans(tmp_path: Path) -> None:
    proc = _activate_with_bootstrap(tmp_path, 'sys.modules["_frozen_importlib"] = types.ModuleType("bare")')
    assert proc.returncode == 0, proc.stderr
    started, active, pid = proc.stdout.split()
    assert started == active == b"True"
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "import spans and patching are off on this Python" in lines[0], lines
    traces = [Trace(p, json.loads(p.read_text())) for p in sorted((tmp_path / "out").glob("*" + schema.TRACE_SUFFIX))]
    assert len(traces) == 2  # the fork handler gave the child its own file
    parent = next(t for t in traces if t.pid == int(pid))
    child = next(t for t in traces if t is not parent)
    assert child.meta["forked_from"] == str(parent.path)
    assert parent.exit["exit_status"] == child.exit["exit_status"] == 0  # the atexit handler closed both
    assert all(not t.spans(schema.CAT_IMPORT) for t in traces)


def test_hooks_that_fail_to_install_leave_tracing_off(tmp_path: Path) -> None:
    stand_in = textwrap.dedent(
        """
        class Frozen(types.ModuleType):
            def __setattr__(self, name, value):
                raise AttributeError(name + " is read-only")
        frozen = Frozen("frozen")
        vars(frozen).update(vars(real))
        sys.modules["_frozen_importlib"] = frozen
        """
    ).replace("\n", "\n        ")
    proc = _activate_with_bootstrap(tmp_path, stand_in)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == [b"False", b"False"]
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "tracing is off for this process (installing its hooks failed" in lines[0], lines
    assert len(list((tmp_path / "out").glob("*" + schema.TRACE_SUFFIX))) == 1  # no file from the child


def test_a_module_name_that_is_not_utf8_fails_to_import_as_in_bare_python(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib, traceback
        for name in ["x\\udcff", "json.x\\udcff", "x\\udcff.y"]:
            try:
                importlib.import_module(name)
            except BaseException as err:
                print(type(err).__name__, ascii(str(err)), ascii(getattr(err, "name", None)))
                traceback.print_exc()
        """
    )
    bare = untraced([PY, "-c", code], env=clean_env(), cwd=tmp_path)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == bare.returncode == 0
    assert run.proc.stdout == bare.stdout and run.proc.stdout.startswith(b"ModuleNotFoundError")
    assert run.proc.stderr.splitlines()[:-1] == bare.stderr.splitlines()


def test_span_times_line_up_with_the_monotonic_clock(tmp_path: Path) -> None:
    # Spans are timed on the records' clock (the CPU's counter where the kernel keeps time by it) and
    # written in CLOCK_MONOTONIC, converted between anchors read batch by batch: each span must lie inside a
    # window timed around it with time.monotonic_ns() and recorded as it was timed (`_native.complete`).
    # Twenty windows of 15 ms cross several of the emitter's 50 ms batches, and a flush in the middle.
    code = textwrap.dedent(
        """
        import time, lynshim
        from lynshim import _native
        for i in range(20):
            t0 = time.monotonic_ns()
            with lynshim.span(f"inner{i}"):
                time.sleep(0.015)
            t1 = time.monotonic_ns()
            _native.complete(f"window{i}", "user", t0, t1)
            if i == 10:
                _native.flush()
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    spans = {s["name"]: s for s in run.traces[0].spans()}
    for i in range(20):
        inner, window = spans[f"inner{i}"], spans[f"window{i}"]
        # Microseconds, written to the nanosecond: the anchors themselves are read within a microsecond.
        assert window["ts"] - 1 <= inner["ts"], (inner, window)
        assert inner["ts"] + inner["dur"] <= window["ts"] + window["dur"] + 1, (inner, window)
        assert 15000 <= inner["dur"] <= window["dur"] + 1, (inner, window)
