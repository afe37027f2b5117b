"""The statistics `make bench` (analysis/bench.py) reports its start-up ratios with: the schedule that
interleaves every tool's pairs over the same rounds, and the distribution-free interval of a median; and
the clock readings that cut a run into the phases of its start-up breakdown."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
from analysis import bench, spawn_route  # noqa: E402 - needs the repository on sys.path


def test_interleaved_spreads_every_tools_pairs_over_the_same_rounds() -> None:
    pairs = {"lynshim run": 60, "in-process": 60, "control": 60, "importtime": 20, "viztracer": 10}
    plan = bench.interleaved(pairs)
    assert len(plan) == 60
    assert Counter(name for round_ in plan for name in round_) == pairs
    assert all(len(set(round_)) == len(round_) for round_ in plan)
    # Each tool's pairs are spread over the whole run, not bunched at its start: every tenth of the rounds
    # holds a tenth of each tool's pairs.
    for tenth in range(10):
        counts = Counter(name for round_ in plan[tenth * 6 : (tenth + 1) * 6] for name in round_)
        assert counts == {name: n // 10 for name, n in pairs.items()}, tenth
    # The order rotates: no tool runs first in every round.
    assert len({round_[0] for round_ in plan}) > 1
    assert bench.interleaved({}) == []


def test_median_interval_is_the_binomial_order_statistics() -> None:
    # 20 values: x(6)..x(15), 95.9 % (the docstring's example).
    assert bench.median_interval([float(v) for v in range(1, 21)]) == (6.0, 15.0)
    assert bench.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert bench.median_interval([float(v) for v in range(1, 7)]) == (1.0, 6.0)


def test_the_start_up_target_is_on_lynshims_rows_except_in_process_tracing_of_five_processes() -> None:
    single = "python -c 'import lynguine'"
    assert bench.has_target(single, bench.RUN) and bench.has_target(single, bench.IN_PROCESS)
    assert bench.has_target(bench.FIVE, bench.RUN)
    assert not bench.has_target(bench.FIVE, bench.IN_PROCESS)
    assert not bench.has_target(single, bench.CONTROL) and not bench.has_target(single, "viztracer")
    # The five-process row with the target gets the pairs the other gives up.
    assert bench.pairs_for(bench.FIVE, bench.RUN, 20) == 120
    assert bench.pairs_for(bench.FIVE, bench.IN_PROCESS, 20) == 20
    assert bench.pairs_for(single, bench.IN_PROCESS, 20) == bench.pairs_for(single, bench.CONTROL, 20) == 160

    ratios = [1.0 + i / 1000 for i in range(40)]  # median 1.0195
    row, note = bench.ratio_row(bench.FIVE, bench.RUN, ratios)
    assert row.endswith("| ≤ 1.02 |") and note is not None and "target ≤ 1.02 met" in note
    row, note = bench.ratio_row(bench.FIVE, bench.IN_PROCESS, [r + 0.01 for r in ratios])
    assert row.endswith("|  |") and note is not None
    assert "no target of its own" in note and "median ratio 1.030" in note and "≤ 1.02" not in note
    row, note = bench.ratio_row(single, bench.CONTROL, ratios)
    assert row.endswith("|  |") and note is not None and "costing nothing" in note
    assert bench.ratio_row(single, "viztracer", ratios)[1] is None


def _phases_of(env: dict[str, str], cwd: Path) -> list[float]:
    started = time.monotonic_ns()
    done = subprocess.run(
        [sys.executable, "-c", "print('ok')"], env=env, capture_output=True, text=True, check=True, cwd=cwd
    )
    ended = time.monotonic_ns()
    assert done.stdout == "ok\n"
    return bench.phase_times(started, ended, done.stderr)


def test_phase_site_cuts_bare_and_traced_runs_into_three_phases(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(bench.PHASE_SITE)
    # Run outside `site`: only PYTHONPATH may find the bench's sitecustomize, as in `make bench`. The
    # environments are the bench's own; traced, lynshim's bootstrap must hand over to the sitecustomize.
    bare = _phases_of(bench.phase_env(site, None), tmp_path)
    traced = _phases_of(bench.phase_env(site, tmp_path / "traces"), tmp_path)
    for phases in (bare, traced):
        assert len(phases) == len(bench.PHASES) == 3
        assert all(ms >= 0 for ms in phases)
        assert phases[0] > 0  # an interpreter's start-up takes time
    assert len(list((tmp_path / "traces").glob("*" + bench.schema.TRACE_SUFFIX))) == 1


def test_phase_times_says_what_is_wrong() -> None:
    assert bench.phase_times(0, 10_000_000, "x\nlynshim-bench-phases 2000000 7000000\n") == [2.0, 5.0, 3.0]
    with pytest.raises(RuntimeError, match="no phase line"):
        bench.phase_times(0, 10, "Traceback ...\n")
    with pytest.raises(RuntimeError, match="out of order"):
        bench.phase_times(0, 10, "lynshim-bench-phases 8 5\n")


#: A callgrind output file in callgrind's own format, as `valgrind --tool=callgrind` writes one: name
#: compression (`(id) name`, then `(id)`), relative positions, a call whose cost line is the callee's
#: inclusive cost, a recursion level, and a function without symbols.
CALLGRIND_OUT = """# callgrind format
version: 1
positions: line
events: Ir
summary: 1140

ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(1) ./malloc/malloc.c
fn=(1) malloc
10 100
+2 20
cob=(2) /opt/python/lib/libpython3.11.so.1.0
cfi=(2) Objects/obmalloc.c
cfn=(2) _PyObject_Free
calls=3 -4
* 900
ob=(2)
fl=(2)
fn=(2)
5 300
fn=(3) _PyObject_Free'2
6 200
ob=(3) /work/python/lynshim/_native.cpython-311-x86_64-linux-gnu.so
fl=(3) ???
fn=(4) 0x0000000000088060
0 400
fn=(5) 0x0000000000087b70
0 120
totals: 1140
"""


def test_instruction_profile_counts_each_functions_own_instructions() -> None:
    profile = bench.instruction_profile(CALLGRIND_OUT)
    assert profile == Counter(
        {
            ("libc.so.6", "malloc"): 120,  # not the 900 of the call it makes
            ("libpython3.11.so.1.0", "_PyObject_Free"): 500,  # both recursion levels, the name given by its id
            ("_native.cpython-311-x86_64-linux-gnu.so", "(no symbols)"): 520,
        }
    )
    assert sum(profile.values()) == 1140  # callgrind's own summary
    # With `--dump-instr=yes` each cost line starts with the instruction's address, then the line.
    with_addresses = CALLGRIND_OUT.replace("positions: line", "positions: instr line")
    with_addresses = "\n".join(
        f"0x{n} {line}" if line[:1].isdigit() or line[:1] in "+-*" else line
        for n, line in enumerate(with_addresses.splitlines())
    )
    assert bench.instruction_profile(with_addresses) == profile


def test_instruction_attribution_names_what_changed_most() -> None:
    bare = Counter({("libpython.so", "eval"): 1_000_000, ("libc.so.6", "malloc"): 200_000})
    traced = Counter(
        {("libpython.so", "eval"): 3_000_000, ("libc.so.6", "malloc"): 100_000, ("_native.so", "(no symbols)"): 40_000}
    )
    by_library, by_function = bench.instruction_attribution(bench.instruction_change(bare, traced), top=2)
    # A library whose change is under 0.05 M is left out of the first line.
    assert by_library == "by library: libpython.so +2.00 M, libc.so.6 -0.10 M"
    assert by_function == "by function: `eval` (libpython.so) +2.00 M, `malloc` (libc.so.6) -0.10 M"


def test_cpu_against_instructions_reads_the_two_shares() -> None:
    instructions = (2_000_000_000, 10_000_000)  # lynshim adds 0.50 %
    # Twenty pairs, 5.5 to 15 ms: the median's interval (x(6)–x(15): 8–12.5 ms of 500, 1.6–2.5 %) lies above 0.50 %.
    slower = bench.cpu_against_instructions(500.0, [5.0 + v / 2 for v in range(1, 21)], instructions)
    assert "median of the 20 pairs above: +2.05 % of its 500 ms" in slower
    assert "+1.60 to +2.50 %" in slower and "adds 0.50 %" in slower and "more slowly" in slower
    # An interval holding 0.50 %: the pairs cannot tell.
    unsure = bench.cpu_against_instructions(500.0, [v - 10.0 for v in range(1, 21)], instructions)
    assert "cannot tell" in unsure
    below = bench.cpu_against_instructions(500.0, [-v for v in range(1, 21)], instructions)
    assert "less than the instructions' share" in below
    assert "too few pairs" in bench.cpu_against_instructions(500.0, [10.0, 12.0, 14.0], instructions)
    assert "cannot be set against" in bench.cpu_against_instructions(500.0, [1.0], None)


def test_collector_change_sums_the_collectors_own_functions() -> None:
    bare = Counter({("libpython3.11.so.1.0", "gc_collect_main"): 100, ("libpython3.11.so.1.0", "dict_traverse"): 50})
    traced = Counter(
        {
            ("libpython3.11.so.1.0", "gc_collect_main"): 160,
            ("libpython3.11.so.1.0", "dict_traverse"): 40,
            ("libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"): 1_000,  # not the collector's
            ("_native.so", "list_traverse"): 7,  # not the interpreter's
        }
    )
    assert bench.collector_change(bench.instruction_change(bare, traced)) == 60 - 10


def test_spawn_route_summary_sets_each_traced_route_against_its_own_bare_run() -> None:
    r = spawn_route
    # Twenty rounds: bare runs of 1 s, those started by sh 1 % faster; in-process tracing costs 3 % started directly
    # and 1 % by sh, with a spread that moves every route of a round alike (the machine's phases).
    rows = [
        {
            r.BARE: 1.0 * k,
            r.BARE_SH: 0.99 * k,
            r.IN_PROCESS: 1.03 * k,
            r.IN_PROCESS_SH: 1.01 * 0.99 * k,
            r.RUN: 1.005 * k,
        }
        for k in (1 + v / 100 for v in range(20))
    ]
    lines = r.summary(rows)
    by_route = {
        line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line
    }
    assert "| 1.0300 |" in by_route[r.IN_PROCESS] and f"| {r.BARE} |" in by_route[r.IN_PROCESS]
    assert "| 1.0100 |" in by_route[r.IN_PROCESS_SH] and f"| {r.BARE_SH} |" in by_route[r.IN_PROCESS_SH]
    assert "| 1.0050 |" in by_route[r.RUN]
    assert "| 0.9900 |" in by_route[r.BARE_SH]
    # in-process started directly less by sh: 1.03 - 0.9999 = 3.01 % of the bare run, in every round.
    assert "median +3.01 %, 95 % interval of the median +3.01 to +3.01 % (rounds: 20)" in lines[-1]
    assert "(too few rounds)" in r.summary(rows[:3])[-1]


def test_started_by_sh_keeps_the_environment_words_and_puts_a_waiting_shell_in_between() -> None:
    command = bench.started_by_sh(["LYNSHIM_X=1 2", sys.executable, "-c", "print(1)", "a=b"])
    assert command[0] == "LYNSHIM_X=1 2"
    assert command[1:5] == ["sh", "-c", '"$@"; exit $?', "sh"]
    assert command[5:] == [sys.executable, "-c", "print(1)", "a=b"]
    # Run as the bench runs it: the variable reaches the program, whose parent is the shell, not this process,
    # and the program's exit status comes back through the shell.
    check = (
        f"import os, sys; sys.exit(0 if os.environ.get('LYNSHIM_X') == '1 2' and os.getppid() != {os.getpid()} else 3)"
    )
    bench.timed(bench.started_by_sh(["LYNSHIM_X=1 2", sys.executable, "-c", check]))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        bench.timed(bench.started_by_sh([sys.executable, "-c", "raise SystemExit(7)"]))
    assert failed.value.returncode == 7


def test_header_field_record_bytes_is_the_mean_line_of_its_records_only(tmp_path: Path) -> None:
    short = b'{"ph":"X","name":"lynguine.util.yaml.header_field","args":{"field":"a"}},\n'
    long = b'{"ph":"X","name":"lynguine.util.yaml.header_field","args":{"field":"abcdef"}},\n'
    other = b'{"ph":"X","name":"import lynguine","cat":"import"},\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.lynshim.json").write_bytes(b"[\n" + short + other)
    (tmp_path / "2.lynshim.json").write_bytes(long + other + b"]\n")
    assert bench.header_field_record_bytes(tmp_path) == (len(short) + len(long)) / 2
    assert bench.header_field_record_bytes(tmp_path / "a" / "none") is None


def test_waited_ns_per_call_sums_the_waits_of_a_real_trace_only(tmp_path: Path) -> None:
    trace = tmp_path / "1.lynshim.json"
    trace.write_text(
        "[\n"
        '{"ph":"i","name":"lynshim.waited-for-writer","args":{"waited_us":1.5,"lists_behind":65}},\n'
        '{"ph":"X","name":"trivial","args":{"waited_us":100}},\n'
        '{"ph":"i","name":"lynshim.waited-for-writer","args":{"waited_us":2.5,"lists_behind":70}}\n'
        "]\n"
    )
    # 4 µs over 1 000 calls; the span that happens to carry the same arg is not a wait.
    assert bench.waited_ns_per_call(trace, 1000) == 4.0


def test_fresh_page_note_says_what_each_rate_costs_and_blames_the_spread_only_when_the_rates_differ() -> None:
    rates = {
        "file, after idle": 8192.0,
        "file, just freed": 512.0,
        "file direct, after idle": 600.0,
        "file direct, just freed": 400.0,
        "memory, after idle": 3000.0,
    }
    same = bench.fresh_page_note(rates | {"memory, just freed": 2900.0}, 204.8, 10_000)
    # 204.8 bytes is a twentieth of a page: 410 ns and 26 ns per call through the page cache, 30 and 20 ns
    # direct; 10 000 faults at 3.0 and 2.9 µs.
    assert "410 ns of the writer's CPU per call at the first rate, 26 ns at the second" in same
    assert "(as in these loops), 30 and 20 ns" in same
    assert "30 ms of its start-up at the first rate, 29 ms at the second" in same
    assert "not to the spread" in same
    no_direct = {k: v for k, v in rates.items() if not k.startswith("file direct")}
    refused = bench.fresh_page_note(no_direct | {"memory, just freed": 2900.0}, 204.8, 10_000)
    assert "O_DIRECT" not in refused
    assert "26 ns at the second. When the writer" in refused
    differ = bench.fresh_page_note(rates | {"memory, just freed": 1000.0}, None, 10_000)
    assert "one source of the start-up rows' spread" in differ
    assert "per call" not in differ
