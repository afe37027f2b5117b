"""`lynanalyze export` on real traced runs, read back with DuckDB (from PyPI): the dataset gives the same call
counts and per-process phases as `lynanalyze report`, partitions by run, takes more runs later, and refuses a
directory that is not a dataset.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROCESS_PHASES, clean_env, lynshim_run, trace_sample_build

duckdb = pytest.importorskip("duckdb", reason="the export tests read the dataset with DuckDB (pip install duckdb)")

LYNANALYZE = (
    os.environ.get("LYNANALYZE") or shutil.which("lynanalyze", path=str(Path(sys.executable).parent)) or "lynanalyze"
)


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LYNANALYZE, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs in one directory: the sample build (seven Python processes calling lynguine under make) and
    `python -c "import yaml"`."""
    root = tmp_path_factory.mktemp("export")
    trace_sample_build(root)
    run = lynshim_run(root / "traces", [sys.executable, "-c", "import yaml"], env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    return root / "traces"


@pytest.fixture(scope="module")
def dataset(traces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "ds"
    proc = analyze("export", traces, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "exported 2 run(s), 8 Python processes" in proc.stderr
    return out


def table(dataset: Path, name: str) -> str:
    return f"read_parquet('{dataset}/{name}/*/*.parquet', hive_partitioning = true)"


def query(sql: str) -> list[tuple]:
    return duckdb.sql(sql).fetchall()


def report(traces: Path) -> dict:
    proc = analyze("report", traces, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_layout_is_hive_partitioned_by_run(dataset: Path, traces: Path) -> None:
    run_ids = sorted(p.name for p in traces.iterdir() if p.is_dir())
    for name in ("runs", "phases", "processes", "spans"):
        assert sorted(p.name for p in (dataset / name).iterdir()) == [f"run_id={r}" for r in run_ids], name
    marker = json.loads((dataset / "_lynanalyze_dataset.json").read_text())
    assert marker["version"] == 1 and marker["tables"] == ["runs", "phases", "processes", "spans"]


def test_duckdb_gives_the_reports_call_counts_and_phases(dataset: Path, traces: Path) -> None:
    expected = report(traces)
    # Call counts per entry point (README shows this query).
    calls = dict(
        query(f"""
        SELECT name, count(*) AS calls FROM {table(dataset, "spans")}
        WHERE is_call GROUP BY name""")
    )
    entry_points = expected["sections"]["call_frequency"]["data"]["entry_points"]
    assert calls == {row["name"]: row["calls"] for row in entry_points} and sum(calls.values()) > 10
    # Per-process phases, Python processes: the report's figures, to the microsecond.
    phases = (
        "wall_us",
        *PROCESS_PHASES,
        "calls",
    )
    rows = query(f"""
        SELECT run_id, pid, {", ".join(phases)} FROM {table(dataset, "processes")}
        WHERE source = 'python' ORDER BY run_id, pid""")
    got = {(r[0], r[1]): dict(zip(phases, r[2:], strict=False)) for r in rows}
    want = {(p["pid"]): p for p in expected["sections"]["processes"]["data"]}
    assert len(got) == len(want) == 8
    for (_run_id, pid), figures in got.items():
        for phase in phases:
            assert figures[phase] == pytest.approx(want[pid][phase], abs=1e-6), (pid, phase)
    # The same import time from the spans themselves.
    imports = dict(
        ((r[0], r[1]), r[2])
        for r in query(f"""
        SELECT run_id, pid, sum(self_us) FROM {table(dataset, "spans")} WHERE cat = 'import' GROUP BY ALL""")
    )
    for key, figures in got.items():
        assert imports.get(key, 0.0) == pytest.approx(figures["import_us"], rel=1e-9, abs=1e-6)
    # Runs: the wall time of the build section, and its phases adding up to it.
    build = {r["run_id"]: r for r in expected["sections"]["build"]["data"]["runs"]}
    runs = query(f"SELECT run_id, wall_us, python_processes, command FROM {table(dataset, 'runs')} ORDER BY run_id")
    assert {r[0]: r[1] for r in runs} == pytest.approx({k: v["wall_us"] for k, v in build.items()})
    assert sorted(r[2] for r in runs) == [1, 7]
    sums = dict(query(f"SELECT run_id, sum(us) FROM {table(dataset, 'phases')} GROUP BY run_id"))
    assert sums == pytest.approx({k: v["wall_us"] for k, v in build.items()})


def test_exec_records_are_processes_with_a_source(dataset: Path) -> None:
    programs = [r[0] for r in query(f"SELECT command FROM {table(dataset, 'processes')} WHERE source = 'exec'")]
    if not programs:
        pytest.skip("no exec records in these runs (the preload library is not built)")
    assert any(c.split()[0].endswith("make") for c in programs), programs


def test_more_runs_later_and_a_run_again(traces: Path, dataset: Path, tmp_path: Path) -> None:
    extra = tmp_path / "more"
    run = lynshim_run(extra, [sys.executable, "-c", "import json"], env=clean_env())
    assert run.proc.returncode == 0
    assert analyze("export", extra, "-o", dataset).returncode == 0
    # Exported again: replaced, not doubled.
    assert analyze("export", traces, "-o", dataset).returncode == 0
    counts = query(
        f"SELECT count(*), count(DISTINCT run_id) FROM {table(dataset, 'processes')} WHERE source = 'python'"
    )
    assert counts == [(9, 3)]


def test_refuses_what_is_not_a_dataset(traces: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    proc = analyze("export", traces, "-o", precious)
    assert proc.returncode == 2 and "not a lynanalyze dataset" in proc.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    nothing = analyze("export", tmp_path / "nowhere", "-o", tmp_path / "ds")
    assert nothing.returncode == 2 and "nowhere" in nothing.stderr and not (tmp_path / "ds").exists()
