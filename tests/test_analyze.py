"""lynanalyze end to end: a real traced build of real lynguine calls, checked against a brute-force
count made here from the same trace files, every output format, and every kind of bad input.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import PROCESS_PHASES, Trace, load_events, trace_sample_build
from lynshim._native import schema

LYNANALYZE = shutil.which("lynanalyze", path=str(Path(sys.executable).parent)) or "lynanalyze"


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LYNANALYZE, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample build, traced once for the module: seven Python processes under make."""
    return trace_sample_build(tmp_path_factory.mktemp("build")).run_dir


def brute_force(run_dir: Path) -> dict:
    """Call counts per entry point and per category, counted directly from the JSON events."""
    calls: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    processes: dict[str, set[int]] = {}
    for path in run_dir.glob("*" + schema.TRACE_SUFFIX):
        trace = Trace(path, load_events(path))
        for span in trace.spans():
            if span["cat"] in schema.WORK_CATEGORIES:
                calls[span["name"]] += 1
                categories[span["cat"]] += 1
                processes.setdefault(span["name"], set()).add(trace.pid)
    return {"calls": calls, "categories": categories, "processes": processes}


def test_report_json_agrees_with_a_brute_force_count(build: Path) -> None:
    proc = analyze("report", build, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["schema_version"] == 1 and report["summary"]["processes"] == 7
    expected = brute_force(build)
    entry_points = {row["name"]: row for row in report["sections"]["call_frequency"]["data"]["entry_points"]}
    assert {name: row["calls"] for name, row in entry_points.items()} == dict(expected["calls"])
    for name, row in entry_points.items():
        assert row["processes"] == len(expected["processes"][name])
        assert row["p50_us"] <= row["p95_us"]
    mix = {row["category"]: row["calls"] for row in report["sections"]["operation_mix"]["data"]}
    assert mix == dict(expected["categories"])
    assert sum(r["share_of_calls"] for r in report["sections"]["operation_mix"]["data"]) == pytest.approx(1.0)
    # Per process: the phases add up to the wall time (one thread: no span overlaps another), at most 2 % of
    # it unattributed, and lynguine's import dominates.
    phases = PROCESS_PHASES
    for row in report["sections"]["processes"]["data"]:
        assert sum(row[p] for p in phases) == pytest.approx(row["wall_us"], rel=1e-9), row
        assert row["unattributed_us"] <= 0.02 * row["wall_us"], row
        assert row["import_us"] > row["work_us"] and row["exit"] == "0"
    imports = {m["module"]: m for m in report["sections"]["imports"]["data"]["modules"]}
    assert (
        imports["pandas"]["processes"] == 7
        and imports["lynguine"]["cumulative_us"] > imports["pandas"]["cumulative_us"]
    )
    configs = {c["file"]: c for c in report["sections"]["config_files"]["data"]}
    expected_reads = sum(
        1
        for path in build.glob("*" + schema.TRACE_SUFFIX)
        for span in Trace(path, load_events(path)).spans()
        if span["cat"] == schema.CAT_CONFIG and "_lamd.yml" in str(span["args"].get("user_file", "")).split(",")
    )
    assert configs["_lamd.yml"]["reads"] == expected_reads > 0
    concurrency = report["sections"]["concurrency"]["data"]
    assert concurrency["processes"] == 7 and concurrency["max_alive"] == 1  # make -j1: one at a time
    projection = report["sections"]["cip0008_projection"]["data"]
    assert projection["request_cost_source"].startswith("ASSUMED") and projection["speedup"] > 1
    runs = report["sections"]["startup_vs_work"]["data"]["runs"]
    assert len(runs) == 1 and runs[0]["python_alive_us"] <= runs[0]["wall_us"]


def test_text_and_markdown_reports(build: Path, tmp_path: Path) -> None:
    text = analyze(build)  # `report` is the default command
    assert text.returncode == 0, text.stderr
    for title in (
        "Call frequency",
        "Operation mix",
        "Start-up against work",
        "Imports",
        "Memory",
        "Concurrency",
        "Config files",
        "CIP-0008",
    ):
        assert title in text.stdout, title
    out = tmp_path / "report.md"
    md = analyze("report", build, "--format", "md", "-o", out)
    assert md.returncode == 0 and md.stdout == ""
    body = out.read_text()
    assert body.startswith("# lynanalyze report") and "| entry point |" in body


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_spans_export(build: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"spans.{suffix}"
    proc = analyze("report", build, "--format", "json", "--spans", out)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 1000
    if suffix == "csv":
        header = out.read_text().splitlines()[0].split(",")
        assert header[:4] == ["run_id", "pid", "process", "group"] and "self_us" in header


def test_bad_files_are_named_skipped_and_counted(build: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(build, mixed)
    good = sorted(mixed.glob("*" + schema.TRACE_SUFFIX))
    biggest = max(good, key=lambda p: p.stat().st_size)  # a Python trace
    # Cut short, and another process (pid) than the file it was cut from: a copy would be counted once.
    pid = Trace(biggest, load_events(biggest)).pid
    other = biggest.read_text().replace(f'"pid":{pid},', f'"pid":{pid + 1_000_000},')
    (mixed / "1-1-truncated.lynshim.json").write_text(other[: len(other) // 2])
    # A copy of a whole trace: the same process, counted once, both files named.
    shutil.copy(good[1], mixed / "6-6-copy.lynshim.json")
    (mixed / "2-2-empty.lynshim.json").write_text("")
    (mixed / "3-3-garbage.lynshim.json").write_bytes(b"\x00\xffnot json at all")
    (mixed / "4-4-shape.lynshim.json").write_text('{"traceEvents": []}')
    (mixed / "5-5-array.lynshim.json").write_text('[{"ph": "B"}]')
    proc = analyze("report", mixed, "--format", "json", "--max-file-size", str(10_000_000))
    assert proc.returncode == 1
    messages = proc.stderr.splitlines()
    for name in ("2-2-empty", "3-3-garbage", "4-4-shape", "5-5-array"):
        assert any(name in m and m.startswith("lynanalyze: skipped") for m in messages), name
    assert any("1-1-truncated" in m and "cut short" in m for m in messages)
    assert any(
        m.startswith("lynanalyze: skipped") and "6-6-copy" in m and good[1].name in m and "counted once" in m
        for m in messages
    ), messages
    report = json.loads(proc.stdout)
    assert report["summary"]["processes"] == 8 and len(report["summary"]["skipped"]) == 5
    # Too large: skipped with the limit named.
    big = analyze("report", good[0], "--max-file-size", "10")
    assert big.returncode == 2 and "too large" in big.stderr and "--max-file-size" in big.stderr


def test_no_traces_and_usage_errors(tmp_path: Path) -> None:
    missing = analyze("report", tmp_path / "nothing-here")
    assert missing.returncode == 2 and "nothing-here" in missing.stderr
    assert analyze("--help").returncode == 0
    assert analyze("report", "--format", "pdf", tmp_path).returncode == 2


def test_merge_compressed_and_cut_short(build: Path, tmp_path: Path) -> None:
    import gzip

    mixed = tmp_path / "mixed"
    shutil.copytree(build, mixed)
    first = sorted(mixed.glob("*" + schema.TRACE_SUFFIX))[0]
    text = first.read_text()
    first.write_text(text[: len(text) * 2 // 3])  # as SIGKILL would leave it
    (mixed / "9-9-garbage.lynshim.json").write_text("not a trace")
    out = tmp_path / "build.json.gz"
    proc = analyze("merge", mixed, "-o", out)
    assert proc.returncode == 1  # one file skipped
    assert "9-9-garbage" in proc.stderr and "cut short" in proc.stderr and first.name in proc.stderr
    merged = json.loads(gzip.decompress(out.read_bytes()))
    events = merged["traceEvents"]
    # One lane per process: the seven Python processes (their exec records told twice are left out) and
    # make, mkdir and the shells between them, from their exec records.
    every_pid = {int(p.name.split("-")[0]) for p in build.glob("*" + schema.TRACE_SUFFIX)}
    lanes = {e["pid"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    assert lanes == every_pid and len(lanes) > 7
    assert merged["metadata"]["lynshim_runs"][0]["traced_processes"] == 7
    # One clock: every process's events are shifted by its start relative to the earliest.
    # The earliest process is make (from its exec record); each Python process starts later, at its own time.
    assert min(e["ts"] for e in events if "ts" in e) == 0
    starts = sorted(e["ts"] for e in events if e.get("name") == "interpreter start-up")
    assert len(starts) == 7 and starts == sorted(set(starts)) and starts[0] > 0
