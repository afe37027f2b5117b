"""The type stub of the native module (python/lynshim/_native.pyi) against the module itself.

mypy's stubtest compares every function, class and ``__all__`` of ``lynshim._native`` with the stub; the
``schema`` submodule's constants, which stubtest cannot see through the ``_Schema`` annotation, are
compared name by name and type by type here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from lynshim._native import schema

STUB = Path(__file__).resolve().parent.parent / "python" / "lynshim" / "_native.pyi"


def test_stubtest_finds_the_stub_faithful(tmp_path: Path) -> None:
    # Run outside the repository so that the installed package, not a source tree, is what is checked.
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "lynshim._native"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_schema_constant_is_in_the_stub_with_its_type() -> None:
    tree = ast.parse(STUB.read_text())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "_Schema"]
    declared = {node.target.id: ast.unparse(node.annotation) for node in cls.body if isinstance(node, ast.AnnAssign)}
    kinds = {str: "str", int: "int", list: "list[str]"}
    runtime = {name: kinds[type(getattr(schema, name))] for name in dir(schema) if name.isupper()}
    assert declared == runtime
