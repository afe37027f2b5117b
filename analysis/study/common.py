"""What every step of the study shares: paths, running commands, the corpus copy, lynguine servers, stamps.

Nothing here is specific to one measurement. Times are in microseconds in the data, as lynanalyze's are.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lynshim._native import schema

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
INCLUDE = re.compile(r"\\include\{([^}]*)\}")


def log(msg: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict[str, float]:
    """min / median / max / n, and the spread (max-min over the median) the report quotes for noise."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0}
    med = statistics.median(values)
    return {
        "n": len(values),
        "min": min(values),
        "median": med,
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else 0.0,
    }


def tool(name: str) -> str:
    """A command from the venv the study runs in (lynshim, lynanalyze, maketalk…), else from PATH."""
    override = os.environ.get("STUDY_" + name.upper())  # e.g. STUDY_LYNANALYZE=/path/to/a/pinned/binary
    if override:
        return override
    path = VENV_BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def env_with_venv(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment builds run in: the venv's bin first on PATH (lamd's make rules call mdfield…)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LYNSHIM_") and k != "LAMD_USE_SERVER"}
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float


def run(
    args: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    check: bool = False,
) -> Result:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, errors="replace")
    res = Result(args, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return res


# --- lynanalyze ---------------------------------------------------------------------------------------------


def analyze(run_dir: Path) -> dict[str, Any]:
    """lynanalyze's JSON report on one directory of traces."""
    res = run([tool("lynanalyze"), "report", str(run_dir), "--format", "json"], timeout=600)
    if res.returncode == 2 or not res.stdout.strip():
        raise RuntimeError(f"lynanalyze report {run_dir} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def latest_run_dir(out: Path) -> Path:
    runs = sorted((p for p in out.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return runs[-1]


# --- lynguine servers ---------------------------------------------------------------------------------------


def lynguine_servers() -> list[int]:
    """Pids of running lynguine servers (``python -m lynguine.server``), from /proc/*/cmdline."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the interpreter running ``-m lynguine.server`` (not a wrapper such as ``lynshim run … -- python -m
        # lynguine.server``, whose argv only mentions it: ending the wrapper is the server's business)
        if len(argv) >= 3 and argv[1] == b"-m" and argv[2] == b"lynguine.server" and int(proc.name) != os.getpid():
            pids.append(int(proc.name))
    return sorted(pids)


def end_servers(pids: list[int] | None = None, *, timeout: float = 15.0) -> list[int]:
    """SIGTERM each server (so its trace ends cleanly), wait for it, SIGKILL what outlives the timeout.
    Returns the pids that were ended."""
    pids = lynguine_servers() if pids is None else pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
        if alive:
            time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _zombie(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]) == "Z"
    except OSError:
        return True


# --- the corpus copy ----------------------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path  # the copy
    fixes: list[dict[str, str]] = field(default_factory=list)
    manifest: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    originals: dict[str, bytes] = field(default_factory=dict)  # as prepared, for files lamd rewrites

    def reset(self) -> None:
        """Back to the prepared state, in place (the same directories, so a running server's working
        directory stays valid): files the last build created are deleted, files it changed restored."""
        for path in sorted(self.root.rglob("*"), reverse=True):
            rel = str(path.relative_to(self.root))
            if path.is_dir():
                if rel not in self.manifest:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            st = path.stat()
            if rel not in self.manifest:
                path.unlink()
            elif (st.st_size, st.st_mtime_ns) != self.manifest[rel]:
                path.write_bytes(self.originals[rel])
                os.utime(path, ns=(self.manifest[rel][1], self.manifest[rel][1]))

    def snapshot(self) -> None:
        self.manifest.clear()
        self.originals.clear()
        for path in self.root.rglob("*"):
            rel = str(path.relative_to(self.root))
            if path.is_dir():
                self.manifest[rel] = (0, 0)
            else:
                st = path.stat()
                self.manifest[rel] = (st.st_size, st.st_mtime_ns)
                self.originals[rel] = path.read_bytes()


def lamd_dir() -> Path:
    res = run([sys.executable, "-c", "import lamd, os; print(os.path.dirname(lamd.__file__))"], check=True)
    return Path(res.stdout.strip())


def prepare_corpus(src: Path, dest: Path, talks: list[str]) -> Corpus:
    """A fresh copy of the corpus at ``dest``: ``macrosdir:`` appended to every subject folder's _lamd.yml,
    and snippets the chosen talks include under a path they have since moved from copied to that path (the
    copy only; each such fix is recorded and reported)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    for path in dest.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o644)
    macros = lamd_dir() / "macros"
    for cfg in (dest / "talks").glob("*/_lamd.yml"):
        text = cfg.read_text()
        if "\nmacrosdir:" not in "\n" + text:
            cfg.write_text(text.rstrip("\n") + f"\nmacrosdir: {macros}\n")
    corpus = Corpus(dest)
    snippets = dest / "snippets"
    for talk in talks:
        for missing in missing_includes(dest / "talks" / talk, snippets):
            found = sorted(snippets.glob(f"*/includes/{Path(missing).name}"))
            if len(found) >= 1:
                target = snippets / missing
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(found[0], target)
                corpus.fixes.append(
                    {"talk": talk, "included_as": missing, "copied_from": str(found[0].relative_to(snippets))}
                )
    corpus.snapshot()
    return corpus


def missing_includes(talk: Path, snippets: Path) -> list[str]:
    """Includes (followed through the snippets) that exist neither under snippets nor beside the talk."""
    seen: set[str] = set()
    missing: list[str] = []
    stack = [talk]
    while stack:
        text = stack.pop().read_text(errors="replace")
        for inc in INCLUDE.findall(text):
            if inc in seen:
                continue
            seen.add(inc)
            path = snippets / inc
            if path.is_file():
                stack.append(path)
            elif not (talk.parent / inc).exists() and inc.endswith(".md"):
                missing.append(inc)
    return missing


def count_includes(talk: Path, snippets: Path) -> int:
    seen: set[str] = set()
    stack = [talk]
    while stack:
        for inc in INCLUDE.findall(stack.pop().read_text(errors="replace")):
            if inc not in seen:
                seen.add(inc)
                if (snippets / inc).is_file():
                    stack.append(snippets / inc)
    return len(seen)


# --- stamps ---------------------------------------------------------------------------------------------------


def stamp(lamd_src: Path) -> dict[str, Any]:
    """Machine, Python, lynguine, lamd (commit from SNAPSHOT.md or git), lynshim's own commit, the date."""
    cpu = ""
    try:
        cpu = next(
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        kb = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    versions = run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('lynguine')); print(m.version('lamd'))"]
    )
    lyn_v, lamd_v = (versions.stdout.split() + ["?", "?"])[:2]
    lamd_commit = "unknown"
    snap = lamd_src / "SNAPSHOT.md"
    if snap.is_file():
        m = re.search(r"commit ([0-9a-f]{7,40})", snap.read_text())
        if m:
            lamd_commit = m.group(1) + " (from SNAPSHOT.md)"
    else:
        g = run(["git", "-C", str(lamd_src), "rev-parse", "--short", "HEAD"])
        if g.returncode == 0:
            lamd_commit = g.stdout.strip() + " (git)"
    head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
    shim = run([sys.executable, "-c", "import lynshim; print(lynshim.__file__)"], env=env_with_venv()).stdout.strip()
    fs = run(["df", "-T", str(REPO)]).stdout.splitlines()[-1:]
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, {mem} RAM",
        "kernel": platform.release(),
        "filesystem": fs[0].split()[1] if fs else "?",
        "python": platform.python_version(),
        "lynguine": lyn_v,
        "lamd": f"{lamd_v}, commit {lamd_commit}",
        "lamd_src": str(lamd_src),
        "lynshim_commit": head,
        "lynshim_package": str(Path(shim).parent),
        "lynanalyze": tool("lynanalyze"),
    }


def write_json(path: Path, data: Any, compact: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1)
    path.write_text(text + "\n")


# --- reading traces -------------------------------------------------------------------------------------------


def load_events(path: Path) -> list[dict[str, Any]]:
    """A trace's events; a file cut short (a killed process) is read as far as it goes."""
    text = path.read_text(errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        events = []
        for line in text.splitlines():
            line = line.strip().rstrip(",")
            if line in ("", "[", "]"):
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return events


def spans(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """B/E pairs and X events as spans with name, cat, ts, dur, tid and parent (index into the list)."""
    out: list[dict[str, Any]] = []
    stacks: dict[int, list[int]] = {}
    for e in events:
        ph = e.get("ph")
        if ph == "B":
            stack = stacks.setdefault(e["tid"], [])
            out.append(
                {
                    "name": e["name"],
                    "cat": e.get("cat"),
                    "ts": e["ts"],
                    "dur": None,
                    "tid": e["tid"],
                    "parent": stack[-1] if stack else None,
                    "args": e.get("args", {}),
                }
            )
            stack.append(len(out) - 1)
        elif ph == "E":
            stack = stacks.get(e["tid"], [])
            if stack:
                i = stack.pop()
                out[i]["dur"] = e["ts"] - out[i]["ts"]
                # The end's args join the begin's, as in the span an `X` event writes whole.
                out[i]["args"] = {**out[i]["args"], **e.get("args", {})}
        elif ph == "X":
            # A whole span (lynshim writes a span with nothing recorded inside it as one): inside the spans
            # open on its thread, like a begin and its end.
            stack = stacks.get(e["tid"], [])
            out.append(
                {
                    "name": e["name"],
                    "cat": e.get("cat"),
                    "ts": e["ts"],
                    "dur": e.get("dur", 0.0),
                    "tid": e["tid"],
                    "parent": stack[-1] if stack else None,
                    "args": e.get("args", {}),
                }
            )
    return out


def process_meta(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next((e.get("args", {}) for e in events if e.get("name") == schema.EVENT_PROCESS), {})
