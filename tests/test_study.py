"""The study (analysis/study, `make study`) on a small slice of the corpus with real lamd: one small talk, one
run, one repeat, into a temporary directory (never analysis/). Checks that the report is produced with its
sections, that its numbers are the JSON summaries' numbers, that build time is fully attributed, and that
no lynguine server is left running.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, require_lamd

sys.path.insert(0, str(REPO))
from analysis.study.common import lynguine_servers  # noqa: E402
from analysis.study.quickwins import ONE_BLAS_THREAD_PRELUDE  # noqa: E402

TALK = "_ai/the-atomic-human-google.md"


def study(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analysis.study", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_lamd()
    tmp = tmp_path_factory.mktemp("study")
    res = study(
        "--out",
        str(tmp / "out"),
        "--report-dir",
        str(tmp / "rep"),
        "--runs",
        "1",
        "-n",
        "1",
        "--study-talks",
        TALK,
        "--formats",
        "notes",
        "--variant-formats",
        "notes",
        "--modules",
        "yaml",
        "--lazy-candidates",
        "2",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return tmp / "rep"


def test_missing_inputs_stop_with_a_message(tmp_path: Path) -> None:
    res = study("--lamd-src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--report-dir", str(tmp_path))
    assert res.returncode == 2
    assert "LAMD_SRC" in res.stderr and "Traceback" not in res.stderr


def test_report_has_its_sections_and_stamp(small_study: Path) -> None:
    text = (small_study / "REPORT.md").read_text()
    for heading in (
        "## Executive summary",
        "## 1. Start-up breakdown",
        "## 2. Operation costs",
        "## 3. Usage patterns",
        "## 4. Memory profile",
        "## 5. Server mode, measured",
        "## 6. Quick wins, measured",
        "## 7. Recommendations",
        "## Acceptance checklist",
    ):
        assert heading in text, heading
    meta = json.loads((small_study / "study-data" / "meta.json").read_text())
    for key in ("python", "lynguine", "lamd", "machine", "date_utc"):
        assert meta["stamp"][key] and meta["stamp"][key] in text, key
    assert "not run" not in text.split("## Acceptance checklist")[1]
    for fig in ("import-cost.png", "build-phases.png", "build-walls.png"):
        assert (small_study / "figures" / fig).stat().st_size > 1000


def test_report_numbers_are_the_summaries(small_study: Path) -> None:
    text = (small_study / "REPORT.md").read_text()
    data = small_study / "study-data"
    builds = json.loads((data / "builds.json").read_text())
    direct = [r for r in builds["records"] if r["mode"] == "direct"]
    assert direct and all(r["make_ok"] for r in direct), [r["make_errors"] for r in direct]
    # the usage table's build wall time is the record's, in seconds
    row = next(l for l in text.splitlines() if l.startswith(f"| `{TALK}`") and "| notes |" in l)
    assert f"| {direct[0]['wall_us'] / 1e6:.2f} |" in row
    # the warm-server row of the server table
    server = json.loads((data / "server.json").read_text())
    warm = [r for r in server["records"] if r["mode"] == "server-warm"]
    row = next(l for l in text.splitlines() if l.startswith("| server mode, warm"))
    assert f"| {warm[0]['wall_us'] / 1e6:.2f} |" in row
    # start-up: the warm wall of `import yaml`
    startup = json.loads((data / "startup.json").read_text())
    yaml_warm = next(r for r in startup["results"] if r["module"] == "yaml" and r["mode"] == "warm")
    row = next(l for l in text.splitlines() if l.startswith("| `yaml` |"))
    assert f"| {yaml_warm['wall_us']['median'] / 1e3:,.0f} |" in row
    # every build's time is attributed: the phases add up to its wall time
    for rec in [r for r in builds["records"] + server["records"] if r["mode"] != "untraced"]:
        total = sum(rec["analysis"]["attribution_us"].values())
        assert abs(total - rec["wall_us"]) <= 0.02 * rec["wall_us"], (rec["mode"], total, rec["wall_us"])
    assert re.search(r"\d+ of \d+ warm-server builds produced files byte-identical", text)


def test_quick_wins_report_build_time_and_cpu(small_study: Path) -> None:
    text = (small_study / "REPORT.md").read_text()
    quickwins = json.loads((small_study / "study-data" / "quickwins.json").read_text())
    builds = json.loads((small_study / "study-data" / "builds.json").read_text())
    (direct,) = [r for r in builds["records"] if r["mode"] == "direct" and r["format"] == "notes"]
    (one_blas,) = [r for r in quickwins["records"] if r["mode"] == "quickwin:one-blas-thread"]
    assert one_blas["make_ok"] and one_blas["outputs"] == direct["outputs"], one_blas["make_errors"]
    assert direct["cpu_us"] > 0 and one_blas["cpu_us"] > 0
    # One run each: a row's medians are the runs' own wall time and CPU, in seconds; its outputs are direct's.
    row = next(l for l in text.splitlines() if l.startswith("| quick win: one OpenBLAS thread |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3:5] == [f"{direct['wall_us'] / 1e6:.2f}", f"{one_blas['wall_us'] / 1e6:.2f}"], row
    assert cells[8:10] == [f"{direct['cpu_us'] / 1e6:.2f}", f"{one_blas['cpu_us'] / 1e6:.2f}"], row
    assert cells[-1] == "1/1", row
    # The shim holds OpenBLAS to one thread before lamd imports numpy, and only where the caller has not chosen.
    shim = small_study.parent / "out" / "shims" / "one-blas-thread" / "mdfield"
    source = shim.read_text()
    assert source.index('setdefault("OPENBLAS_NUM_THREADS", "1")') < source.index("from lamd.mdfield import main")
    # …which leaves numpy's import without its worker threads (one per further core).
    count = "import numpy, os; print(len(os.listdir('/proc/self/task')))"
    threads = {
        prelude: subprocess.run([sys.executable, "-c", prelude + count], capture_output=True, text=True, check=True)
        for prelude in ("", ONE_BLAS_THREAD_PRELUDE)
    }
    assert int(threads[ONE_BLAS_THREAD_PRELUDE].stdout) == 1
    assert int(threads[""].stdout) > 1 or os.cpu_count() == 1, "numpy's OpenBLAS starts threads of its own"


def test_servers_are_ended(small_study: Path) -> None:
    server = json.loads((small_study / "study-data" / "server.json").read_text())
    cold = [r for r in server["records"] if r["mode"] == "server-cold"]
    assert cold and all(r["servers_started"] for r in cold), "a cold build should start lamd's server"
    assert server["servers_left_running"] == []
    started = {p for r in cold for p in r["servers_started"]} | {
        p for s in server["warm_server_starts"] for p in s["pids"]
    }
    running = lynguine_servers()
    assert not started & set(running)
    assert running == []
    # the server's trace is complete (SIGTERM, not SIGKILL): its exit event is there
    run_dir = Path(cold[0]["run_dir"])
    heads = {p: p.read_text()[:4000] for p in run_dir.glob("*.lynshim.json")}
    server_traces = [p for p, head in heads.items() if "lynguine.server" in head and '"source":"exec"' not in head]
    assert server_traces and all('"lynshim.exit"' in p.read_text() for p in server_traces)
