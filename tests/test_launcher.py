"""The native ``lynshim`` command (crates/lynlaunch) against the Python launcher it stands in for.

The native command launches plain ``lynshim run``s itself and hands every other command line to
``python -m lynshim``. These tests hold the two launchers to the same environment, run record, summary
line and signals, and check each reason for a hand-over. For that they install the binary into a
prefix of their own (``bin/``, ``lib/pythonX.Y/site-packages/``) in both layouts it finds the package in:
an editable install's ``.pth`` file and a wheel's copy of the package. That prefix's ``bin/python3`` logs
every hand-over before it runs the real interpreter.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import LAUNCHERS, LYNSHIM, REPO, Trace, clean_env, load_events
from lynshim._native import schema

PY = sys.executable
SITE = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def write_record(site: Path, size: int) -> None:
    """A lynshim distribution's RECORD listing the script ``bin/lynshim`` of ``size`` bytes."""
    (site / "lynshim-0.1.0.dist-info").mkdir()
    (site / "lynshim-0.1.0.dist-info" / "RECORD").write_text(f"../../../bin/lynshim,sha256=x,{size}\n")


class Prefix:
    """The native command installed under ``root`` with lynshim's package, editable or copied."""

    def __init__(self, root: Path, *, layout: str, python: bool = True, site: str = SITE) -> None:
        self.root = root
        self.log = root / "handovers.log"
        bin_dir = root / "bin"
        site = root / site
        bin_dir.mkdir(parents=True, exist_ok=True)
        site.mkdir(parents=True)
        shutil.copy2(LYNSHIM, bin_dir / "lynshim")
        # What pip writes: the installation whose RECORD lists bin/lynshim, at its size, is the binary's own.
        if layout != "none":
            write_record(site, LYNSHIM.stat().st_size)
        if layout == "editable":
            (site / "lynshim.pth").write_text(f"{REPO / 'python'}\n")
            self.package = REPO / "python" / "lynshim"
        elif layout == "wheel":
            self.package = site / "lynshim"
            shutil.copytree(REPO / "python" / "lynshim", self.package, ignore=shutil.ignore_patterns("__pycache__"))
        path = f"{site}{os.pathsep}" if layout == "wheel" else ""
        if python:
            wrapper = bin_dir / "python3"
            wrapper.write_text(
                f'#!/bin/sh\nprintf "%s\\n" "$*" >> {self.log}\nPYTHONPATH="{path}$PYTHONPATH" exec {PY} "$@"\n'
            )
            wrapper.chmod(0o755)

    @property
    def lynshim(self) -> Path:
        return self.root / "bin" / "lynshim"

    def handovers(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def run(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.lynshim), *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=300
        )


