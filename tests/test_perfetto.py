"""Conformance against the real Perfetto trace processor (see perfetto.py): single-process traces,
traces cut short by SIGKILL, merged builds with spawn and server-mode flows. Perfetto's own counts of
slices per category must equal lynanalyze's, parsed independently from the same files.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import SAMPLE, clean_env, lynshim_run
from lynshim._native import schema
from perfetto import Perfetto, must_run, unavailable_reason
from test_analyze import LYNANALYZE
from test_patching import SERVER_ROUND_TRIP

PY = sys.executable
# lynshim's own category is left out: Perfetto counts its instant events (process, exit) as slices too.
COMPARED = [
    schema.CAT_STARTUP,
    schema.CAT_IMPORT,
    *schema.WORK_CATEGORIES,
    schema.CAT_PROGRAM,
    schema.CAT_GC,
    schema.CAT_ATEXIT,
    schema.CAT_TEARDOWN,
]


@pytest.fixture(scope="module")
def perfetto():
    reason = unavailable_reason()
    if reason:
        if must_run():
            pytest.fail(f"the Perfetto conformance tests must run here, but {reason}")
        pytest.skip(reason)
    instance = Perfetto()
    yield instance
    instance.close()


def lynanalyze_by_category(traces: list[Path], tmp_path: Path) -> dict[str, tuple[int, float]]:
    """Slices per category and their total duration (µs), as lynanalyze parses them."""
    out = tmp_path / "spans.csv"
    proc = subprocess.run(
        [LYNANALYZE, "report", *map(str, traces), "--format", "json", "--spans", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    with out.open() as handle:
        for row in csv.DictReader(handle):
            totals[row["cat"]][0] += 1
            totals[row["cat"]][1] += float(row["dur_us"])
    return {cat: (int(n), dur) for cat, (n, dur) in totals.items()}


def check_against_lynanalyze(query, traces: list[Path], tmp_path: Path) -> None:
    errors = query("select name, severity, value from stats where value > 0 and severity in ('error', 'data_loss')")
    assert errors == [], errors
    ours = lynanalyze_by_category(traces, tmp_path)
    rows = query(
        "select category, count(*) as n, sum(case when dur > 0 then dur else 0 end) as dur_ns "
        "from slice where category is not null group by category"
    )
    theirs = {r["category"]: (r["n"], r["dur_ns"] / 1000.0) for r in rows}
    for cat in COMPARED:
        if cat not in ours and cat not in theirs:
            continue
        n, dur = ours.get(cat, (0, 0.0))
        assert theirs.get(cat, (0, 0.0))[0] == n, (cat, theirs.get(cat), ours.get(cat))
        # Perfetto stores integer nanoseconds: allow 1 µs of rounding per slice.
        assert abs(theirs[cat][1] - dur) <= n * 1.0 + 1.0, (cat, theirs[cat], (n, dur))


def test_single_process_trace(perfetto: Perfetto, tmp_path: Path) -> None:
    code = "import lynshim, lynguine\nfrom lynguine.util.yaml import header_field\nwith lynshim.span('work', rss=True): header_field('a', {'a': 1})"
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    trace = run.traces[0]
    with perfetto.load(trace.path) as query:
        check_against_lynanalyze(query, [trace.path], tmp_path)
        processes = query("select pid, name from process where pid > 0")
        assert processes == [{"pid": trace.pid, "name": trace.process_name}]
        threads = query(f"select tid, name from thread where tid = {trace.pid}")
        assert threads and threads[0]["name"] == "MainThread"
        counters = query(
            "select t.name as name, min(c.value) as lo, max(c.value) as hi from counter c "
            "join process_counter_track t on c.track_id = t.id group by t.name"
        )
        rss = [c for c in counters if c["name"].startswith("rss")]
        assert rss and 5e6 < rss[0]["lo"] <= rss[0]["hi"] < 5e9, counters


def test_trace_cut_short_by_sigkill(perfetto: Perfetto, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, signal, time, lynshim, lynguine
        for i in range(50):
            with lynshim.span("step"):
                pass
        time.sleep(0.3)
        with lynshim.span("never closed"):
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=clean_env())
    assert run.proc.returncode == -9
    path = run.traces[0].path
    assert not path.read_text().rstrip().endswith("]")
    with perfetto.load(path) as query:
        errors = query("select name, value from stats where value > 0 and severity in ('error', 'data_loss')")
        assert errors == [], errors
        steps = query("select count(*) as n from slice where name = 'step'")
        assert steps[0]["n"] >= 50 - 32


def test_merged_build_with_spawn_and_server_flows(perfetto: Perfetto, tmp_path: Path) -> None:
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    (work / "client.py").write_text(SERVER_ROUND_TRIP)
    env = clean_env()
    env["PATH"] = str(Path(PY).parent) + os.pathsep + env["PATH"]
    # A make build of several Python processes, one of which talks to an auto-started lynguine server.
    (work / "Makefile.flows").write_text(
        f'all:\n\t{PY} lamd_calls.py mdfield title talk.md\n\t{PY} client.py\n\t{PY} -c "import subprocess, sys; '
        f"subprocess.run([sys.executable, 'lamd_calls.py', 'config'], check=True)\"\n"
    )
    run = lynshim_run(tmp_path / "t", ["make", "-s", "-f", "Makefile.flows"], cwd=work, env=env, timeout=180)
    assert run.proc.returncode == 0, run.proc.stderr
    assert len(run.traces) == 5
    # make, and the shell lines of its recipe, are seen through their exec records.
    assert any(p.process_name.startswith("make") for p in run.programs)
    merged = tmp_path / "build.json"
    proc = subprocess.run([LYNANALYZE, "merge", str(run.run_dir), "-o", str(merged)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with perfetto.load(merged) as query:
        check_against_lynanalyze(query, [run.run_dir], tmp_path)
        names = {r["pid"]: r["name"] for r in query("select pid, name from process where pid > 0")}
        python = {t.pid: t.process_name for t in run.traces}
        assert {pid: names.get(pid) for pid in python} == python
        # Every other program that ran to its exit is a lane of its own, named by its command, with one
        # slice for its life (a program that exec'd another, sh -c, leaves the lane to that one).
        python_ids = {(t.pid, t.meta["start_ticks"]) for t in run.traces}
        others = [p for p in run.programs if p.exit is not None and (p.pid, p.meta["start_ticks"]) not in python_ids]
        assert others and all(names.get(p.pid) == p.process_name for p in others), (names, others)
        lives = query(f"select count(*) as n from slice where category = '{schema.CAT_PROCESS}'")
        assert lives[0]["n"] == len(others)
        flows = query(
            "select s1.category as out_cat, s2.category as in_cat, t1.upid != t2.upid as cross_process "
            "from flow f join slice s1 on f.slice_out = s1.id join slice s2 on f.slice_in = s2.id "
            "join thread_track tt1 on s1.track_id = tt1.id join thread t1 using(utid) "
            "join thread_track tt2 on s2.track_id = tt2.id join thread t2 on tt2.utid = t2.utid"
        )
        assert (
            sum(1 for f in flows if f["out_cat"] == schema.CAT_SERVER_CLIENT and f["in_cat"] == schema.CAT_SERVER) >= 2
        )
        spawn = [f for f in flows if f["out_cat"] == schema.CAT_TRACER]
        assert spawn and all(f["cross_process"] for f in spawn)
        # Every Python process has its arrow from the process that started it (make, sh, python).
        arrows_in = {
            r["pid"]
            for r in query(
                "select p.pid as pid from flow f join slice s1 on f.slice_out = s1.id join slice s2 on f.slice_in = s2.id "
                "join thread_track tt on s2.track_id = tt.id join thread t using(utid) join process p using(upid) "
                f"where s1.category = '{schema.CAT_TRACER}'"
            )
        }
        assert {t.pid for t in run.traces} <= arrows_in, (arrows_in, python)
