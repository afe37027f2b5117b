"""Real lamd builds under ``lynshim run``: each talk × format, repeated, in a fresh copy of the corpus.

One function, :func:`build`, is used by every step that builds (direct mode, server mode, quick wins), so
every build is measured the same way: wall time from lynshim's run record (what the user waits for), the
traces in one run directory, make's output checked for failure (maketalk exits 0 when make fails), and a
hash of every output file so that variants can be checked byte for byte against direct mode.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common as c

FORMATS = {
    "notes": ["--format", "notes", "--to", "html"],
    "slides": ["--format", "slides", "--to", "html"],
    "posts": [],  # maketalk's default build ("all": the post, with a people file)
}
MAKE_FAILED = re.compile(r"make(\[\d+\])?: \*\*\*|No rule to make target|Error: ")
SKIP_OUTPUTS = {"lynguine.log", "makefile"}


@dataclass
class Study:
    """Where things are and the knobs, shared by every step."""

    out: Path  # raw output (traces) — never committed
    corpus_src: Path
    lamd_src: Path
    talks: list[str]  # "subject/talk.md", relative to corpus/talks
    formats: list[str]
    runs: int
    n: int  # repeats for benches and operations

    _corpus: c.Corpus | None = None

    @property
    def corpus(self) -> c.Corpus:
        """The corpus copy, prepared once for all the study's talks and reset before every build."""
        if self._corpus is None:
            self._corpus = c.prepare_corpus(self.corpus_src, self.out / "corpus", self.talks)
        return self._corpus

    def subject_dir(self, talk: str) -> Path:
        return self.corpus.root / "talks" / Path(talk).parent


def build_untraced(study: Study, talk: str, fmt: str, *, run_no: int) -> dict[str, Any]:
    """The same build without lynshim (wall time from this process's clock): what tracing costs."""
    corpus = study.corpus
    corpus.reset()
    res = c.run(
        [c.tool("maketalk"), Path(talk).name, *FORMATS[fmt]],
        cwd=study.subject_dir(talk),
        env=c.env_with_venv(),
        timeout=1200,
    )
    failed = [l for l in (res.stdout + res.stderr).splitlines() if MAKE_FAILED.search(l)]
    return {
        "mode": "untraced",
        "talk": talk,
        "format": fmt,
        "run": run_no,
        "wall_us": res.wall_s * 1e6,
        "command": "maketalk " + " ".join([Path(talk).name, *FORMATS[fmt]]),
        "make_ok": not failed and res.returncode == 0,
        "make_errors": failed[:5],
        "outputs": output_hashes(corpus),
    }


def build(
    study: Study,
    talk: str,
    fmt: str,
    *,
    mode: str,
    run_no: int,
    extra_env: dict[str, str] | None = None,
    path_prefix: Path | None = None,
    make_args: str | None = None,
    keep_servers: bool = False,
) -> dict[str, Any]:
    """One traced build of ``talk`` in ``fmt`` in a fresh corpus copy; returns its record."""
    corpus = study.corpus
    corpus.reset()
    subject = study.subject_dir(talk)
    env = c.env_with_venv(extra_env)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    if make_args:
        env["MAKEFLAGS"] = make_args
    traces = study.out / "traces" / mode
    traces.mkdir(parents=True, exist_ok=True)
    servers_before = set(c.lynguine_servers())
    label = f"{mode}|{talk}|{fmt}|{run_no}"
    res = c.run(
        [
            c.tool("lynshim"),
            "run",
            "-o",
            str(traces),
            "--label",
            label,
            "--",
            c.tool("maketalk"),
            Path(talk).name,
            *FORMATS[fmt],
        ],
        cwd=subject,
        env=env,
        timeout=1200,
    )
    run_dir = (
        Path(res.stderr.rsplit("traces in ", 1)[-1].strip().rstrip("/"))
        if "traces in " in res.stderr
        else c.latest_run_dir(traces)
    )
    started_servers = sorted(set(c.lynguine_servers()) - servers_before)
    if started_servers and not keep_servers:
        # The build left a server behind (lamd's is kept alive 300 s): end it so its trace is complete.
        c.end_servers(started_servers)
    record = json.loads((run_dir / "run.json").read_text())
    output = res.stdout + res.stderr
    failed = [l for l in output.splitlines() if MAKE_FAILED.search(l)]
    return {
        "mode": mode,
        "talk": talk,
        "format": fmt,
        "run": run_no,
        "run_dir": str(run_dir),
        "command": "maketalk " + " ".join([Path(talk).name, *FORMATS[fmt]]),
        "wall_us": (record["end_unix_ns"] - record["start_unix_ns"]) / 1e3,
        # The CPU of every process of the build that was waited for (the launcher's RUSAGE_CHILDREN).
        "cpu_us": (record["children_user_s"] + record["children_sys_s"]) * 1e6,
        "exit_status": record.get("exit_status"),
        "make_ok": not failed and res.returncode == 0,
        "make_errors": failed[:5],
        "traced_processes": record.get("traced_processes"),
        "servers_started": started_servers,
        "outputs": output_hashes(corpus),
        "corpus_fixes": [f for f in corpus.fixes if f["talk"] == talk],
    }


def output_hashes(corpus: c.Corpus) -> dict[str, str]:
    """sha256 of every file the build created or changed in the corpus copy (relative paths)."""
    out = {}
    for path in sorted(corpus.root.rglob("*")):
        if not path.is_file() or path.name in SKIP_OUTPUTS:
            continue
        rel = str(path.relative_to(corpus.root))
        st = path.stat()
        if corpus.manifest.get(rel) != (st.st_size, st.st_mtime_ns):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def buildable(study: Study) -> dict[str, dict[str, Any]]:
    """Talk metadata: size in bytes and includes (followed through the snippets)."""
    meta = {}
    snippets = study.corpus_src / "snippets"
    for talk in study.talks:
        path = study.corpus_src / "talks" / talk
        meta[talk] = {"bytes": path.stat().st_size, "includes": c.count_includes(path, snippets)}
    return meta