def test_an_editable_install_runs_natively(tmp_path: Path) -> None:
    prefix = Prefix(tmp_path / "prefix", layout="editable")
    proc = prefix.run("run", "-o", "t", "--label", "x", "--", PY, "-c", "import lynguine", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("lynshim: traced 1 Python process;"), proc.stderr
    assert prefix.handovers() == []
    (run_dir,) = (tmp_path / "t").iterdir()
    assert json.loads((run_dir / schema.RUN_RECORD).read_text())["label"] == "x"


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["run", "--help"], ["run"], ["run", "--lab", "x", "--", "true"], ["nonsense"]],
    ids=str,
)
def test_other_command_lines_go_to_python_unchanged(tmp_path: Path, argv: list[str]) -> None:
    prefix = Prefix(tmp_path / "prefix", layout="editable")
    native = prefix.run(*argv, cwd=tmp_path)
    python = subprocess.run(
        [PY, "-m", "lynshim", *argv], cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert (native.returncode, native.stdout) == (python.returncode, python.stdout)
    # A run's summary names its own run directory; everything else is word for word.
    assert native.stderr.split("traces in")[0] == python.stderr.split("traces in")[0]
    assert prefix.handovers() == ["-P -m lynshim " + " ".join(argv)]


def test_a_pyproject_that_configures_lynshim_is_read_by_python(tmp_path: Path) -> None:
    prefix = Prefix(tmp_path / "prefix", layout="editable")
    (tmp_path / "pyproject.toml").write_text('[[tool.lynshim.targets]]\nmodule = "talks"\nqualname = "build"\n')
    code = f"import os; print(os.environ.get({schema.ENV_TARGETS!r}))"
    proc = prefix.run("run", "-o", "t", "--", PY, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "talks:build=user"
    assert len(prefix.handovers()) == 1


def test_a_pyproject_of_another_tool_leaves_the_run_native(tmp_path: Path) -> None:
    """This repository's own pyproject.toml names lynshim everywhere but has no [tool.lynshim] table."""
    prefix = Prefix(tmp_path / "prefix", layout="editable")
    proc = prefix.run("run", "-o", str(tmp_path / "t"), "--", "true", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert prefix.handovers() == []


def test_a_wheel_install_compiles_the_bootstrap_once_through_python(tmp_path: Path) -> None:
    prefix = Prefix(tmp_path / "prefix", layout="wheel")
    cached = prefix.package / "_bootstrap" / "__pycache__"
    assert not cached.exists()
    for expected_handovers in (1, 1):
        proc = prefix.run("run", "-o", "t", "--", PY, "-c", "import json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith("lynshim: traced 1 Python process;"), proc.stderr
        assert len(prefix.handovers()) == expected_handovers
        assert any(p.name.startswith("sitecustomize.") for p in cached.iterdir())


def test_a_missing_preload_library_is_named_in_the_summary(tmp_path: Path) -> None:
    prefix = Prefix(tmp_path / "prefix", layout="wheel")
    shutil.rmtree(prefix.package / "_preload")
    subprocess.run(
        [PY, "-m", "py_compile", str(prefix.package / "_bootstrap" / "sitecustomize.py")], check=True, timeout=60
    )
    proc = prefix.run("run", "-o", "t", "--", "sh", "-c", "echo err >&2; exit 3", cwd=tmp_path)
    assert proc.returncode == 3
    lines = proc.stderr.splitlines()
    assert lines[0] == "err" and len(lines) == 2
    missing = prefix.package.resolve() / "_preload" / "liblynexec.so"
    assert lines[1].startswith(
        f"lynshim: traced 0 Python processes; non-Python processes were not traced ({missing} is missing;"
    )
    assert prefix.handovers() == []


def test_the_package_is_the_one_installed_with_the_binary(tmp_path: Path) -> None:
    """A prefix with lynshim for two Python versions (as ~/.local can be): the one whose RECORD lists this
    binary is used, not an older one whose RECORD lists its own `bin/lynshim` (a console script, then), and
    a command line goes to that version's interpreter."""
    root = tmp_path / "prefix"
    stale = root / "lib/python3.10/site-packages"
    shutil.copytree(REPO / "python" / "lynshim", stale / "lynshim", ignore=shutil.ignore_patterns("__pycache__"))
    write_record(stale, 169)
    prefix = Prefix(root, layout="editable")
    versioned = root / "bin" / Path(SITE).parent.name
    versioned.write_text(f'#!/bin/sh\necho versioned >> {prefix.log}\nexec {PY} "$@"\n')
    versioned.chmod(0o755)
    code = f"import os; print(os.environ[{schema.ENV_BOOTSTRAP!r}])"
    proc = prefix.run("run", "-o", "t", "--", PY, "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == (REPO / "python" / "lynshim" / "_bootstrap").resolve()
    assert prefix.run("--version", cwd=tmp_path).returncode == 0
    assert prefix.handovers() == ["versioned"]


def test_without_a_package_or_a_python_it_says_so(tmp_path: Path) -> None:
    prefix = Prefix(tmp_path / "prefix", layout="none", python=False)
    env = clean_env() | {"PATH": str(tmp_path / "empty")}
    proc = prefix.run("run", "--", "true", cwd=tmp_path, env=env)
    assert proc.returncode == 127
    assert proc.stderr.startswith("lynshim: cannot start python3 to run lynshim's Python command line:")
    assert "make install" in proc.stderr


#: The command's environment, signal state and parent program, as it sees them.
SELF_REPORT = textwrap.dedent(
    """
    import json, os, sys
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
    signals = {k: status[k] for k in ("SigBlk", "SigIgn")}
    parent = os.readlink(f"/proc/{os.getppid()}/exe")
    print(json.dumps({"env": dict(os.environ), "signals": signals, "parent": parent}))
    sys.exit(5)
    """
)


def launched_by(launcher: tuple[str, ...]) -> str:
    """The program a command launched by ``launcher`` has for its parent: the launcher asked for, which ran
    the command itself rather than handing it over."""
    return str(Path(launcher[0]).resolve())


def test_both_launchers_give_the_command_the_same_environment_and_record(tmp_path: Path) -> None:
    env = clean_env() | {"PYTHONPATH": f"/nonexistent/a{os.pathsep}{os.pathsep}/nonexistent/b"}
    env.pop("LD_PRELOAD", None)
    bare = subprocess.run([PY, "-c", SELF_REPORT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 5, bare.stderr
    seen = {}
    for name, launcher in LAUNCHERS.items():
        out = tmp_path / name
        proc = subprocess.run(
            [*launcher, "run", "-o", str(out), "--label", "same", "--", PY, "-c", SELF_REPORT],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 5, proc.stderr
        (run_dir,) = out.iterdir()
        report = json.loads(proc.stdout)
        assert report["parent"] == launched_by(launcher)
        # Blocked and ignored signals as in a bare run: the launcher's handling of them is its own.
        assert report["signals"] == json.loads(bare.stdout)["signals"]
        environment = report["env"]
        assert environment.pop(schema.ENV_DIR) == str(run_dir)
        assert environment.pop(schema.ENV_RUN_ID) == run_dir.name
        # Under a C locale CPython coerces LC_CTYPE (PEP 538) in the Python launcher's own environment,
        # which its command inherits; the native launcher leaves the command's as the caller's.
        environment.pop("LC_CTYPE", None)
        record = json.loads((run_dir / schema.RUN_RECORD).read_text())
        assert record.pop("run_id") == run_dir.name
        timing = {k: record.pop(k) for k in ("start_unix_ns", "end_unix_ns", "children_user_s", "children_sys_s")}
        assert timing["end_unix_ns"] > timing["start_unix_ns"] and timing["children_user_s"] > 0
        summary = proc.stderr.splitlines()[-1]
        assert summary.endswith(f"traces in {name}/{run_dir.name}/")
        seen[name] = (environment, record, summary.split("traces in")[0])
    assert seen["native"] == seen["python"]
    environment, record, _ = seen["native"]
    assert environment["PYTHONPATH"].split(os.pathsep) == [
        environment[schema.ENV_BOOTSTRAP],
        "/nonexistent/a",
        "/nonexistent/b",
    ]
    assert environment[schema.ENV_LABEL] == "same"
    assert environment["LD_PRELOAD"].endswith("/_preload/liblynexec.so")
    added = set(environment) - set(env)
    assert added == {schema.ENV_BOOTSTRAP, schema.ENV_LABEL, "LD_PRELOAD"}, added
    assert record["exit_status"] == 5 and record["traced_processes"] == 1 and record["cwd"] == str(tmp_path)


SLEEPER = textwrap.dedent(
    """
    import os, time
    print(os.readlink(f"/proc/{os.getppid()}/exe"), flush=True)
    time.sleep(60)
    """
)


def start_sleeper(launcher: tuple[str, ...], out: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``lynshim run`` of a program that sleeps, once the program runs (it has named its parent, the launcher
    asked for); killed if it does not say so within a minute."""
    proc = subprocess.Popen(
        [*launcher, "run", "-o", str(out), "--", PY, "-c", SLEEPER],
        cwd=out.parent,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        ready = selector.select(timeout=60)
    if not ready:
        proc.kill()
        proc.communicate()
        pytest.fail("the traced program did not start within 60 s")
    assert proc.stdout.readline().decode().strip() == launched_by(launcher)
    return proc


def test_sigterm_is_passed_on_and_sigint_left_to_the_terminal(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    """Like a shell: Ctrl-C is the terminal's to deliver to the command, SIGTERM to the launcher is passed on."""
    out = tmp_path / "t"
    proc = start_sleeper(launcher, out)
    try:
        proc.send_signal(signal.SIGINT)  # to the launcher alone: the command runs on
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()
    (run_dir,) = out.iterdir()
    traces = [Trace(p, load_events(p)) for p in run_dir.glob("*" + schema.TRACE_SUFFIX)]
    (python,) = [t for t in traces if not t.is_exec_record]
    assert python.exit["exit_signal"] == signal.SIGTERM
    record = json.loads((run_dir / schema.RUN_RECORD).read_text())
    assert record["exit_signal"] == signal.SIGTERM and record["exit_status"] is None


def test_sigint_to_the_terminal_s_process_group_reaches_the_command(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    """Ctrl-C: the command gets its SIGINT (it starts with SIGINT at its default, whatever the launcher does
    with its own), dies of it, and so does the launcher after writing its record."""
    out = tmp_path / "t"
    proc = start_sleeper(launcher, out, start_new_session=True)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == -signal.SIGINT
    finally:
        proc.kill()
        proc.communicate()
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / schema.RUN_RECORD).read_text())["exit_signal"] == signal.SIGINT


@pytest.mark.parametrize("case", ["not executable", "no trace directory", "outside the working directory"])
def test_both_launchers_fail_and_report_alike(tmp_path: Path, case: str) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644 if case == "not executable" else 0o755)
    (tmp_path / "a-file").write_text("")
    seen = {}
    for name, launcher in LAUNCHERS.items():
        out = tmp_path / "a-file" if case == "no trace directory" else tmp_path / name
        work = tmp_path / f"work-{name}"
        work.mkdir()
        proc = subprocess.run(
            [*launcher, "run", "-o", str(out), "--", str(script)],
            cwd=work,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Each run directory has its own name (the second and a random suffix): the words around it must match.
        words = [w.split("/")[0] if w.startswith("OUT/") else w for w in proc.stderr.replace(str(out), "OUT").split()]
        seen[name] = (proc.returncode, proc.stdout, words)
    assert seen["native"] == seen["python"]
    returncode, stdout, words = seen["native"]
    if case == "not executable":
        assert (returncode, " ".join(words)) == (126, f"lynshim: {script}: permission denied")
    elif case == "no trace directory":
        assert returncode == 2 and words[:5] == ["lynshim:", "cannot", "create", "the", "trace"]
        assert "OUT Not a directory; choose another with -o DIR" in " ".join(words)
    else:
        # A run directory outside the working directory is shown by its absolute path.
        assert (returncode, stdout) == (0, "hi\n")
        assert " ".join(words) == "lynshim: traced 0 Python processes and 1 other process; traces in OUT"


#: Ignores the signals numbered in argv[1] (comma-separated), then runs argv[2:]: a caller that ignores them
#: (a background job's SIGINT, `nohup`'s, a CI runner's). Python, not `sh -c "trap '' …"`: a shell keeps
#: SIGCHLD for itself whatever `trap` says.
IGNORE_THEN_EXEC = (
    "import os, signal, sys; [signal.signal(int(s), signal.SIG_IGN) for s in sys.argv[1].split(',')];"
    " os.execvp(sys.argv[2], sys.argv[2:])"
)


def report_ignoring(cwd: Path, signals: list[int], *prefix: str) -> dict[str, Any]:
    """SELF_REPORT's report, run by ``prefix`` (a launcher's command line, or nothing) from a caller that
    ignores ``signals``."""
    proc = subprocess.run(
        [PY, "-c", IGNORE_THEN_EXEC, ",".join(map(str, signals)), *prefix, PY, "-c", SELF_REPORT],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5, proc.stderr
    return json.loads(proc.stdout)


def test_signals_the_caller_ignores_stay_ignored(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    """A background job's SIGINT, a `trap '' TERM`: the command ignores them as it would bare."""
    ignored = [signal.SIGINT, signal.SIGTERM]
    bare = report_ignoring(tmp_path, ignored)
    traced = report_ignoring(tmp_path, ignored, *launcher, "run", "-o", str(tmp_path / "t"), "--")
    assert traced["parent"] == launched_by(launcher)
    assert traced["signals"] == bare["signals"]
    assert int(bare["signals"]["SigIgn"], 16) & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGTERM - 1))


def test_a_caller_that_ignores_sigchld_still_gets_the_exit_status(tmp_path: Path, launcher: tuple[str, ...]) -> None:
    """With SIGCHLD ignored the kernel reaps children unseen: the launcher waits for the command all the
    same, and the command still starts with SIGCHLD ignored, as it would bare."""
    out = tmp_path / "t"
    bare = report_ignoring(tmp_path, [signal.SIGCHLD])
    traced = report_ignoring(tmp_path, [signal.SIGCHLD], *launcher, "run", "-o", str(out), "--")
    assert traced["parent"] == launched_by(launcher)
    assert traced["signals"] == bare["signals"]
    assert int(bare["signals"]["SigIgn"], 16) & 1 << (signal.SIGCHLD - 1)
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / schema.RUN_RECORD).read_text())["exit_status"] == 5
