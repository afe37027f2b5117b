"""Patching lynguine's entry points: the target table, the moment of patching, and transparency.

Transparency is checked on the real lynguine (results and exceptions with and without the shim, in
separate processes) and, for the wrapper mechanics (binding kinds, signatures, threads, recursion), on a
small fixture module.
"""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest
from conftest import SAMPLE, clean_env, lynshim_run
from lynshim import _native, _patch, _state, targets
from lynshim._native import schema

PY = sys.executable


def test_every_default_lynguine_target_exists_in_the_pinned_version() -> None:
    import importlib

    for target in targets.DEFAULT_TARGETS:
        if target.module.startswith("lamd."):
            continue  # lamd is not installed in the test environment
        module = importlib.import_module(target.module)
        if target.qualname.endswith("*"):
            prefix = target.qualname[:-1]
            assert any(name.startswith(prefix) for name in vars(module)), target
            continue
        owner = module
        for part in target.qualname.split("."):
            owner = getattr(owner, part)
        assert callable(owner), target
        assert target.category in schema.OPERATION_CATEGORIES + [schema.CAT_LAMD], target


def test_env_targets_parse_and_round_trip() -> None:
    added, dropped = targets.parse_env("pkg.mod:Cls.meth=compute; -lynguine.util.tex:extract_citations")
    assert added == [targets.Target("pkg.mod", "Cls.meth", "compute")]
    assert dropped == {"lynguine.util.tex:extract_citations"}
    assert targets.parse_env(targets.to_env(added, dropped)) == (added, dropped)
    with pytest.raises(ValueError, match="module:qualname"):
        targets.parse_env("nonsense")
    rows = targets.active_targets({schema.ENV_TARGETS: "-lynguine.util.tex:extract_citations"})
    assert all(t.key != "lynguine.util.tex:extract_citations" for t in rows)


# --- wrapper mechanics on a fixture module ------------------------------------------------------


class Base:
    calls: list[str] = []

    def method(self, x: int, *, scale: int = 2) -> int:
        "a method"
        return x * scale

    @classmethod
    def build(cls, name: str) -> tuple[type, str]:
        "a classmethod"
        return cls, name

    @staticmethod
    def helper(a: int, b: int = 1) -> int:
        return a - b


class Child(Base):
    pass


def recursive(n: int) -> int:
    return 0 if n == 0 else 1 + recursive(n - 1)


def failing(field: str) -> None:
    raise KeyError(field)


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> None:
    module = sys.modules[__name__]
    monkeypatch.setattr(_state, "active", True)
    for owner, attr in (
        (Base, "method"),
        (Base, "build"),
        (Base, "helper"),
        (module, "recursive"),
        (module, "failing"),
    ):
        monkeypatch.setattr(owner, attr, vars(owner)[attr])
        assert _patch._patch_attribute(owner, attr, f"fixture.{attr}", schema.CAT_COMPUTE)


def test_wrappers_keep_names_signatures_and_binding(patched: None) -> None:
    assert Base.method.__name__ == "method" and Base.method.__qualname__ == "Base.method"
    assert Base.method.__doc__ == "a method" and Base.method.__module__ == __name__
    assert inspect.signature(Base.method) == inspect.signature(Base.method.__wrapped__)
    # (annotations are strings here: this module uses `from __future__ import annotations`)
    assert str(inspect.signature(Child.build)) == "(name: 'str') -> 'tuple[type, str]'"
    assert str(inspect.signature(Base.helper)) == "(a: 'int', b: 'int' = 1) -> 'int'"
    assert isinstance(vars(Base)["build"], classmethod) and isinstance(vars(Base)["helper"], staticmethod)
    assert Child().method(3) == 6 and Child().method(3, scale=3) == 9
    assert Child.build("x") == (Child, "x")  # the subclass binds, through the wrapper on Base
    assert Base.helper(5) == 4 and Child().helper(5, 2) == 3
    assert recursive(20) == 20


