"""The build's wall time accounted along its critical path (lynanalyze's ``build`` section), on real builds.

A real make build with Python steps (the real lynguine) and non-Python ones (sleep, cat, sh) runs under
``lynshim run``; the preload library records every program, lynshim every Python process in depth, and
lynanalyze must split the run's wall time into phases that add up to it, leaving at most 2 % unattributed,
with the programs by name and the critical path through make.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS, REPO, SAMPLE, clean_env, lynshim_run, require_lamd
from lynshim._native import schema
from test_analyze import LYNANALYZE

PY = sys.executable
PRELOAD = REPO / "python" / "lynshim" / "_preload" / "liblynexec.so"

# The sample build, then a non-Python step that the build waits on, then Python again.
MAKEFILE = f"""
all: out/done.txt

out/slow.txt: out/title.txt
\tsleep 0.3 && cat out/title.txt > out/slow.txt

out/done.txt: out/slow.txt out/config.txt
\t{PY} lamd_calls.py mdfield venue talk.md > out/done.txt

include Makefile
"""


@pytest.fixture(scope="module")
def attributed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    if not PRELOAD.is_file():
        pytest.fail(f"{PRELOAD} is missing: `make install` builds it (cargo build -p lynexec)")
    tmp = tmp_path_factory.mktemp("build")
    work = tmp / "sample"
    shutil.copytree(SAMPLE, work)
    (work / "Makefile.build").write_text(MAKEFILE)
    run = lynshim_run(tmp / "t", ["make", "-s", "-f", "Makefile.build", f"PYTHON={PY}"], cwd=work, env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    proc = subprocess.run([LYNANALYZE, "report", str(run.run_dir), "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), run


def test_every_microsecond_of_the_build_is_accounted(attributed) -> None:
    report, run = attributed
    (build,) = report["sections"]["build"]["data"]["runs"]
    phases = build["attribution_us"]
    assert abs(sum(phases.values()) - build["wall_us"]) <= 1.0, phases
    record = json.loads((run.run_dir / "run.json").read_text())
    assert abs(build["wall_us"] - (record["end_unix_ns"] - record["start_unix_ns"]) / 1000) < 1.0
    assert build["unattributed_share"] <= 0.02, phases
    # The Python processes and the programs between them.
    assert build["python_processes"] == 8 == len(run.traces)
    assert build["other_processes"] >= 3
    programs = {k.removeprefix("other: ") for k in phases if k.startswith("other: ")}
    assert {"make", "sleep"} <= programs, phases
    # make waited 0.3 s for sleep, which is on the critical path as the program's own time.
    assert phases["other: sleep"] >= 290_000, phases
    # Python start-up and imports of the processes make waited for are there, and so is their exit.
    for phase in ("python start-up", "imports", "main program", "lynguine work", "teardown"):
        assert phases.get(phase, 0) > 0, (phase, phases)


def test_the_critical_path_runs_through_make(attributed) -> None:
    report, run = attributed
    (build,) = report["sections"]["build"]["data"]["runs"]
    path = build["critical_path"]
    commands = [p["command"] for p in path]
    assert commands[0].startswith("make"), commands
    assert any(c.startswith("sleep") for c in commands) and any("mdfield venue" in c for c in commands)
    # Own times along the path add up to the time spent inside traced processes.
    inside = sum(p["own_us"] for p in path)
    assert abs(inside + build["attribution_us"].get("idle / untraced", 0) - build["wall_us"]) <= 1.0
    # The processes the build waited on follow each other: none on the path overlaps the sleep.
    sleep = next(p for p in path if p["command"].startswith("sleep"))
    last = next(p for p in path if "mdfield venue" in p["command"])
    assert last["start_us"] >= sleep["end_us"] - 1_000


def test_a_process_waiting_for_its_children_is_not_working(tmp_path: Path) -> None:
    # A Python process that runs make (as maketalk does) and waits 0.3 s for it: waiting, not work.
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    (work / "Makefile.wait").write_text("all:\n\tsleep 0.3\n")
    (work / "runner.py").write_text(
        "import subprocess\nfrom lynguine.util.talk import talk_field\n"
        "talk_field('title', 'talk.md')\nsubprocess.run(['make', '-s', '-f', 'Makefile.wait'], check=True)\n"
    )
    run = lynshim_run(tmp_path / "t", [PY, "runner.py"], cwd=work, env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    report = json.loads(
        subprocess.run(
            [LYNANALYZE, "report", str(run.run_dir), "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    (row,) = report["sections"]["processes"]["data"]
    assert row["waiting_us"] >= 290_000 and row["program_us"] < 100_000, row
    (build,) = report["sections"]["build"]["data"]["runs"]
    assert build["attribution_us"]["other: sleep"] >= 290_000


def test_no_exec_trace_leaves_the_programs_to_idle(tmp_path: Path) -> None:
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    args = [
        PY,
        "-m",
        "lynshim",
        "run",
        "--no-exec-trace",
        "-o",
        str(tmp_path / "t"),
        "--",
        "make",
        "-s",
        f"PYTHON={PY}",
    ]
    proc = subprocess.run(args, cwd=work, env=clean_env(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "t").iterdir()
    report = json.loads(
        subprocess.run(
            [LYNANALYZE, "report", str(run_dir), "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    (build,) = report["sections"]["build"]["data"]["runs"]
    assert build["other_processes"] == 0 and build["python_processes"] == 7
    assert build["attribution_us"]["idle / untraced"] > 0
    assert any("no exec records" in note for note in report["sections"]["build"]["notes"])


def test_a_real_lamd_build_is_accounted_for(tmp_path: Path) -> None:
    """Real lamd on a real talk (notes as HTML): every Python process and the build leave ≤ 2 % unattributed."""
    require_lamd()
    import lamd

    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    subject = corpus / "talks" / "_ai"
    for path in [corpus, *corpus.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)  # the shared corpus is read-only; lamd writes beside the talk
    macros = Path(lamd.__file__).parent / "macros"
    with (subject / "_lamd.yml").open("a") as config:
        config.write(f"\nmacrosdir: {macros}\n")
    env = clean_env()
    env["PATH"] = str(Path(PY).parent) + os.pathsep + env["PATH"]
    run = lynshim_run(
        tmp_path / "t",
        ["maketalk", "ai-and-data-science.md", "--format", "notes", "--to", "html"],
        cwd=subject,
        env=env,
        timeout=600,
    )
    assert run.proc.returncode == 0 and (subject / "ai-and-data-science.notes.html").is_file(), run.proc.stderr[-3000:]
    proc = subprocess.run([LYNANALYZE, "report", str(run.run_dir), "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (build,) = report["sections"]["build"]["data"]["runs"]
    assert build["unattributed_share"] <= 0.02, build["attribution_us"]
    assert {"other: make", "other: pandoc", "other: gpp"} <= set(build["attribution_us"]), build["attribution_us"]
    assert build["critical_path"][0]["command"].startswith("maketalk")
    rows = report["sections"]["processes"]["data"]
    assert len(rows) >= 5 and {r["lamd_command"] for r in rows} >= {"maketalk", "mdfield", "mdpp"}
    for row in rows:
        assert row["unattributed_us"] <= 0.02 * row["wall_us"], row
    # lamd has no __version__: its version comes from its installed distribution, as importlib.metadata says.
    lamd_traces = [t for t in run.traces if not t.is_exec_record and t.meta.get(schema.ARG_LAMD_COMMAND)]
    assert len(lamd_traces) >= 5
    for trace in lamd_traces:
        assert trace.exit[schema.ARG_LAMD_VERSION] == importlib.metadata.version("lamd"), trace.process_name
    # maketalk waits for make: waiting, not lamd's work.
    maketalk = next(r for r in rows if r["lamd_command"] == "maketalk")
    assert maketalk["waiting_us"] > 0.5 * maketalk["wall_us"] and maketalk["work_us"] < 0.1 * maketalk["wall_us"]
