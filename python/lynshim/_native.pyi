"""Type stub of the native module ``lynshim._native`` (crates/lynshim)."""

from os import PathLike
from types import ModuleType
from typing import Any, Callable, Sequence

__version__: str

def start(
    dir: str | PathLike[str], meta: dict[str, Any], process_name: str, import_started_ns: int | None = None
) -> str | None: ...
def after_fork_child(meta: dict[str, Any], process_name: str) -> None: ...
def stop() -> None: ...
def activated() -> None: ...
def python_exiting() -> None: ...
def killed_by_signal(signum: int) -> None: ...
def is_active() -> bool: ...
def trace_path() -> str | None: ...
def enter(name: str, cat: str, args: dict[str, Any] | None = None) -> int: ...
def exit(token: int, args: dict[str, Any] | None = None) -> None: ...
def instant(name: str, cat: str, args: dict[str, Any] | None = None) -> None: ...

class Probe:
    """One wrapped function: its span's name and category, and how its calls are described."""

    def __init__(
        self,
        name: str,
        cat: str,
        function: Callable[..., Any],
        positional: Sequence[str],
        defaults: dict[str, Any],
        takes_field: bool,
        describe_value: Callable[[Any], Any],
    ) -> None: ...
    def describe(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> str: ...
    def describe_end(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        result: Any = None,
        error: BaseException | None = None,
    ) -> str: ...

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

class _Schema(ModuleType):
    FORMAT_VERSION: int
    WORK_CATEGORIES: list[str]
    OPERATION_CATEGORIES: list[str]
    CREDENTIAL_WORDS: list[str]
    MAX_ARG_CHARS: int
    EVENT_PROCESS: str
    EVENT_EXIT: str
    EVENT_STARTUP: str
    EVENT_SHIM_IMPORT: str
    EVENT_RSS: str
    EVENT_REQUEST_FLOW: str
    CAT_STARTUP: str
    CAT_IMPORT: str
    CAT_TRACER: str
    CAT_LAMD: str
    CAT_CONFIG: str
    CAT_FIELD: str
    CAT_READ: str
    CAT_WRITE: str
    CAT_DATAFRAME: str
    CAT_COMPUTE: str
    CAT_TEMPLATE: str
    CAT_SERVER_CLIENT: str
    CAT_SERVER: str
    CAT_USER: str
    ARG_MODULE: str
    ARG_ERROR: str
    ARG_FOUND: str
    ARG_ROWS: str
    ARG_RESULT: str
    ARG_REQUEST_ID: str
    ARG_LYNGUINE_VERSION: str
    ARG_LAMD_VERSION: str
    ARG_AT: str
    REDACTED: str
    TRACE_SUFFIX: str
    RUN_RECORD: str
    ENV_DIR: str
    ENV_RUN_ID: str
    ENV_LABEL: str
    ENV_TARGETS: str
    ENV_IMPORTS: str
    ENV_BOOTSTRAP: str
    ENV_RECORD_FILES: str
    ARG_OPENED_FILES: str

schema: _Schema

def page_residency(path: str | PathLike[str]) -> tuple[int, int]: ...
def evict_from_page_cache(path: str | PathLike[str]) -> None: ...
