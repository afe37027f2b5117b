"""Exec records under ``lynshim run``: the preload library (crates/lynexec) records every program of a real
make build — make, sh, mkdir, cat, wc, gpp and the Python processes — beside lynshim's Python traces,
without changing the build's output or exit status.

The library is ``python/lynshim/_preload/liblynexec.so``, put there by ``make install``; without it these
tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import LAUNCHERS, SAMPLE, Trace, clean_env, load_events, untraced
from lynshim import _launch
from lynshim._native import schema

PY = sys.executable
GPP = shutil.which("gpp")
# Keys of exec records that the Python half has no constant for (crates/lynschema `arg`).
START_TICKS = "start_ticks"
PARENT_START_TICKS = "parent_start_ticks"

# The sample build plus non-Python steps: a pipeline of coreutils and, where installed, gpp (which lamd
# runs on every talk).
EXTRA_RULES = """
include Makefile
all: out/words.txt {gpp_target}
out/words.txt: out/title.txt out/venue.txt
\tcat out/title.txt out/venue.txt | wc -w > $@
out/talk.gpp.md: talk.md | out
\tgpp -H -o $@ talk.md
"""


@pytest.fixture(autouse=True)
def preload_library() -> Path:
    path, why = _launch.preload_library()
    if path is None:
        pytest.skip(f"the preload library is not installed: {why}")
    return path


def identity(trace: Trace) -> tuple[int, int]:
    """A process: pid and start ticks, from the file name (``{pid}-{ticks}-{nonce}``), for either kind."""
    pid, ticks, _ = trace.path.name.split("-", 2)
    return int(pid), int(ticks)


def program(trace: Trace) -> str:
    return os.path.basename(trace.meta["argv"][0])


@dataclass
class Traced:
    proc: subprocess.CompletedProcess[bytes]
    run_dir: Path
    #: lynshim's traces of Python processes.
    traces: list[Trace]
    #: The preload library's exec records.
    records: list[Trace]

    @property
    def summary(self) -> str:
        return self.proc.stderr.decode().splitlines()[-1]


def traced(
    out: Path,
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
    launcher: tuple[str, ...] = LAUNCHERS["native"],
) -> Traced:
    """``lynshim run -o out [options] -- command``, its traces and records apart (told by their source)."""
    proc = subprocess.run(
        [*launcher, "run", "-o", str(out), *options, "--", *command],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        timeout=600,
    )
    run_dir = next(out.iterdir())
    every = [Trace(p, load_events(p)) for p in sorted(run_dir.glob("*" + schema.TRACE_SUFFIX))]
    records = [t for t in every if t.meta.get(schema.ARG_SOURCE) == schema.SOURCE_EXEC]
    return Traced(proc, run_dir, [t for t in every if t not in records], records)


def build(tmp_path: Path, name: str) -> tuple[Path, list[str], dict[str, str]]:
    """A fresh copy of the sample build with the extra rules: (directory, command, environment)."""
    work = tmp_path / name
    shutil.copytree(SAMPLE, work)
    (work / "Makefile.exec").write_text(EXTRA_RULES.format(gpp_target="out/talk.gpp.md" if GPP else ""))
    env = clean_env()
    env["PATH"] = str(Path(PY).parent) + os.pathsep + env["PATH"]
    return work, ["make", "-s", "-f", "Makefile.exec", f"PYTHON={PY}"], env


def test_every_program_of_a_build_is_recorded(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    bare_work, command, env = build(tmp_path, "bare")
    bare = untraced(command, cwd=bare_work, env=env)
    work, command, env = build(tmp_path, "traced")
    run = traced(tmp_path / "traces", command, cwd=work, env=env, launcher=launcher)
    # The build is the same build: status, output, and what it made.
    assert bare.returncode == run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == bare.stdout
    *build_stderr, summary = run.proc.stderr.splitlines(keepends=True)
    assert b"".join(build_stderr) == bare.stderr
    for made in sorted((bare_work / "out").iterdir()):
        assert (work / "out" / made.name).read_bytes() == made.read_bytes(), made.name

    # lynshim's Python traces, as without exec records, and one exec record per program image.
    assert len(run.traces) == 7
    records = run.records
    programs = {program(r) for r in records}
    expected = {"make", "sh", "mkdir", "cat", "wc", Path(PY).name} | ({"gpp"} if GPP else set())
    assert expected <= programs, programs
    for record in records:
        # Every image that started ended, with the status make saw: a whole, strictly valid file.
        assert record.exit is not None and record.exit["exit_status"] == 0, record.meta["argv"]
        assert record.meta[schema.ARG_SOURCE] == schema.SOURCE_EXEC
        assert record.meta["run_id"] == run.run_dir.name
        spans = record.spans(schema.CAT_PROCESS)
        assert len(spans) == 1 and spans[0]["dur"] > 0 and spans[0]["name"] == program(record)

    # Each Python trace has the exec record of its own process (same pid and start ticks).
    by_identity = {identity(r): r for r in records}
    for trace in run.traces:
        python_record = by_identity[identity(trace)]
        assert program(python_record) == Path(PY).name
        assert python_record.meta["pid"] == trace.meta["pid"] and python_record.meta["ppid"] == trace.meta["ppid"]
        assert python_record.meta[START_TICKS] == identity(trace)[1]
        # The record's image starts before lynshim activated in it.
        assert python_record.meta["wall_zero_ns"] <= trace.meta["wall_zero_ns"] + trace.meta["activated_us"] * 1000

    # Parent links: every record but make's names a recorded parent (pid and start ticks), and every
    # chain ends at make, whose parent is `lynshim run` itself.
    make = [r for r in records if program(r) == "make"]
    assert len(make) == 1
    for record in records:
        at, hops = record, 0
        while at is not make[0]:
            parent = (at.meta["ppid"], at.meta[PARENT_START_TICKS])
            assert parent in by_identity, (record.meta["argv"], parent)
            at, hops = by_identity[parent], hops + 1
            assert hops < 10

    # make's recipes are shells; what they run are their children.
    shells = [r for r in records if program(r) == "sh"]
    assert shells and all(r.meta["ppid"] == make[0].meta["pid"] for r in shells)
    wc = next(r for r in records if program(r) == "wc")
    assert by_identity[(wc.meta["ppid"], wc.meta[PARENT_START_TICKS])] in shells

    # The summary line counts both kinds, each process once.
    others = {identity(r) for r in records} - {identity(t) for t in run.traces}
    assert summary.startswith(f"lynshim: traced 7 Python processes and {len(others)} other processes;".encode())
    record = json.loads((run.run_dir / schema.RUN_RECORD).read_text())
    assert record["traced_processes"] == 7


def test_no_exec_trace_leaves_the_library_out(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    command = ["sh", "-c", "echo hi; ls / > /dev/null"]
    run = traced(tmp_path / "t", command, cwd=tmp_path, launcher=launcher)
    assert run.proc.returncode == 0 and run.proc.stdout == b"hi\n"
    assert {program(r) for r in run.records} == {"sh", "ls"}
    n = len({identity(r) for r in run.records})
    assert run.summary.startswith(f"lynshim: traced 0 Python processes and {n} other process")

    run = traced(tmp_path / "n", command, cwd=tmp_path, options=("--no-exec-trace",), launcher=launcher)
    assert run.proc.returncode == 0 and run.proc.stdout == b"hi\n"
    assert list(run.run_dir.glob("*" + schema.TRACE_SUFFIX)) == []
    assert run.proc.stderr.decode().splitlines() == [
        f"lynshim: traced 0 Python processes; traces in n/{run.run_dir.name}/"
    ]


def test_without_the_library_one_line_says_so(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from lynshim import _launch, cli; "
        "_launch.PRELOAD_LIBRARY = Path('/nonexistent/liblynexec.so'); "
        "sys.exit(cli.main(['run', '-o', sys.argv[1], '--', 'sh', '-c', 'echo err >&2; ls / >/dev/null; exit 3']))"
    )
    proc = subprocess.run([PY, "-c", code, str(tmp_path / "t")], env=clean_env(), capture_output=True, cwd=tmp_path)
    assert proc.returncode == 3
    lines = proc.stderr.decode().splitlines()
    assert lines[0] == "err" and len(lines) == 2
    assert lines[1].startswith("lynshim: traced 0 Python processes; non-Python processes were not traced (")
    assert "/nonexistent/liblynexec.so is missing" in lines[1]
    assert list((tmp_path / "t").glob("*/*" + schema.TRACE_SUFFIX)) == []


def test_existing_ld_preload_is_kept(tmp_path: Path, preload_library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = _launch.traced_environment(tmp_path, "r", None, tmp_path, preload_library)
    assert env["LD_PRELOAD"] == str(preload_library)
    monkeypatch.setenv("LD_PRELOAD", "/some/other.so")
    env = _launch.traced_environment(tmp_path, "r", None, tmp_path, preload_library)
    assert env["LD_PRELOAD"] == f"{preload_library}:/some/other.so"
    assert (
        "LD_PRELOAD" not in _launch.traced_environment(tmp_path, "r", None, tmp_path)
        or _launch.traced_environment(tmp_path, "r", None, tmp_path)["LD_PRELOAD"] == "/some/other.so"
    )


def test_python_fork_child_has_both_kinds(tmp_path: Path) -> None:
    """A Python fork without exec: lynshim's trace of the child, and the library's record of it."""
    # The child waits for lynshim's writer (a child that _exits at once may leave its Python trace empty).
    code = "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(0.3)\n    os._exit(5)\nos.waitpid(pid, 0)\n"
    run = traced(tmp_path / "t", [PY, "-c", code], cwd=tmp_path)
    assert run.proc.returncode == 0, run.proc.stderr
    assert len(run.traces) == 2 and len(run.records) == 2
    parent, child = sorted(run.records, key=lambda r: r.meta["wall_zero_ns"])
    assert child.meta["ppid"] == parent.meta["pid"]
    assert child.meta["forked_from"] == str(parent.path)
    assert child.exit["exit_status"] == 5 and parent.exit["exit_status"] == 0
    assert {t.pid for t in run.traces} == {parent.meta["pid"], child.meta["pid"]}
    assert run.summary.startswith("lynshim: traced 2 Python processes;")


def test_bench_ignores_exec_records(tmp_path: Path) -> None:
    out = tmp_path / "b"
    proc = subprocess.run(
        [PY, "-m", "lynshim", "bench", "-n", "1", "--warmup", "0", "-o", str(out), "--", "sh", "-c", f"{PY} -c pass"],
        env=clean_env(),
        capture_output=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "bench.json").read_text())
    # One Python process, named as lynshim names it; sh's and python's exec records are not processes here.
    assert list(report["processes"]) == [f"{Path(PY).name} -c pass"]
    assert [p["command"] for p in report["runs"][0]["processes"]] == [f"{Path(PY).name} -c pass"]
    run_dir = Path(report["runs"][0]["run_dir"])
    sources = sorted(_launch.trace_source(p) for p in run_dir.glob("*" + schema.TRACE_SUFFIX))
    assert sources == [schema.SOURCE_EXEC, schema.SOURCE_EXEC, schema.SOURCE_PYTHON]
