"""Faults around the shim, on real processes: a disk that fills while tracing, a trace directory removed
while the build runs, and 200 traced processes writing into one directory at once.

In every case the traced program's stdout, stderr and exit status are those of the same program run
untraced, lynshim says at most one line per process (and its summary), and whatever trace files are left
are read by lynanalyze without a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import clean_env, load_events, lynshim_run, untraced
from lynshim._native import schema

PY = sys.executable
LYNANALYZE = shutil.which("lynanalyze", path=str(Path(PY).parent)) or "lynanalyze"

# Enough imports for a trace of tens of kilobytes, writing to both streams, ending with status 3.
PROGRAM = textwrap.dedent("""\
    import sys
    import argparse, asyncio, csv, decimal, email.parser, http.client, json, xml.dom.minidom
    print("out", sum(range(10)))
    print("err", file=sys.stderr)
    sys.exit(3)
""")


def split_stderr(stderr: bytes) -> tuple[list[bytes], list[bytes]]:
    """(the program's own stderr lines, lynshim's lines other than `lynshim run`'s summary)."""
    own, shim = [], []
    for line in stderr.splitlines(keepends=True):
        if line.startswith(b"lynshim: traced "):
            continue
        (shim if line.startswith(b"lynshim") else own).append(line)
    return own, shim


def assert_unchanged(
    bare: subprocess.CompletedProcess[bytes], traced: subprocess.CompletedProcess[bytes], processes: int
) -> list[bytes]:
    assert traced.returncode == bare.returncode, traced.stderr
    assert traced.stdout == bare.stdout
    own, shim = split_stderr(traced.stderr)
    assert b"".join(own) == bare.stderr
    assert len(shim) <= processes, shim  # at most one warning per process
    return shim


def assert_analysable(directory: Path) -> None:
    """lynanalyze reads whatever was left: a report or a reason, never a crash."""
    proc = subprocess.run(
        [LYNANALYZE, "report", str(directory), "--format", "json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode in (0, 1, 2), proc.stderr
    assert "panicked" not in proc.stderr
    if proc.returncode != 2:
        json.loads(proc.stdout)


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs with 16 KiB left free (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root (tests run as root in CI and `make test`)")
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        (mount / "filler").write_bytes(b"\0" * 48 * 1024)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_while_tracing(tmp_path: Path, full_disk: Path, launcher: tuple[str, ...]) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    bare = untraced([PY, str(script)], env=clean_env(), cwd=tmp_path)
    assert bare.returncode == 3 and bare.stdout == b"out 45\n"
    # Not conftest's lynshim_run: what is left on a full disk may end in half a line, which it cannot load.
    proc = subprocess.run(
        [*launcher, "run", "-o", str(full_disk / "traces"), "--", PY, str(script)],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    # One Python process (and `lynshim run` itself, which may say it could not write its run record).
    assert_unchanged(bare, proc, processes=2)
    assert shutil.disk_usage(full_disk).free < 4096, "the disk did fill"
    assert_analysable(full_disk / "traces")


def test_trace_directory_removed_mid_run(tmp_path: Path) -> None:
    # The program removes the directory its trace goes to (or, untraced, a stand-in), then carries on
    # importing and starts a child, whose trace has nowhere to go either.
    program = textwrap.dedent(f"""\
        import os, shutil, subprocess, sys
        shutil.rmtree(os.environ.get({schema.ENV_DIR!r}) or os.environ["VICTIM"])
        import argparse, asyncio, csv, decimal, json
        print("parent", flush=True)
        child = subprocess.run([sys.executable, "-c", "import json, csv; print('child')"])
        print("after", child.returncode, file=sys.stderr)
        sys.exit(5)
    """)
    script = tmp_path / "program.py"
    script.write_text(program)
    env = clean_env()
    env["VICTIM"] = str(tmp_path / "stand-in")
    (tmp_path / "stand-in").mkdir()
    bare = untraced([PY, str(script)], env=env, cwd=tmp_path)
    assert bare.returncode == 5 and bare.stdout == b"parent\nchild\n", bare.stderr
    run = lynshim_run(tmp_path / "traces", [PY, str(script)], env=env, cwd=tmp_path)
    # Two Python processes, and `lynshim run` (its run record has nowhere to go).
    assert_unchanged(bare, run.proc, processes=3)
    assert_analysable(tmp_path / "traces")


def test_200_concurrent_processes_into_one_directory(tmp_path: Path) -> None:
    count = 200
    program = textwrap.dedent(f"""\
        import subprocess, sys
        children = [subprocess.Popen([sys.executable, "-c", f"import json, csv; print({{i}})"],
                                     stdout=subprocess.PIPE) for i in range({count})]
        outputs = [c.communicate()[0] for c in children]
        print(sum(int(o) for o in outputs), all(c.returncode == 0 for c in children))
    """)
    script = tmp_path / "program.py"
    script.write_text(program)
    bare = untraced([PY, str(script)], env=clean_env(), cwd=tmp_path)
    assert bare.returncode == 0 and bare.stdout == f"{sum(range(count))} True\n".encode()
    run = lynshim_run(tmp_path / "traces", [PY, str(script)], env=clean_env(), cwd=tmp_path, timeout=900)
    shim = assert_unchanged(bare, run.proc, processes=count + 1)
    assert shim == [], shim  # nothing went wrong: nothing said
    assert run.run_dir is not None
    # No file lost or clobbered: one whole trace per process, each naming its own pid.
    files = sorted(run.run_dir.glob("*" + schema.TRACE_SUFFIX))
    assert len(run.traces) == count + 1, len(run.traces)
    pids = [t.pid for t in run.traces]
    assert len(set(pids)) == count + 1
    for trace in run.traces:
        assert trace.path.read_text().rstrip().endswith("]"), trace.path
        assert trace.exit is not None and trace.exit["exit_status"] == 0
        assert trace.path.name.startswith(f"{trace.pid}-")
    assert len({f.name for f in files}) == len(files)
    summary = run.proc.stderr.splitlines()[-1].decode()
    assert f"traced {count + 1} Python processes" in summary, summary
    # …and lynanalyze counts each once, with nothing skipped or dropped.
    proc = subprocess.run(
        [LYNANALYZE, "report", str(run.run_dir), "--format", "json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["processes"] == count + 1
    assert report["summary"]["skipped"] == [] and report["summary"]["dropped"] == []
    assert [e for e in load_events(files[0]) if e.get("name") == schema.EVENT_PROCESS]


def test_a_hostile_trace_directory_is_read_once_and_never_summed_as_garbage(tmp_path: Path) -> None:
    """The issue's directory: a link back up the tree, a copied file, a timestamp of 1e308, a begin never
    ended. Each file is read once, the copy counted once, the bad lines dropped and named, and both
    `report` and `merge` exit 1 to say so."""
    fixtures = Path(__file__).parent / "fixtures" / "traces"
    traces = tmp_path / "traces"
    shutil.copytree(fixtures, traces)
    clean = subprocess.run(
        [LYNANALYZE, "report", str(fixtures), "--format", "json"], capture_output=True, text=True, timeout=120
    )
    assert clean.returncode == 0, clean.stderr
    expected = json.loads(clean.stdout)["sections"]["processes"]["data"]
    biggest = max(traces.glob("*" + schema.TRACE_SUFFIX), key=lambda p: p.stat().st_size)
    lines = biggest.read_text().split("\n")
    ends = [i for i, line in enumerate(lines) if '"ph":"E"' in line and '"cat":"import"' in line]
    lines[ends[10]] = lines[ends[10]].replace('"ts":', '"ts":1e308,"was":')  # a hostile writer's timestamp
    lines.insert(ends[20], '{"ph":"B","name":"never ended","cat":"lamd","pid":1,"tid":1,"ts":1.0}')
    biggest.write_text("\n".join(lines))
    small = min(traces.glob("*" + schema.TRACE_SUFFIX), key=lambda p: p.stat().st_size)
    shutil.copy(small, traces / "copy.lynshim.json")
    (traces / "deeper").mkdir()
    (traces / "deeper" / "loop").symlink_to("..")

    proc = subprocess.run(
        [LYNANALYZE, "report", str(traces), "--format", "json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    # Counted once: the same processes as the clean directory, each wall time finite and as before.
    rows = report["sections"]["processes"]["data"]
    assert len(rows) == len(expected) and report["summary"]["processes"] == len(expected)
    for row, clean_row in zip(
        sorted(rows, key=lambda r: r["pid"]), sorted(expected, key=lambda r: r["pid"]), strict=False
    ):
        assert row["wall_us"] == pytest.approx(clean_row["wall_us"]), row["command"]
    [dropped] = report["summary"]["dropped"]
    assert biggest.name in dropped and "timestamp" in dropped and "begin without an end" in dropped, dropped
    [copy] = report["summary"]["skipped"]
    assert "copy.lynshim.json" in copy and small.name in copy and "counted once" in copy
    assert "loop" in proc.stderr and "not read again" in proc.stderr

    merged = tmp_path / "merged.json"
    proc = subprocess.run(
        [LYNANALYZE, "merge", str(traces), "-o", str(merged)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and biggest.name in proc.stderr and "copy.lynshim.json" in proc.stderr, proc.stderr
    events = json.loads(merged.read_text())["traceEvents"]
    assert not [e for e in events if e.get("name") == "never ended" or "was" in e]
    assert max(e.get("ts", 0) for e in events) < 3_600e6
