"""Calls lynguine the way lamd's commands do, one command per process (for tests and the demo).

lamd's ``mdfield``, ``flags`` and ``dependencies`` each start Python, import lynguine and make a few
calls on one talk; this script makes the same calls so that a build can be traced without lamd itself:

    python lamd_calls.py mdfield title talk.md
    python lamd_calls.py dependencies inputs talk.md
    python lamd_calls.py dependencies all talk.md
    python lamd_calls.py config
"""

import sys

from lynguine.config.interface import Interface
from lynguine.util import talk
from lynguine.util.yaml import FileFormatError, header_field, header_fields


def main(argv: list[str]) -> int:
    command = argv[0]
    if command == "mdfield":
        field, filename = argv[1], argv[2]
        try:
            print(talk.talk_field(field, filename, user_file=["_lamd.yml", "_config.yml"]))
        except FileFormatError:
            print("")
        return 0
    if command == "dependencies":
        kind, filename = argv[1], argv[2]
        if kind == "inputs":
            print(" ".join(talk.extract_inputs(filename, snippets_path=".")))
        elif kind == "diagrams":
            print(" ".join(talk.extract_diagrams(filename, diagrams_dir=".", snippets_path=".")))
        elif kind == "all":
            print(" ".join(talk.extract_all(filename, user_file=["_lamd.yml", "_config.yml"])))
        return 0
    if command == "flags":
        fields = header_fields(argv[1])
        for name in ("title", "venue"):
            try:
                print(f"--metadata {name}='{header_field(name, fields, ['_lamd.yml', '_config.yml'])}'")
            except FileFormatError:
                pass
        return 0
    if command == "config":
        interface = Interface.from_file(["_lamd.yml", "_config.yml"], directory=".")
        print(sorted(interface.keys()) if hasattr(interface, "keys") else interface)
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
