"""What a traced call records: the native probe's description of arguments, results and exceptions.

The rules (parameter names, defaults, credentials, ``details`` mappings, short values) live in
``crates/lynshim/src/probe.rs`` with the uncommon values described by ``lynshim._args.describe_value``;
these tests pin them down call by call, without a trace file in between.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Trace, clean_env, load_events
from lynshim import _args, _native, _patch
from lynshim._native import schema


def probe(fn: Callable[..., Any], cat: str = schema.CAT_FIELD) -> _native.Probe:
    positional, defaults, takes_field = _patch._signature_facts(fn)
    return _native.Probe(fn.__name__, cat, fn, positional, defaults, takes_field, _args.describe_value)


def described(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    return json.loads(probe(fn).describe(args, kwargs))


def ended(fn: Callable[..., Any], *args: Any, result: Any = None, error: BaseException | None = None) -> dict[str, Any]:
    return json.loads(probe(fn).describe_end(args, None, result=result, error=error))


class DataFrame:
    """Stands in for pandas' DataFrame, which is described by its ``shape``. (Importing pandas here would
    map its files into the test process, and test_bench's cold-cache check could not evict them.)"""

    def __init__(self, rows: int, columns: int) -> None:
        self.shape = (rows, columns)


def header_field(field, fields, user_file=["_config.yml"]):  # noqa: B006 - lynguine's own signature
    return fields[field]


def test_positional_args_keyword_args_and_defaults_in_call_order() -> None:
    assert described(header_field, "title", {"title": "t"}) == {
        "field": "title",
        "fields": "dict[1]",
        "user_file": "_config.yml",
    }
    assert list(described(header_field, "title", {}, user_file="_lamd.yml")) == ["field", "fields", "user_file"]
    assert described(header_field, "title", {}, user_file="_lamd.yml")["user_file"] == "_lamd.yml"

    def extra(a, *rest, **more):
        return a

    assert described(extra, 1, 2.5, None, flag=True) == {"a": 1, "arg1": 2.5, "arg2": None, "flag": True}


def test_credentials_are_redacted_whatever_their_value() -> None:
    def connect(host, api_key, password="default-secret", timeout=3):
        return host

    got = described(connect, "example.org", "k3y", auth_token="t0k")
    assert got == {
        "host": "example.org",
        "api_key": schema.REDACTED,
        "auth_token": schema.REDACTED,
        "password": schema.REDACTED,
        "timeout": 3,
    }
    assert "k3y" not in json.dumps(got) and "default-secret" not in json.dumps(got)


def test_self_and_cls_are_not_recorded_nor_looked_at() -> None:
    class Reader:
        @property
        def shape(self):
            raise AssertionError("describing looked at self")

        def read(self, filename):
            return filename

    assert described(Reader.read, Reader(), "talk.md") == {"filename": "talk.md"}

    def connect(host, token):
        return host

    class Secret:
        def __fspath__(self) -> str:
            raise AssertionError("describing looked at a secret")

    assert described(connect, "example.org", Secret()) == {"host": "example.org", "token": schema.REDACTED}


def test_details_mappings_are_reduced_to_what_is_read() -> None:
    def read_data(details):
        return details

    got = described(read_data, {"type": "yaml", "filename": "people.yml", "rows": list(range(100))})
    assert got == {"type": "yaml", "filename": "people.yml"}
    # Other mappings are data, recorded by size; a details mapping without known keys likewise.
    assert described(header_field, "title", {"type": "x"})["fields"] == "dict[1]"
    assert described(read_data, {"unknown": 1}) == {"details": "dict[1]"}

    def both(field, details):
        return field

    # A detail key never replaces an argument already described…
    assert described(both, "title", {"field": "other", "type": "csv"}) == {"field": "title", "type": "csv"}

    def later(details, type):  # noqa: A002 - lynguine-style parameter name
        return type

    # …and an argument named like a detail key replaces it, in its place.
    assert described(later, {"type": "csv", "filename": "a"}, "yaml") == {"type": "yaml", "filename": "a"}

    def defaulted(details=None, user_file="_config.yml"):
        return details

    # A details mapping passed by position is recorded by its keys, and its parameter's default is not
    # recorded as if it had not been passed; a detail key stands for the parameter it names.
    assert described(defaulted, {"type": "csv"}) == {"type": "csv", "user_file": "_config.yml"}
    assert described(defaulted, {"user_file": "_lamd.yml"}) == {"user_file": "_lamd.yml"}
    assert described(defaulted) == {"details": None, "user_file": "_config.yml"}