def test_wrappers_bind_natively_as_functions_do(patched: None) -> None:
    wrapper = vars(Base)["method"]
    again = _patch.wrap(wrapper.__wrapped__, "fixture.again", schema.CAT_COMPUTE)
    obj = Child()
    for bound in (obj.method, again.__get__(obj, Child)):
        assert type(bound) is types.MethodType and bound.__self__ is obj
    assert obj.method.__func__ is wrapper and again.__get__(obj).__func__ is again
    assert obj.method == obj.method and obj.method is not obj.method  # a new bound method each access
    assert Base.method is wrapper and Child.method is wrapper and wrapper.__get__(None, Child) is wrapper
    assert again.__get__(obj)(4) == 8
    assert Child.build.__self__ is Child and Child().build.__self__ is Child
    assert Child().helper is vars(Base)["helper"].__func__
    # The wrapper makes its bound methods itself (PyMethod_New): it is built from its probe alone.
    probe = _native.Probe("fixture.probe", schema.CAT_COMPUTE, Base.method.__wrapped__, ("self", "x"), {}, False, repr)
    assert type(wrapper)(probe).__get__(obj)(5) == 10
    with pytest.raises(TypeError):
        type(wrapper)(probe, types.MethodType)


def test_wrappers_reraise_the_same_exception(patched: None) -> None:
    with pytest.raises(KeyError) as info:
        failing("title")
    assert info.value.args == ("title",)
    frames = [f.name for f in __import__("traceback").extract_tb(info.tb)]
    assert frames[-1] == "failing" and frames.count("wrapper") <= 1


def test_wrappers_are_thread_safe(patched: None) -> None:
    results: list[int] = []

    def work() -> None:
        for i in range(200):
            results.append(Base().method(i))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([i * 2 for i in range(200)] * 4)


def test_wrappers_pickle_copy_and_show_the_original_attributes(patched: None) -> None:
    import copy
    import pickle
    import weakref

    wrapper = sys.modules[__name__].recursive
    assert wrapper is not wrapper.__wrapped__ and hasattr(wrapper, "__lynshim_target__")
    # Pickled and copied by name, as a function is; attributes a wrapper does not set are the original's.
    assert pickle.loads(pickle.dumps(wrapper)) is wrapper and copy.deepcopy(wrapper) is wrapper
    assert wrapper.__code__ is recursive.__wrapped__.__code__ and wrapper.__defaults__ is None
    assert weakref.ref(wrapper)() is wrapper
    assert repr(wrapper).startswith("<function recursive at 0x")
    # A function to inspect and isinstance, as the original was (wrapt's proxies answer the same way).
    assert inspect.isfunction(wrapper) and isinstance(wrapper, types.FunctionType)
    assert inspect.isfunction(vars(Base)["method"]) and not inspect.isclass(wrapper)
    bound = Base().method
    assert inspect.ismethod(bound) and bound.__func__ is vars(Base)["method"] and bound(2) == 4


def test_wrappers_and_the_import_hook_leave_cycles_collectable() -> None:
    """The garbage collector sees every reference a wrapper or the import hook holds, as it sees a function's.
    A reference it cannot see counts as one from outside the heap: the wrapped function, its module's globals
    and all they reach (for lynguine, pandas) stayed reachable through the interpreter's teardown, whose
    collections then walked them again and again."""
    import gc
    import weakref

    module = types.ModuleType("fixture_cycle")
    exec("def entry(x):\n    return x\n", vars(module))
    original = module.entry
    module.entry = _patch.wrap(original, "fixture.entry", schema.CAT_COMPUTE)
    assert module.entry(3) == 3
    # wrapper -> probe -> original -> its globals -> wrapper: a cycle only the collector can free.
    freed = weakref.ref(original)
    del original, module
    gc.collect()
    assert freed() is None

    find = sys.modules["_frozen_importlib"]._find_and_load_unlocked
    hook = _native.ImportHook(find, sys, set(), _patch.module_loaded, True)
    assert {id(find), id(sys), id(_patch.module_loaded)} <= {id(o) for o in gc.get_referents(hook)}


