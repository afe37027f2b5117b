"""A traced Python process accounted for from start to exit: main program, GC, atexit, teardown, memory.

Issue #13: every Python process of a lamd build showed a fifth of its time "unattributed" (the script's own
code, garbage collections, atexit handlers and the interpreter's teardown), and its "after imports" memory
sample was taken during ``import lynguine``. These tests run real processes with the real lynguine and
check the phases on the trace files and in lynanalyze's accounting.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import PROCESS_PHASES, SAMPLE, Trace, clean_env, lynshim_run
from lynshim._native import schema
from test_analyze import LYNANALYZE

PY = sys.executable

# Reads the sample talk's configuration and a data file through lynguine, then leaves work for atexit.
PROGRAM = textwrap.dedent(
    """
    import atexit, gc, time
    import lynguine
    from lynguine.config.interface import Interface
    from lynguine.access import io

    def slow_goodbye():
        time.sleep(0.05)

    atexit.register(slow_goodbye)
    interface = Interface.from_file(["_lamd.yml", "_config.yml"], directory=".")
    data = io.read_yaml_file("_lamd.yml")
    garbage = [[i] for i in range(200000)]
    gc.collect()
    busy = sum(i * i for i in range(300000))   # the script's own work
    print(len(data) > 0, busy > 0)
    """
)


def run_program(tmp_path: Path):
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    (work / "program.py").write_text(PROGRAM)
    run = lynshim_run(tmp_path / "t", [PY, "program.py"], cwd=work, env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == b"True True\n"
    assert len(run.traces) == 1
    return run


def inside(child: dict, parent: dict) -> bool:
    return parent["ts"] <= child["ts"] and child["ts"] + child["dur"] <= parent["ts"] + parent["dur"] + 1e-3


def test_a_process_is_phased_from_start_to_exit(tmp_path: Path) -> None:
    run = run_program(tmp_path)
    trace: Trace = run.traces[0]
    (main,) = trace.spans(schema.CAT_PROGRAM)
    assert main["name"] == schema.EVENT_MAIN_PROGRAM and main["depth"] == 0
    (startup,) = trace.spans(schema.CAT_STARTUP)
    # The main program begins where activation ended and holds the program's imports and calls.
    activation = [s for s in trace.spans(schema.CAT_TRACER) if s["name"] == schema.EVENT_SHIM_ACTIVATION]
    assert abs(activation[0]["ts"] + activation[0]["dur"] - main["ts"]) < 1_000
    lynguine_import = next(s for s in trace.spans(schema.CAT_IMPORT) if s["name"] == "lynguine")
    assert inside(lynguine_import, main)
    (config,) = [s for s in trace.spans(schema.CAT_CONFIG) if s["depth"] == 0]
    assert config["parent"] == schema.EVENT_MAIN_PROGRAM
    assert inside(config, main)
    # One span per collection, with its generation and counts; the explicit gc.collect() is a gen-2 one.
    collections = trace.spans(schema.CAT_GC)
    assert collections and all(s["name"] == schema.EVENT_GC for s in collections)
    assert any(s["args"][schema.ARG_GENERATION] == 2 and s["args"][schema.ARG_COLLECTED] >= 0 for s in collections)
    assert all(
        set(s["args"]) >= {schema.ARG_GENERATION, schema.ARG_COLLECTED, schema.ARG_UNCOLLECTABLE} for s in collections
    )
    # atexit handlers (the program's 50 ms sleep), after the main program; then lynshim writing and teardown.
    (atexit,) = trace.spans(schema.CAT_ATEXIT)
    assert atexit["ts"] >= main["ts"] + main["dur"] - 1e-3 and atexit["dur"] >= 50_000
    (teardown,) = trace.spans(schema.CAT_TEARDOWN)
    writing = [s for s in trace.spans(schema.CAT_TRACER) if s["name"] == schema.EVENT_SHIM_WRITE]
    # lynshim's writing is timed on CLOCK_MONOTONIC, the atexit span on the records' clock, converted to
    # it within a microsecond (crates/lynshim/src/clock.rs).
    assert len(writing) == 1 and writing[0]["ts"] >= atexit["ts"] + atexit["dur"] - 1
    assert teardown["ts"] >= writing[0]["ts"] + writing[0]["dur"] - 1e-3 and teardown["dur"] > 0
    exit_event = next(e for e in trace.events if e.get("name") == schema.EVENT_EXIT)
    assert exit_event["ts"] >= teardown["ts"] + teardown["dur"] - 1e-3
    assert startup["ts"] == 0


def test_memory_moments_are_labelled(tmp_path: Path) -> None:
    run = run_program(tmp_path)
    trace = run.traces[0]
    samples = [
        (e["at"], e["args"]["bytes"], e["ts"])
        for e in trace.events
        if e.get("ph") == "C" and e["name"] == schema.EVENT_RSS and "at" in e
    ]
    labels = [at for at, _, _ in samples]
    assert labels == [
        schema.MOMENT_BASELINE,
        schema.MOMENT_AFTER_IMPORTS,
        schema.MOMENT_AFTER_CONFIG,
        schema.MOMENT_AFTER_DATA,
        schema.MOMENT_AFTER_OPERATIONS,
        schema.MOMENT_EXIT,
    ], labels
    at = {label: (rss, ts) for label, rss, ts in samples}
    # "After imports" is sampled once `import lynguine` is done (lynguine calls itself while it loads).
    lynguine_import = next(s for s in trace.spans(schema.CAT_IMPORT) if s["name"] == "lynguine")
    assert at[schema.MOMENT_AFTER_IMPORTS][1] >= lynguine_import["ts"] + lynguine_import["dur"]
    assert at[schema.MOMENT_AFTER_IMPORTS][0] > at[schema.MOMENT_BASELINE][0] + 30e6  # pandas is in by then
    # The program's 200 000 lists are alive after the operations.
    assert at[schema.MOMENT_AFTER_OPERATIONS][0] > at[schema.MOMENT_AFTER_DATA][0]

    report = json.loads(
        subprocess.run(
            [LYNANALYZE, "report", str(run.run_dir), "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    (row,) = report["sections"]["memory"]["data"]["processes"]
    assert row["moments_bytes"] == {label: float(rss) for label, rss, _ in samples}


def test_lynanalyze_leaves_at_most_two_percent_unattributed(tmp_path: Path) -> None:
    run = run_program(tmp_path)
    report = json.loads(
        subprocess.run(
            [LYNANALYZE, "report", str(run.run_dir), "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    (row,) = report["sections"]["processes"]["data"]
    parts = PROCESS_PHASES
    assert abs(sum(row[p] for p in parts) - row["wall_us"]) <= 1.0, row
    assert row["unattributed_us"] <= 0.02 * row["wall_us"], row
    assert row["gc_us"] > 0 and row["gc_collections"] >= 1 and row["atexit_us"] >= 50_000
    assert row["program_us"] > 0 and row["teardown_us"] > 0
