"""``lynshim bench`` on real lynguine: cold runs are cold (page residency), warm runs are warm, and the
phases of every process add up to its traced wall time; its phases are read by lynload, cut-short files
included, as lynanalyze reads them. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env
from lynshim import _native
from lynshim._native import schema

PY = sys.executable
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "traces"


def bench_command(out: Path, runs: int, *flags: str, code: str = "import lynguine") -> list[str]:
    """`lynshim bench` of `python -c code`, `runs` times without warm-up, into `out`."""
    return [
        PY,
        "-m",
        "lynshim",
        "bench",
        "-n",
        str(runs),
        "--warmup",
        "0",
        *flags,
        "-o",
        str(out),
        "--",
        PY,
        "-c",
        code,
    ]


def bench(tmp_path: Path, *flags: str) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "bench"
    proc = subprocess.run(
        bench_command(out, 2, *flags),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "interpreter start-up" in proc.stdout and "imports: pandas" in proc.stdout
    return json.loads((out / "bench.json").read_text())


def check_phases_add_up(report: dict) -> None:
    for run in report["runs"]:
        assert len(run["processes"]) == 1
        for process in run["processes"]:
            assert sum(process["phases_us"].values()) == pytest.approx(process["wall_us"], rel=1e-9)
            assert process["phases_us"]["imports: pandas"] > 0


def test_cold_runs_are_cold_and_warm_runs_warm(tmp_path: Path) -> None:
    cold = bench(tmp_path / "c", "--cold")
    warm = bench(tmp_path / "w")
    check_phases_add_up(cold)
    check_phases_add_up(warm)
    assert cold["evicted_files"] > 500  # pandas, numpy, lynguine… sources, bytecode and extension modules
    # The installed packages' pages: evicted before every cold run, resident before every warm one.
    assert cold["resident_share_site_packages"]["max"] < 0.05, (
        f"cold runs were not cold: resident share {cold['resident_share_site_packages']['max']:.2f}; processes mapping "
        f"the files (their pages cannot be evicted): {cold.get('held_by') or 'none found'}"
    )
    assert warm["resident_share_site_packages"]["min"] > 0.9
    assert all(run["evict_failures"] == 0 for run in cold["runs"])
    # Every run is an ordinary traced run that lynanalyze can read.
    for run in cold["runs"] + warm["runs"]:
        assert list(Path(run["run_dir"]).glob("*.lynshim.json"))


def test_cold_bench_names_the_processes_that_keep_pages_resident(tmp_path: Path) -> None:
    # A process that keeps numpy's extension modules mapped, as a lynguine server left running would.
    holder = subprocess.Popen(
        [PY, "-c", "import numpy, sys, time; print('ready', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE,
        env=clean_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        out = tmp_path / "bench"
        proc = subprocess.run(
            bench_command(out, 1, "--cold", code="import numpy"),
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads((out / "bench.json").read_text())
        held = [who for who in report.get("held_by", {}) if who.split()[0] == str(holder.pid)]
        assert held, (report.get("held_by"), report.get("resident_share_site_packages"))
        assert f"pid {holder.pid} " in proc.stdout and "other processes map the files" in proc.stdout
    finally:
        holder.kill()
        holder.communicate()


def test_phases_of_a_trace_whole_or_cut_short_add_up_to_its_wall_time(tmp_path: Path) -> None:
    # The fixtures' largest trace is a Python process of the sample build (the others are exec records).
    whole = max(FIXTURES.glob("*" + schema.TRACE_SUFFIX), key=lambda p: p.stat().st_size)
    name, phases, wall, exit_args = _native.process_phases(whole)
    assert sum(phases.values()) == pytest.approx(wall, rel=1e-9)
    assert any(phase.startswith("imports: ") for phase in phases) and phases["rest"] >= 0
    assert exit_args[schema.ARG_EXIT_STATUS] == 0
    # Cut in the middle of a line, as a crash leaves it: read as far as it goes, by lynload's rules.
    cut = tmp_path / whole.name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    cut_name, cut_phases, cut_wall, cut_exit = _native.process_phases(cut)
    assert (cut_name, cut_exit) == (name, {})
    assert 0 < cut_wall < wall
    assert sum(cut_phases.values()) == pytest.approx(cut_wall, rel=1e-9)
    # Not a trace at all: lynload's reason.
    empty = tmp_path / "empty.lynshim.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        _native.process_phases(empty)
