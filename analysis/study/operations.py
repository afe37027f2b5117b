"""Operation costs on real data, in one warm process per subject folder (imports paid before timing):
configuration parsing on the real ``_lamd.yml``/``_config.yml``, the first data load, reads, read and
compute through lynguine's data interface (a subject folder of talks read as a markdown directory), writes
to CSV/YAML and reading them back, and the lamd operations (``talk_field``, ``extract_all``) on the
study's largest talk. Each is repeated; min/median/max in µs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import common as c
from .builds import Study

CHILD = r"""
import json, os, resource, sys, tempfile, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
moments = {"baseline": rss()}
t0 = time.perf_counter()
import lynguine.access.io as io
from lynguine.config.interface import Interface
from lynguine.assess.data import CustomDataFrame
from lynguine.util import talk as lt
import_us = (time.perf_counter() - t0) * 1e6
moments["after imports"] = rss()
n, big = int(sys.argv[1]), sys.argv[2]
tmp = tempfile.mkdtemp(prefix="study-ops-")
md = {"type": "markdown_directory", "source": [{"directory": ".", "glob": "*.md"}], "index": "filename"}
out = {"import_us": import_us, "ops": {}}
def timed(name, fn):
    t = time.perf_counter(); r = fn(); out["ops"].setdefault(name, []).append((time.perf_counter() - t) * 1e6); return r
cfgs = [f for f in ["_lamd.yml", "_config.yml"] if os.path.exists(f)]
timed("first config load", lambda: Interface.from_file(["_lamd.yml", "_config.yml"], directory="."))
moments["after config load"] = rss()
timed("first data load (markdown directory)", lambda: io.read_data(md))
moments["after data load"] = rss()
with open("_study.yml", "w") as f:  # in the corpus copy (reset afterwards): lynguine confines paths to it
    f.write("input:\n  type: markdown_directory\n  index: filename\n  source:\n  - directory: .\n    glob: '*.md'\n")
for i in range(n):
    timed("config parse (Interface.from_file _lamd.yml/_config.yml)", lambda: Interface.from_file(["_lamd.yml", "_config.yml"], directory="."))
    df = timed("read (markdown directory)", lambda: io.read_data(md))[0]
    timed("read and compute (CustomDataFrame.from_flow)", lambda: CustomDataFrame.from_flow(Interface.from_file(["_study.yml"], directory=".")))
    small = df[[c for c in ("title", "date", "venue") if c in df.columns]].astype(str)
    timed("write CSV", lambda: io.write_data(small, {"type": "csv", "filename": os.path.join(tmp, "t.csv")}))
    timed("read CSV back", lambda: io.read_data({"type": "csv", "filename": os.path.join(tmp, "t.csv")}))
    timed("write YAML", lambda: io.write_data(small, {"type": "yaml", "filename": os.path.join(tmp, "t.yaml")}))
    timed("read YAML back", lambda: io.read_data({"type": "yaml", "filename": os.path.join(tmp, "t.yaml")}))
    if big:
        timed("lamd op: talk_field title (largest talk)", lambda: lt.talk_field("title", big, user_file=["_lamd.yml", "_config.yml"]))
        timed("lamd op: extract_all (largest talk)", lambda: lt.extract_all(big, user_file=["_lamd.yml", "_config.yml"]))
moments["after operations"] = rss()
moments["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out["moments_bytes"] = moments
out["rows"] = int(df.shape[0]); out["columns"] = int(df.shape[1]); out["config_files"] = cfgs
print(json.dumps(out))
"""


def run_operations(study: Study, talk_sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    corpus = study.corpus
    corpus.reset()
    subjects: dict[str, str] = {}
    for talk in sorted(study.talks, key=lambda t: -talk_sizes[t]["includes"]):
        subjects.setdefault(str(Path(talk).parent), Path(talk).name)
    results = {}
    for subject, big in subjects.items():
        res = c.run(
            [sys.executable, "-c", CHILD, str(study.n), big],
            cwd=corpus.root / "talks" / subject,
            env=c.env_with_venv(),
            timeout=900,
        )
        if res.returncode != 0:
            raise RuntimeError(f"operations in {subject} failed: {res.stderr[-2000:]}")
        raw = json.loads(res.stdout.strip().splitlines()[-1])
        results[subject] = {
            "largest_talk": big,
            "rows": raw["rows"],
            "columns": raw["columns"],
            "config_files": raw["config_files"],
            "import_us": raw["import_us"],
            "moments_bytes": raw["moments_bytes"],
            "ops": {k: c.stats(v) for k, v in raw["ops"].items()},
        }
        c.log(f"operations in {subject}: {raw['rows']} talks read")
    corpus.reset()
    return {
        "n": study.n,
        "command": "python -c <analysis/study/operations.py CHILD> N LARGEST_TALK, "
        "in each subject folder of the corpus copy",
        "subjects": results,
    }