def test_patching_twice_does_not_double_wrap(patched: None) -> None:
    before = vars(Base)["method"]
    _patch._patch_attribute(Base, "method", "fixture.method", schema.CAT_COMPUTE)
    assert vars(Base)["method"] is before


# --- real lynguine in traced processes ----------------------------------------------------------


def _names(trace) -> list[str]:
    return [s["name"] for s in trace.spans() if s["cat"] in schema.WORK_CATEGORIES]


def test_module_level_calls_during_import_are_traced(tmp_path: Path) -> None:
    run = lynshim_run(tmp_path / "t", [PY, "-c", "import lynguine"], env=clean_env())
    trace = run.traces[0]
    from_file = [s for s in trace.spans() if s["name"] == "lynguine.config.interface.Interface.from_file"]
    # lynguine.util.tex calls Interface.from_file at import: inside the import span of lynguine.util.tex.
    assert from_file, _names(trace)
    imports = {s["name"]: s for s in trace.spans(schema.CAT_IMPORT)}
    tex = imports["lynguine.util.tex"]
    assert any(tex["ts"] <= s["ts"] <= tex["ts"] + tex["dur"] for s in from_file)


CALLS = textwrap.dedent(
    """
    import json, sys
    from lynguine.util.talk import talk_field          # bound with `from m import f`
    from lynguine.util.yaml import header_fields, header_field, FileFormatError
    import lynguine.access.io as io
    import lynguine.config.interface as ci

    class MyInterface(ci.Interface):                    # as lamd subclasses it
        pass

    out = {}
    out["title"] = talk_field("title", "talk.md", user_file=["_lamd.yml"])
    out["fields"] = sorted(header_fields("talk.md"))
    try:
        header_field("nope", {}, ["_lamd.yml"])
    except FileFormatError as err:
        out["error"] = [type(err).__name__, str(err)]
    out["md"] = sorted(io.read_markdown_file("talk.md").keys())
    out["sub"] = sorted(MyInterface.from_file(["_lamd.yml"], directory=".").keys())
    df = io.read_yaml_directory({"type": "yaml_directory", "source": [{"directory": ".", "glob": "_*.yml"}],
        "store_fields": {"directory": "sourceRoot", "filename": "sourceFile", "root": "."}})
    out["rows"] = int(df.shape[0])
    print(json.dumps(out, sort_keys=True, default=str))
    """
)


def test_lynguine_results_are_unchanged_and_calls_traced(tmp_path: Path) -> None:
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    (work / "calls.py").write_text(CALLS)
    bare = subprocess.run([PY, "calls.py"], cwd=work, env=clean_env(), capture_output=True)
    assert bare.returncode == 0, bare.stderr
    run = lynshim_run(tmp_path / "t", [PY, "calls.py"], cwd=work, env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == bare.stdout
    result = json.loads(bare.stdout)
    assert result["error"][0] == "FileFormatError" and result["rows"] == 2

    trace = run.traces[0]
    spans = [s for s in trace.spans() if s["cat"] in schema.WORK_CATEGORIES and s["ts"] > 0]
    by_name: dict[str, list[dict]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    talk = by_name["lynguine.util.talk.talk_field"]
    assert len(talk) == 1 and talk[0]["args"]["field"] == "title" and talk[0]["args"]["filename"] == "talk.md"
    assert talk[0]["args"]["found"] is True and talk[0]["cat"] == schema.CAT_FIELD
    # Nesting: talk_field → header_fields → extract_header_body → read_markdown_file.
    inner = [s for s in spans if s["ts"] >= talk[0]["ts"] and s["ts"] <= talk[0]["ts"] + talk[0]["dur"]]
    chain = [s["name"].rsplit(".", 1)[-1] for s in sorted(inner, key=lambda s: s["ts"])]
    assert chain[:4] == ["talk_field", "header_fields", "extract_header_body", "read_markdown_file"]
    assert [s["depth"] for s in sorted(inner, key=lambda s: s["ts"])][:4] == [0, 1, 2, 3]
    # The missing field: FileFormatError recorded, found false.
    missing = [s for s in by_name["lynguine.util.yaml.header_field"] if s["args"].get("field") == "nope"]
    assert missing[0]["args"]["error"] == "FileFormatError" and missing[0]["args"]["found"] is False
    # The classmethod called through a subclass is traced once, with its args.
    sub_calls = [
        s
        for s in by_name["lynguine.config.interface.Interface.from_file"]
        if s["args"].get("user_file") == "_lamd.yml" and s["depth"] == 0
    ]
    assert len(sub_calls) == 1 and sub_calls[0]["args"]["directory"] == "."
    # The directory reader io creates with setattr at import is traced, with a row count.
    reader = by_name["lynguine.access.io.read_yaml_directory"][0]
    assert (
        reader["cat"] == schema.CAT_READ and reader["args"]["rows"] == 2 and reader["args"]["type"] == "yaml_directory"
    )


def test_targets_added_by_environment_and_missing_ones_warn_once(tmp_path: Path) -> None:
    env = clean_env()
    env[schema.ENV_TARGETS] = "json:dumps=compute;json:no_such_function=compute"
    code = "import json; json.dumps([1]); import subprocess, sys; subprocess.run([sys.executable, '-c', 'import json'])"
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], env=env)
    assert run.proc.returncode == 0
    warnings = [l for l in run.proc.stderr.decode().splitlines() if "not in the installed version" in l]
    assert len(warnings) == 1 and "json:no_such_function" in warnings[0]
    parent = next(t for t in run.traces if "dumps" in t.process_name)
    assert [s["name"] for s in parent.spans(schema.CAT_COMPUTE)] == ["json.dumps"]


