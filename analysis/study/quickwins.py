"""Quick wins, measured on the real builds the same way as direct mode, outputs checked byte for byte.

Each is a directory of executables put first on PATH for the build, standing in for lamd's console scripts
(lamd and lynguine themselves are not edited):

- ``no-teardown``: lamd's own ``main()`` for mdfield, flags, dependencies, mdpp and maketalk, then flush
  stdout/stderr and the logging handlers and ``os._exit``: the interpreter's teardown (finalising pandas,
  numpy…) is skipped once the output is out. A change lamd could make in its entry points.
- ``lazy-imports``: the same entry points, with the packages lynanalyze names as lazy-import candidates for
  these builds (imported, never called into) deferred through ``importlib.util.LazyLoader``: they are
  loaded only if touched. A change lynguine could make in its modules.
- ``one-blas-thread``: the same entry points, with ``OPENBLAS_NUM_THREADS=1`` set (unless the caller set it)
  before anything is imported. numpy's OpenBLAS starts a worker thread for every core but the first when
  numpy is imported, and each spins, waiting for work that a lamd command never gives it, before it sleeps
  (its thread spent about 100 ms of CPU in an `mdfield` process here, `/proc/<pid>/task/<tid>/schedstat`).
  A change lamd could make in its entry points (or its makefiles' environment).
- ``thin-client`` (server world): ``mdfield`` replaced by a client that imports nothing but the standard
  library and asks an already running lynguine server (lamd's server mode with a client that does not import
  lynguine/pandas, as CIP-0008's thin client would); the other commands unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import common as c
from .builds import Study, build

ENTRY_POINTS = {
    "mdfield": "lamd.mdfield",
    "flags": "lamd.flags",
    "dependencies": "lamd.dependencies",
    "mdpp": "lamd.mdpp",
    "maketalk": "lamd.maketalk",
}

NO_TEARDOWN = """#!{python}
# study quick win "no-teardown": lamd's {module}.main, then exit without interpreter teardown.
import os, sys
{prelude}from {module} import main
try:
    rc = main()
except SystemExit as e:
    rc = e.code
if rc is None:
    rc = 0
elif not isinstance(rc, int):
    print(rc, file=sys.stderr)
    rc = 1
sys.stdout.flush()
sys.stderr.flush()
import logging
logging.shutdown()
_shim = sys.modules.get("lynshim")
if _shim is not None and _shim.is_active():
    _shim.stop()
os._exit(rc & 0xFF)
"""

PLAIN = """#!{python}
# study quick win "{variant}": lamd's {module}.main, {what}.
import sys
{prelude}from {module} import main
sys.exit(main())
"""

ONE_BLAS_THREAD_PRELUDE = """import os
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
"""

LAZY_PRELUDE = """import importlib.abc, importlib.machinery, importlib.util
_LAZY = {lazy!r}
class _LazyFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in _LAZY or name in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        if isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec
sys.meta_path.insert(0, _LazyFinder())
"""

THIN_MDFIELD = """#!{python}
# study quick win "thin-client": mdfield through a running lynguine server, standard library only.
import json, os, sys, urllib.request
URL = os.environ.get("LAMD_SERVER_URL", "http://127.0.0.1:8765") + "/api/talk/field"
CONFIG = ["_lamd.yml", "_config.yml"]
def ask(field, filename):
    body = json.dumps({{"field": field, "markdown_file": filename, "config_files": CONFIG}}).encode()
    req = urllib.request.Request(URL, data=body, headers={{"Content-Type": "application/json"}})
    with urllib.request.urlopen(req, timeout=30) as resp:
        result = json.loads(resp.read())
    if result.get("status") != "success":
        return ""
    return result.get("value")
def fmt(field, value):
    if isinstance(value, str):
        return os.path.expandvars(value)
    if field == "categories" and isinstance(value, list):
        return "['" + "', '".join(value) + "']"
    return str(value)
argv = sys.argv[1:]
try:
    if argv[:1] == ["batch"]:
        filename, fields = argv[1], argv[argv.index("--fields") + 1:]
        lines = []
        for field in fields:
            v = ask(field, filename)
            lines.append(f"{{field}}:{{fmt(field, v if v is not None else '')}}")
        print("\\n".join(lines))
    else:
        field, filename = [a for a in argv if not a.startswith("--")][:2]
        v = ask(field, filename)
        print(fmt(field, "" if v is None else str(v)))
except Exception as err:  # no server, or anything unexpected: the real mdfield
    sys.stderr.write(f"thin mdfield: {{err}}; falling back to lamd's mdfield\\n")
    os.execv({real!r}, [{real!r}] + argv)
"""


def make_shims(root: Path, variant: str, lazy: list[str]) -> Path:
    d = root / "shims" / variant
    d.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    for name, module in ENTRY_POINTS.items():
        if variant == "no-teardown":
            text = NO_TEARDOWN.format(python=py, module=module, prelude="")
        elif variant == "lazy-imports":
            prelude = LAZY_PRELUDE.format(lazy=sorted(lazy))
            text = PLAIN.format(
                python=py, variant=variant, module=module, what="heavy packages deferred", prelude=prelude
            )
        elif variant == "one-blas-thread":
            what = "numpy's OpenBLAS held to one thread"
            text = PLAIN.format(python=py, variant=variant, module=module, what=what, prelude=ONE_BLAS_THREAD_PRELUDE)
        elif variant == "thin-client":
            if name != "mdfield":
                continue
            text = THIN_MDFIELD.format(python=py, real=c.tool("mdfield"))
        else:
            raise ValueError(variant)
        path = d / name
        path.write_text(text)
        path.chmod(0o755)
    return d


def probe_lazy(
    study: Study, candidates: list[str], talk: str, fmt: str, reference: dict[str, str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Which candidates can be deferred without breaking the build or changing its output: each alone, then
    all that passed together (dropping the last until the set passes). Probed on one (small) build, against
    ``reference``, the outputs of a direct build of the same talk and format."""
    log: list[dict[str, Any]] = []

    def ok(pkgs: list[str]) -> bool:
        shims = make_shims(study.out, "lazy-imports", pkgs)
        rec = build(study, talk, fmt, mode="probe:lazy", run_no=1, path_prefix=shims)
        good = rec["make_ok"] and rec["outputs"] == reference
        log.append(
            {
                "packages": pkgs,
                "ok": good,
                "wall_us": rec["wall_us"],
                "why": "" if good else (rec["make_errors"][:1] or ["outputs differ from direct mode"])[0][:200],
            }
        )
        c.log(f"lazy-import probe {pkgs}: {'ok' if good else 'rejected: ' + log[-1]['why']}")
        return good

    passed = [p for p in candidates if ok([p])]
    while passed and not ok(passed):
        passed = passed[:-1]
    return passed, log
