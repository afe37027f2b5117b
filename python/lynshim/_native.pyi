"""Type stub of the native module ``lynshim._native`` (crates/lynshim)."""

from collections.abc import Callable, Sequence
from os import PathLike
from types import ModuleType
from typing import Any, final

__all__ = [
    "ImportHook",
    "Probe",
    "TracedFunction",
    "__version__",
    "activated",
    "after_fork_child",
    "call",
    "children_cpu_s",
    "complete",
    "enter",
    "evict_from_page_cache",
    "exit",
    "exiting_now",
    "flow_in",
    "flow_out",
    "flush",
    "guard_termination",
    "instant",
    "is_active",
    "killed_by_signal",
    "monotonic_ns",
    "on_gc",
    "page_residency",
    "probe_begin",
    "probe_end",
    "process_phases",
    "python_exiting",
    "run_summary",
    "sample_rss",
    "schema",
    "set_exit_meta",
    "start",
    "stop",
    "trace_path",
    "trace_source",
    "write_run_record",
]
__version__: str

def start(
    dir: str | PathLike[str], meta: dict[str, Any], process_name: str, import_started_ns: int | None = None
) -> str | None: ...
def after_fork_child(meta: dict[str, Any], process_name: str) -> None: ...
def stop() -> None: ...
def activated() -> None: ...
def python_exiting() -> None: ...
def killed_by_signal(signum: int) -> None: ...
def guard_termination(signum: int) -> None: ...
def exiting_now(status: int) -> None: ...
def is_active() -> bool: ...
def trace_path() -> str | None: ...
def enter(name: str, cat: str, args: dict[str, Any] | None = None) -> int: ...
def exit(token: int, args: dict[str, Any] | None = None) -> None: ...
def on_gc(phase: str, info: dict[str, int]) -> None: ...
def instant(name: str, cat: str, args: dict[str, Any] | None = None) -> None: ...

@final
class ImportHook:
    """Stands in for ``importlib._bootstrap._find_and_load_unlocked``: a span per import, then patching."""

    def __new__(
        cls,
        find_and_load_unlocked: Callable[[str, Callable[..., Any]], ModuleType],
        sys: ModuleType,
        watched: set[str],
        module_loaded: Callable[[ModuleType], None],
        record_imports: bool,
    ) -> ImportHook: ...
    def set_record_imports(self, on: bool) -> None: ...
    def __call__(self, name: str, import_: Callable[..., Any]) -> ModuleType: ...