def test_corpus_talk_called_the_way_lamd_calls_it(tmp_path: Path, corpus: Path) -> None:
    work = tmp_path / "corpus"
    shutil.copytree(corpus, work)
    talks = work / "talks" / "_ai"
    talk = "the-atomic-human-google.md"
    code = textwrap.dedent(
        f"""
        from lynguine.util.talk import talk_field, extract_inputs, extract_all
        from lynguine.config.interface import Interface
        print(talk_field("title", "{talk}", user_file=["_lamd.yml", "_config.yml"]))
        print(len(extract_inputs("{talk}", snippets_path="../../snippets")))
        print(extract_all("{talk}", user_file=["_lamd.yml", "_config.yml"]))
        Interface.from_file(["_lamd.yml", "_config.yml"], directory=".")
        """
    )
    bare = subprocess.run([PY, "-c", code], cwd=talks, env=clean_env(), capture_output=True)
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], cwd=talks, env=clean_env())
    assert run.proc.returncode == bare.returncode == 0, bare.stderr
    assert run.proc.stdout == bare.stdout
    trace = run.traces[0]
    work_spans = [
        s
        for s in trace.spans()
        if s["cat"] in schema.WORK_CATEGORIES
        and s["depth"] == 0
        and s["cat"] != schema.CAT_CONFIG
        or (s["cat"] == schema.CAT_CONFIG and s["args"].get("user_file"))
    ]
    top = [s["name"].rsplit(".", 1)[-1] for s in work_spans if s["depth"] == 0]
    assert top[-4:] == ["talk_field", "extract_inputs", "extract_all", "from_file"]
    inputs = next(s for s in work_spans if s["name"].endswith("talk.extract_inputs"))
    assert inputs["args"]["filename"] == talk and inputs["args"]["result"].startswith("list[")


SERVER_ROUND_TRIP = textwrap.dedent(
    """
    import socket
    from lynguine.client import ServerClient

    with socket.socket() as s:          # a free port, never 8765
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ServerClient(f"http://127.0.0.1:{port}", auto_start=True, max_retries=0)
    print(client.extract_talk_field("title", "talk.md", config_files=["_lamd.yml"]))
    print(client.extract_talk_field("venue", "talk.md", config_files=["_lamd.yml"]))
    client._server_process.terminate()
    client._server_process.wait(timeout=30)
    """
)