def test_values_are_short_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    def f(value):
        return value

    assert described(f, str(tmp_path / "talks" / "a.md")) == {"value": "talks/a.md"}
    assert described(f, "/elsewhere/a.md") == {"value": "/elsewhere/a.md"}
    assert described(f, tmp_path / "b.md") == {"value": "b.md"}
    assert described(f, ["a.md", tmp_path / "c.md"]) == {"value": "a.md,c.md"}
    assert described(f, [1, 2, 3]) == {"value": "list[3]"}
    assert described(f, DataFrame(2, 1)) == {"value": "DataFrame(2x1)"}
    assert described(f, object()) == {"value": "object"}
    long = described(f, "x" * 500)["value"]
    assert len(long) == schema.MAX_ARG_CHARS and long.endswith("…")
    assert described(f, 2**80) == {"value": str(2**80)}
    assert described(f, 'tab\tand "quotes" and é') == {"value": 'tab\tand "quotes" and é'}


def test_a_value_that_cannot_be_described_never_breaks_the_call(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, lynshim
        from lynshim import _patch

        class BadPath(os.PathLike):
            def __fspath__(self):
                raise RuntimeError("no path")

        def f(value):
            return "called"

        path = lynshim.start(DIR)
        traced = _patch.wrap(f, "f", "read")
        assert traced(BadPath()) == "called"
        lynshim.stop()
        print(path)
        """
    ).replace("DIR", repr(str(tmp_path)))
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    call = next(span for span in Trace(path, load_events(path)).spans() if span["name"] == "f")
    assert call["args"] == {"lynshim_error": "RuntimeError"}


def test_results_exceptions_and_whether_the_field_was_found() -> None:
    class FileFormatError(Exception):
        pass

    assert ended(header_field, "title", {}, result="t") == {"found": True}
    assert ended(header_field, None, {}, result="t") == {}
    assert ended(header_field, "nope", {}, error=FileFormatError("missing")) == {
        "error": "FileFormatError",
        "found": False,
    }
    assert ended(header_field, "nope", {}, error=KeyError("nope")) == {"error": "KeyError"}

    def read(filename):
        return filename

    assert ended(read, "a.csv", result=DataFrame(3, 1)) == {"rows": 3}
    assert ended(read, "a.csv", result=[1, 2]) == {"result": "list[2]"}
    assert ended(read, "a.csv", result={"a": 1}) == {"result": "dict[1]"}
    assert ended(read, "a.csv", result="text") == {}
    assert ended(read, "a.csv", result=None) == {}


def test_the_native_call_is_transparent_without_a_session() -> None:
    def f(a, b=2, *, c=3):
        if a is None:
            raise ValueError("a is None")
        return (a, b, c)

    p = probe(f, schema.CAT_COMPUTE)
    assert _native.call(p, (1,), {"c": 5}) == (1, 2, 5)
    with pytest.raises(ValueError, match="a is None") as info:
        _native.call(p, (None,), {})
    assert info.value.__traceback__ is not None
    with pytest.raises(TypeError):
        _native.call(p, (), {"zzz": 1})


def test_a_call_by_vectorcall_records_and_returns_what_a_call_with_a_tuple_does(tmp_path: Path) -> None:
    """The interpreter calls a wrapper by vectorcall (the caller's argument array, keyword names apart);
    `type(w).__call__(w, ...)` goes through `tp_call` with a tuple and a dict. Both must return and raise
    the same and record the same args, whatever mix of positional, keyword, defaulted and credential
    arguments, bound or not; and the exception keeps its traceback through the original's frame."""
    code = textwrap.dedent(
        """
        import json, sys, traceback, lynshim
        from lynshim import _patch

        def f(field, fields, user_file=["_config.yml"], *rest, password=None, **more):
            if field == "boom":
                raise KeyError(field)
            return [field, len(fields), user_file, rest, password, sorted(more)]

        class Owner:
            def method(self, field, details=None):
                return (type(self).__name__, field, details)

        path = lynshim.start(DIR)
        traced = _patch.wrap(f, "f", "field")
        Owner.method = _patch.wrap(Owner.method, "method", "field")
        tp_call = type(traced).__call__
        calls = [
            ((), {}),
            (("title", {"a": 1}), {}),
            (("title", {}), {"user_file": "_lamd.yml"}),
            (("title", {}, "u.yml", 1, 2), {"password": "hunter2", "extra": 3}),
            ((), {"field": "title", "fields": {}, "token": "secret"}),
            (("boom", {}), {}),
        ]
        out = []
        for args, kwargs in calls:
            for how in ("vectorcall", "tuple"):
                try:
                    result = traced(*args, **kwargs) if how == "vectorcall" else tp_call(traced, *args, **kwargs)
                    out.append([how, "ok", repr(result)])
                except Exception as err:
                    frames = [frame.name for frame in traceback.extract_tb(err.__traceback__)]
                    out.append([how, type(err).__name__, str(err), frames[-1]])
        owner = Owner()
        out.append(["vectorcall", "ok", repr(owner.method("title", details={"file": "a.md"}))])
        out.append(["tuple", "ok", repr(tp_call(Owner.method, owner, "title", details={"file": "a.md"}))])
        # C code calling with no arguments passes no argument array at all (PyObject_CallNoArgs).
        import collections
        factory = _patch.wrap(lambda: "made", "factory", "compute")
        assert collections.defaultdict(factory)["key"] == "made"
        try:
            type(traced).__call__ = lambda *a: None
            print("the wrapper's class is mutable", file=sys.stderr)
        except TypeError:
            pass
        lynshim.stop()
        print(json.dumps([path, out]))
        """
    ).replace("DIR", repr(str(tmp_path)))
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    path, outcomes = json.loads(proc.stdout)
    # Each call's args at its begin and its end, in one dict (a leaf call is usually written whole, as one
    # `X` event; a `B` and an `E` say the same).
    spans = Trace(Path(path), load_events(Path(path))).spans()
    args = [span["args"] for span in spans if span["cat"] == schema.CAT_FIELD]
    assert len(args) == len(outcomes) == 14
    for i in range(0, 14, 2):
        assert outcomes[i][0] == "vectorcall" and outcomes[i + 1][0] == "tuple"
        assert outcomes[i][1:] == outcomes[i + 1][1:]
        assert args[i] == args[i + 1]
    assert outcomes[0][1] == "TypeError"
    assert args[0] == {"user_file": "_config.yml", "password": "[redacted]", "error": "TypeError"}
    assert args[6] == {"field": "title", "fields": "dict[0]", "user_file": "u.yml", "arg3": 1, "arg4": 2,
                       "password": "[redacted]", "extra": 3, "found": True, "result": "list[6]"}  # fmt: skip
    assert args[8]["token"] == "[redacted]" and args[8]["field"] == "title"
    assert outcomes[10][1:] == ["KeyError", "'boom'", "f"]
    assert args[10]["field"] == "boom" and args[10]["error"] == "KeyError"
    assert outcomes[12][2] == "('Owner', 'title', {'file': 'a.md'})"
    assert proc.stderr == ""
    assert [span["name"] for span in spans if span["name"] == "factory"] == ["factory"]