@final
class Probe:
    """One wrapped function: its span's name and category, and how its calls are described."""

    def __new__(
        cls,
        name: str,
        cat: str,
        function: Callable[..., Any],
        positional: Sequence[str],
        defaults: dict[str, Any],
        takes_field: bool,
        describe_value: Callable[[Any], Any],
    ) -> Probe: ...
    def describe(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> str: ...
    def describe_end(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        result: Any = None,
        error: BaseException | None = None,
    ) -> str: ...

@final
class TracedFunction:
    """The wrapper of a traced function: calls it through its probe; transparent as a wrapt proxy is."""

    def __new__(cls, probe: Probe) -> TracedFunction: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...
    def __reduce__(self) -> str: ...

def call(probe: Probe, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...
def probe_begin(probe: Probe, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> tuple[int, bool]: ...
def probe_end(
    probe: Probe,
    token: int,
    asks_for_field: bool,
    result: Any = None,
    error: BaseException | None = None,
    extra: dict[str, Any] | None = None,
) -> None: ...
def complete(name: str, cat: str, start_ns: int, end_ns: int, args: dict[str, Any] | None = None) -> None: ...
def sample_rss(at: str | None = None) -> None: ...
def flow_out(id: int) -> None: ...
def flow_in(id: int) -> None: ...
def set_exit_meta(key: str, value: Any) -> None: ...
def flush() -> None: ...
def monotonic_ns() -> int: ...
def children_cpu_s() -> tuple[float, float]: ...
def write_run_record(path: str | PathLike[str], record: dict[str, Any]) -> None: ...
def trace_source(path: str | PathLike[str]) -> str: ...
def run_summary(
    python_traces: Sequence[str | PathLike[str]],
    exec_records: Sequence[str | PathLike[str]],
    not_traced: str | None,
    shown: str | PathLike[str],
) -> str: ...

class _Schema(ModuleType):
    """``lynshim._native.schema``: the constants of crates/lynschema (tests/test_stub.py keeps this list whole)."""

    ARG_ARGV: str
    ARG_AT: str
    ARG_BYTES: str
    ARG_COLLECTED: str
    ARG_COMMAND: str
    ARG_CWD: str
    ARG_ERROR: str
    ARG_EXECUTABLE: str
    ARG_EXIT_STATUS: str
    ARG_FOUND: str
    ARG_GENERATION: str
    ARG_LABEL: str
    ARG_LAMD_COMMAND: str
    ARG_LAMD_VERSION: str
    ARG_LISTS_BEHIND: str
    ARG_LYNGUINE_VERSION: str
    ARG_MODULE: str
    ARG_OPENED_FILES: str
    ARG_PEAK_RSS_BYTES: str
    ARG_PID: str
    ARG_PPID: str
    ARG_PYTHON_VERSION: str
    ARG_REQUEST_ID: str
    ARG_RESULT: str
    ARG_ROWS: str
    ARG_RUN_ID: str
    ARG_SOURCE: str
    ARG_START_TICKS: str
    ARG_UNCOLLECTABLE: str
    ARG_WAITED_US: str
    ARG_WALL_ZERO_NS: str
    CAT_ATEXIT: str
    CAT_COMPUTE: str
    CAT_CONFIG: str
    CAT_DATAFRAME: str
    CAT_FIELD: str
    CAT_GC: str
    CAT_IMPORT: str
    CAT_LAMD: str
    CAT_MEMORY: str
    CAT_PROCESS: str
    CAT_PROGRAM: str
    CAT_READ: str
    CAT_SERVER: str
    CAT_SERVER_CLIENT: str
    CAT_STARTUP: str
    CAT_TEARDOWN: str
    CAT_TEMPLATE: str
    CAT_TRACER: str
    CAT_USER: str
    CAT_WRITE: str
    CREDENTIAL_WORDS: list[str]
    ENV_BOOTSTRAP: str
    ENV_DIR: str
    ENV_IMPORTS: str
    ENV_LABEL: str
    ENV_RECORD_FILES: str
    ENV_RUN_ID: str
    ENV_TARGETS: str
    EVENT_ATEXIT: str
    EVENT_EXIT: str
    EVENT_GC: str
    EVENT_MAIN_PROGRAM: str
    EVENT_PEAK_RSS: str
    EVENT_PROCESS: str
    EVENT_REQUEST_FLOW: str
    EVENT_RSS: str
    EVENT_SHIM_ACTIVATION: str
    EVENT_SHIM_WRITE: str
    EVENT_STARTUP: str
    EVENT_TEARDOWN: str
    EVENT_WAITED_FOR_WRITER: str
    FORMAT_VERSION: int
    MAX_ARG_CHARS: int
    MOMENT_AFTER_CONFIG: str
    MOMENT_AFTER_DATA: str
    MOMENT_AFTER_IMPORTS: str
    MOMENT_AFTER_OPERATIONS: str
    MOMENT_BASELINE: str
    MOMENT_EXIT: str
    OPERATION_CATEGORIES: list[str]
    REDACTED: str
    RUN_RECORD: str
    SOURCE_EXEC: str
    SOURCE_PYTHON: str
    TRACE_SUFFIX: str
    WORK_CATEGORIES: list[str]

schema: _Schema

def page_residency(path: str | PathLike[str]) -> tuple[int, int]: ...
def evict_from_page_cache(path: str | PathLike[str]) -> None: ...
def process_phases(path: str | PathLike[str]) -> tuple[str, dict[str, float], float, dict[str, Any]]: ...