def test_server_mode_round_trip_has_flows_on_both_sides(tmp_path: Path) -> None:
    work = tmp_path / "sample"
    shutil.copytree(SAMPLE, work)
    (work / "client.py").write_text(SERVER_ROUND_TRIP)
    run = lynshim_run(tmp_path / "t", [PY, "client.py"], cwd=work, env=clean_env(), timeout=120)
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout.decode().splitlines() == ["Where does the time go?", "lynshim demo"]
    assert len(run.traces) == 2
    server = run.trace_for("lynguine.server")
    client = next(t for t in run.traces if t is not server)
    assert server.meta["parent_trace"] == str(client.path)
    assert server.exit["exit_status"] == 0  # its own SIGTERM handler exits 0; the trace is closed
    starts = {e["id"]: e for e in client.events if e.get("ph") == "s"}
    ends = {e["id"]: e for e in server.events if e.get("ph") == "f"}
    requests = [s for s in client.spans(schema.CAT_SERVER_CLIENT) if s["name"].endswith("extract_talk_field")]
    assert len(requests) == 2
    handled = [s for s in server.spans(schema.CAT_SERVER) if s["args"].get("path") == "/api/talk/field"]
    assert len(handled) == 2
    for span in handled:
        flow_id = span["args"]["request_id"]
        assert flow_id in starts and flow_id in ends
        start = starts[flow_id]
        # The flow starts inside a client request span and ends inside this server span.
        assert any(r["ts"] <= start["ts"] <= r["ts"] + r["dur"] for r in requests)
        assert span["ts"] <= ends[flow_id]["ts"] <= span["ts"] + span["dur"]


EVERY_CATEGORY = textwrap.dedent(
    """
    import json
    from lynguine.config.interface import Interface
    from lynguine.assess.data import CustomDataFrame
    from lynguine.assess.compute import Compute
    from lynguine.util.liquid import load_template_env
    import lynguine.access.io as io

    interface = Interface.from_yaml('''
    input:
      type: local
      index: name
      data:
      - name: a
        x: 1
      - name: b
        x: 2
    ''')
    data = CustomDataFrame.from_flow(interface)                 # dataframe
    compute = Compute(interface)
    compute.preprocess(data, interface)                         # compute
    compute.run_all(data, interface)
    env = load_template_env()                                   # template
    io.write_yaml_file({"written": [1, 2]}, "written.yml")      # write
    out = {"shape": list(data.to_pandas().shape), "template": type(env).__name__,
           "written": open("written.yml").read(), "yaml": io.read_yaml_file("written.yml")}
    try:
        io.read_yaml_file("no-such-file.yml")                   # read, failing
    except Exception as err:
        out["error"] = [type(err).__name__, str(err)]
    print(json.dumps(out, sort_keys=True))
    """
)


