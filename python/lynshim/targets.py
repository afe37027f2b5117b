"""The patch targets: which lynguine and lamd entry points get a span, and in which category.

One declarative table, :data:`DEFAULT_TARGETS`, read by :mod:`lynshim._patch`. A row names the module
that *defines* the target, its qualified name there (``Class.method`` or a function; a trailing ``*``
matches every module-level function with that prefix, including ones a module creates with ``setattr``
while it runs) and the operation category.

Users add or drop rows without editing code:

- ``[tool.lynshim]`` in the ``pyproject.toml`` of the directory ``lynshim run`` starts in::

      [tool.lynshim]
      targets = [{ module = "mypkg.util", qualname = "load", category = "read" }]
      skip = ["lynguine.util.tex:extract_citations"]

- or the environment variable ``LYNSHIM_TARGETS``: ``module:qualname=category`` to add, ``-module:qualname``
  to drop, separated by ``;``. ``lynshim run`` turns the pyproject table into this variable, so traced
  processes never parse TOML.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

import os

from lynshim._native import schema

CONFIG = schema.CAT_CONFIG
FIELD = schema.CAT_FIELD
READ = schema.CAT_READ
WRITE = schema.CAT_WRITE
DATAFRAME = schema.CAT_DATAFRAME
COMPUTE = schema.CAT_COMPUTE
TEMPLATE = schema.CAT_TEMPLATE
SERVER_CLIENT = schema.CAT_SERVER_CLIENT
SERVER = schema.CAT_SERVER
LAMD = schema.CAT_LAMD


class Target:
    """One entry point to trace. (A plain class: dataclasses would import inspect into every process.)"""

    __slots__ = ("category", "module", "qualname")

    def __init__(self, module: str, qualname: str, category: str) -> None:
        self.module = module
        self.qualname = qualname
        self.category = category

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.key, self.category) == (other.key, other.category)

    def __hash__(self) -> int:
        return hash((self.key, self.category))

    def __repr__(self) -> str:
        return f"Target({self.module!r}, {self.qualname!r}, {self.category!r})"

    @property
    def key(self) -> str:
        return f"{self.module}:{self.qualname}"

    @property
    def span_name(self) -> str:
        return f"{self.module}.{self.qualname}"


#: lamd's command-line programs; each is a module ``lamd.<name>`` whose ``main`` is a root span.
LAMD_COMMANDS = (
    "mdfield",
    "flags",
    "dependencies",
    "mdlist",
    "mdpeople",
    "mdpp",
    "maketalk",
    "makecv",
    "paths",
)

_T = Target

#: What lamd reaches in lynguine (checked against lynguine 0.1.2), and lamd's own commands.
DEFAULT_TARGETS: "tuple[Target, ...]" = (
    # config
    _T("lynguine.config.interface", "Interface.from_file", CONFIG),
    _T("lynguine.config.interface", "Interface.from_cwd_file", CONFIG),
    _T("lynguine.config.interface", "Interface.from_yaml", CONFIG),
    _T("lynguine.config.context", "Context", CONFIG),
    # field extraction
    _T("lynguine.util.yaml", "header_field", FIELD),
    _T("lynguine.util.yaml", "header_fields", FIELD),
    _T("lynguine.util.yaml", "extract_header_body", FIELD),
    _T("lynguine.util.talk", "talk_field", FIELD),
    _T("lynguine.util.talk", "extract_all", FIELD),
    _T("lynguine.util.talk", "extract_inputs", FIELD),
    _T("lynguine.util.talk", "extract_diagrams", FIELD),
    _T("lynguine.util.talk", "extract_bibinputs", FIELD),
    _T("lynguine.util.tex", "extract_bib_files", FIELD),
    _T("lynguine.util.tex", "substitute_inputs", FIELD),
    _T("lynguine.util.tex", "process_file", FIELD),
    _T("lynguine.util.tex", "extract_inputs", FIELD),
    _T("lynguine.util.tex", "extract_diagrams", FIELD),
    _T("lynguine.util.tex", "extract_citations", FIELD),
    _T("lynguine.util.tex", "make_bib_file", FIELD),
    _T("lynguine.util.tex", "create_bib_file_given_tex", FIELD),
    # read / write (the prefixes catch the directory readers io creates with setattr)
    _T("lynguine.access.io", "read_*", READ),
    _T("lynguine.access.io", "write_*", WRITE),
    # dataframe / compute
    _T("lynguine.assess.data", "CustomDataFrame.from_flow", DATAFRAME),
    _T("lynguine.assess.data", "CustomDataFrame.to_flow", DATAFRAME),
    _T("lynguine.assess.compute", "Compute.run", COMPUTE),
    _T("lynguine.assess.compute", "Compute.run_all", COMPUTE),
    _T("lynguine.assess.compute", "Compute.preprocess", COMPUTE),
    _T("lynguine.assess.compute", "Compute.run_onchange", COMPUTE),
    # templates
    _T("lynguine.util.liquid", "load_template_env", TEMPLATE),
    _T("lynguine.util.liquid", "liquid_root_identifiers", TEMPLATE),
    # server mode, client side
    _T("lynguine.client", "ServerClient.ping", SERVER_CLIENT),
    _T("lynguine.client", "ServerClient.health_check", SERVER_CLIENT),
    _T("lynguine.client", "ServerClient.read_data", SERVER_CLIENT),
    _T("lynguine.client", "ServerClient.create_session", SERVER_CLIENT),
    _T("lynguine.client", "ServerClient.get_interface_field", SERVER_CLIENT),
    _T("lynguine.client", "ServerClient.extract_talk_field", SERVER_CLIENT),
    # server mode, server side
    _T("lynguine.server", "LynguineHandler.do_POST", SERVER),
    _T("lynguine.server", "LynguineHandler.do_GET", SERVER),
    # lamd commands: the root span of a lamd process
    *(_T(f"lamd.{command}", "main", LAMD) for command in LAMD_COMMANDS),
)


def lamd_command_of(script: str) -> str | None:
    """The lamd command a script name runs (``mdfield`` for ``.../bin/mdfield``), if any."""
    name = os.path.basename(script)
    return name if name in LAMD_COMMANDS else None


def parse_env(text: str) -> "tuple[list[Target], set[str]]":
    """Parse ``LYNSHIM_TARGETS``: returns (targets to add, keys to drop)."""
    added: list[Target] = []
    dropped: set[str] = set()
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        if item.startswith("-"):
            dropped.add(item[1:].strip())
            continue
        location, _, category = item.partition("=")
        module, _, qualname = location.strip().partition(":")
        if not (module and qualname):
            raise ValueError(f"{schema.ENV_TARGETS}: {item!r} is not module:qualname=category")
        added.append(Target(module, qualname, category.strip() or schema.CAT_USER))
    return added, dropped


def to_env(added: "list[Target]", dropped: set[str]) -> str:
    """Inverse of :func:`parse_env`."""
    parts = [f"{t.key}={t.category}" for t in added] + [f"-{key}" for key in sorted(dropped)]
    return ";".join(parts)


def from_pyproject(path: str) -> "tuple[list[Target], set[str]]":
    """Read ``[tool.lynshim]`` from a ``pyproject.toml`` (empty when there is none)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return [], set()
    # Imported only when there is a file to read: tomllib costs `lynshim run` about 12 ms here, and
    # lamd's talk folders have no pyproject.toml.
    import tomllib

    with handle:
        table = tomllib.load(handle).get("tool", {}).get("lynshim", {})
    added = [
        Target(row["module"], row["qualname"], row.get("category", schema.CAT_USER)) for row in table.get("targets", [])
    ]
    return added, set(table.get("skip", []))


def active_targets(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> "tuple[Target, ...]":
    """The default table with the environment's additions and removals applied."""
    added, dropped = parse_env(environ.get(schema.ENV_TARGETS, ""))
    rows = [t for t in DEFAULT_TARGETS if t.key not in dropped] + [t for t in added if t.key not in dropped]
    return tuple(rows)