def test_every_category_is_transparent_and_traced(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "every.py").write_text(EVERY_CATEGORY)
    bare = subprocess.run([PY, "every.py"], cwd=work, env=clean_env(), capture_output=True)
    assert bare.returncode == 0, bare.stderr
    (work / "written.yml").unlink()
    run = lynshim_run(tmp_path / "t", [PY, "every.py"], cwd=work, env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == bare.stdout
    assert json.loads(bare.stdout)["error"][0] == "FileNotFoundError"
    spans = run.traces[0].spans()
    cats = {s["cat"] for s in spans if s["ts"] > 0}
    for cat in (
        schema.CAT_CONFIG,
        schema.CAT_DATAFRAME,
        schema.CAT_COMPUTE,
        schema.CAT_TEMPLATE,
        schema.CAT_WRITE,
        schema.CAT_READ,
    ):
        assert cat in cats, cat
    failed = [s for s in spans if s["name"] == "lynguine.access.io.read_yaml_file" and "error" in s["args"]]
    assert failed and failed[0]["args"]["error"] == "FileNotFoundError"
    assert failed[0]["args"]["filename"] == "no-such-file.yml"
    frame = next(s for s in spans if s["name"] == "lynguine.assess.data.CustomDataFrame.from_flow")
    assert frame["cat"] == schema.CAT_DATAFRAME


def test_lamd_style_build_on_the_corpus_in_several_processes(tmp_path: Path, corpus: Path) -> None:
    """Done-when of the instrumentation issue: lamd's calls on a real talk, one process per make rule."""
    work = tmp_path / "corpus"
    shutil.copytree(corpus, work)
    talks = work / "talks" / "_ai"
    shutil.copy(SAMPLE / "lamd_calls.py", talks)
    talk = "the-atomic-human-google.md"
    rules = {
        "title.txt": f"mdfield title {talk}",
        "venue.txt": f"mdfield venue {talk}",
        "flags.txt": f"flags {talk}",
        "inputs.txt": f"dependencies inputs {talk}",
        "all.txt": f"dependencies all {talk}",
    }
    makefile = (
        "all: "
        + " ".join(rules)
        + "\n"
        + "".join(f"{target}:\n\t{PY} lamd_calls.py {command} > $@\n" for target, command in rules.items())
    )
    (talks / "Makefile.lamd").write_text(makefile)
    bare = subprocess.run(["make", "-s", "-f", "Makefile.lamd"], cwd=talks, env=clean_env(), capture_output=True)
    assert bare.returncode == 0, bare.stderr
    expected = {target: (talks / target).read_text() for target in rules}
    for target in rules:
        (talks / target).unlink()
    run = lynshim_run(tmp_path / "t", ["make", "-s", "-f", "Makefile.lamd"], cwd=talks, env=clean_env())
    assert run.proc.returncode == 0, run.proc.stderr
    assert {target: (talks / target).read_text() for target in rules} == expected  # results unchanged
    assert len(run.traces) == len(rules)
    top_calls = {
        "mdfield title": ["talk_field"],
        "mdfield venue": ["talk_field"],
        "flags": ["header_fields", "header_field", "header_field"],
        "dependencies inputs": ["extract_inputs"],
        "dependencies all": ["extract_all"],
    }
    for command, calls in top_calls.items():
        trace = run.trace_for(f"lamd_calls.py {command} ")
        work_spans = [s for s in trace.spans() if s["cat"] in schema.WORK_CATEGORIES]
        # lamd's calls are the top-level work spans after the imports, once each, in this process only.
        top = [s for s in work_spans if s["depth"] == 0 and s["cat"] != schema.CAT_CONFIG]
        assert [s["name"].rsplit(".", 1)[-1] for s in top] == calls, (command, [s["name"] for s in top])
        for span in top:
            assert span["args"]["filename" if "filename" in span["args"] else "field"]
            assert span["cat"] == schema.CAT_FIELD
        # Nested inside lamd's calls: talk_field → header_fields → read_markdown_file, and so on.
        assert any(s["depth"] > 0 and s["ts"] >= top[0]["ts"] for s in work_spans), command


def test_patching_lets_ctrl_c_through_and_reports_its_own_failures(tmp_path: Path) -> None:
    # A module __getattr__ raises while _patch looks a target's class up: the KeyboardInterrupt goes on to
    # the program, as it would have reached it anywhere else. A module whose __name__ is not a string
    # makes _patch fail with a TypeError: that only costs the module its spans, and says so.
    (tmp_path / "interrupts.py").write_text("def __getattr__(name):\n    raise KeyboardInterrupt\n")
    (tmp_path / "breaks.py").write_text("__name__ = ['not', 'a', 'string']\n")
    env = clean_env()
    env[schema.ENV_TARGETS] = "interrupts:Cls.f=compute;breaks:Cls.f=compute"
    code = textwrap.dedent(
        """
        try:
            import interrupts
        except KeyboardInterrupt:
            print("interrupted")
        import breaks
        print("imported", breaks.__name__[0])
        """
    )
    run = lynshim_run(tmp_path / "t", [PY, "-c", code], cwd=tmp_path, env=env)
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout == b"interrupted\nimported not\n"
    lines = run.proc.stderr.decode().splitlines()
    assert not any("tracing is off" in line for line in lines), lines
    (failed,) = [line for line in lines if "patching breaks failed" in line]
    assert "TypeError" in failed and "not traced" in failed
    assert run.traces[0].spans(schema.CAT_IMPORT)
