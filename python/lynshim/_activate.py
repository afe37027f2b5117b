"""Activation: start this process's trace and install the hooks that feed it.

Called by the bootstrap ``sitecustomize`` (``lynshim run``), by ``import lynshim`` when ``LYNSHIM_DIR``
is set, or by ``lynshim.start()``. It starts the native session (one trace file for this process) and
installs, once per process:

- the import hook (import spans, and patching of lynguine/lamd entry points as their modules load);
- the process's phases (:mod:`lynshim._lifecycle`: main program, GC, atexit handlers);
- an ``atexit`` handler, registered before the program's own so it runs after them, that records the
  versions of lynguine and lamd and writes every span out (the exit status follows from native code);
- an ``os.register_at_fork`` handler, so a forked child writes its own file;
- ``os._exit`` in front of the real one, writing every span and the exit status out first: a process that
  ends that way (every forked ``multiprocessing`` child does) runs neither Python's exit nor C's, and its
  trace stopped at the emitter's last round, without an exit event;
- a SIGTERM handler, only where SIGTERM still has its default action, that closes the trace and then
  dies of the same signal, so the exit status seen by the parent is unchanged.
"""

# No `from __future__ import annotations`: it imports the __future__ module into every traced process
# (a tenth of activation). Annotations naming what exists only later or for type checkers are strings.

# _signal, not signal: signal imports enum, which would then be missing from the program's own trace.
import _signal
import atexit
import os
import posix
import sys

from lynshim import _args, _imports, _lifecycle, _native, _patch, _state, targets
from lynshim._native import schema

_hooks_installed = False
_run_id: str | None = None
_label: str | None = None


def redact_argv(argv: list[str]) -> list[str]:
    """argv with the values of credential-like options replaced: ``--token=x``, ``--password x``."""
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append(_args.REDACTED)
            hide_next = False
            continue
        name, eq, _value = word.partition("=")
        if word.startswith("-") and _args.is_credential(name.lstrip("-")):
            if eq:
                out.append(f"{name}={_args.REDACTED}")
            else:
                out.append(word)
                hide_next = True
            continue
        out.append(word)
    return out


def process_name(argv: list[str] | None = None) -> str:
    """Name of this process in Perfetto, made from its command: ``mdfield batch talk.md``."""
    if argv is None:
        script = sys.argv[0] if sys.argv else ""
        if script and script not in ("-c", "-m") and os.path.basename(script) != "__main__.py":
            argv = [script, *sys.argv[1:]]
        else:
            argv = list(getattr(sys, "orig_argv", sys.argv))
    argv = redact_argv(argv)
    if not argv:
        return "python"
    words = [os.path.basename(argv[0]), *argv[1:]]
    name = " ".join(w.replace("\n", " ") for w in words)
    return name if len(name) <= 100 else name[:99] + "…"


def _process_meta() -> dict:
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    meta = {
        schema.ARG_ARGV: redact_argv(list(getattr(sys, "orig_argv", sys.argv))),
        schema.ARG_CWD: os.getcwd(),
        schema.ARG_EXECUTABLE: sys.executable,
        schema.ARG_PYTHON_VERSION: sys.version.split()[0],
        schema.ARG_RUN_ID: _run_id or "",
        schema.ARG_LABEL: _label or "",
        schema.ARG_COMMAND: process_name(),
    }
    lamd_command = targets.lamd_command_of(script)
    if lamd_command:
        meta[schema.ARG_LAMD_COMMAND] = lamd_command
    return meta


def activate(
    directory: "str | os.PathLike[str]",
    *,
    run_id: str | None = None,
    label: str | None = None,
    import_started_ns: int | None = None,
) -> str | None:
    """Start tracing this process into ``directory``; returns the trace file's path, or None."""
    global _run_id, _label
    if _state.active and _native.is_active():
        return _native.trace_path()
    _run_id, _label = run_id, label
    meta = _process_meta()
    path = _native.start(os.fspath(directory), meta, meta[schema.ARG_COMMAND], import_started_ns)
    if path is None:
        return None
    _state.active = True
    try:
        _install_hooks()
        _lifecycle.install()
    except Exception as err:  # noqa: BLE001 - a session without its exit and fork handlers would be half-on
        deactivate()
        print(f"lynshim: tracing is off for this process (installing its hooks failed: {err!r})", file=sys.stderr)
        return None
    return path


def activate_from_env(import_started_ns: int | None = None) -> str | None:
    """Activate when the environment asks for it (``LYNSHIM_DIR``); otherwise do nothing."""
    directory = os.environ.get(schema.ENV_DIR)
    if not directory:
        return None
    return activate(
        directory,
        run_id=os.environ.get(schema.ENV_RUN_ID),
        label=os.environ.get(schema.ENV_LABEL),
        import_started_ns=import_started_ns,
    )


def deactivate() -> None:
    """Stop tracing and close the trace file. Hooks stay installed but do nothing."""
    _state.active = False
    _native.stop()


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _imports.install(record_imports=os.environ.get(schema.ENV_IMPORTS, "1") != "0")
    if os.environ.get(schema.ENV_RECORD_FILES) == "1":
        sys.addaudithook(_record_open)
    atexit.register(_at_python_exit)
    os.register_at_fork(before=_native.flush, after_in_child=_after_fork_in_child)
    # posix too, where `os._exit.__module__` says it lives: `posix._exit is os._exit` stays true, and pickle,
    # which finds a function by its module and name and checks it is the same object, still can.
    os._exit = posix._exit = _exit
    _install_sigterm_handler()
    # Set last: after a failure (activate stops the session) a later activation tries again.
    _hooks_installed = True


_os_exit = os._exit


def _exit(status: int, /) -> None:
    # Whatever happens while the trace is written (a KeyboardInterrupt acted on between two calls here, an
    # odd status), the real os._exit is called, with the program's own argument: a forked child must never
    # go back into its parent's code.
    try:
        if _state.active:
            code = type(status).__index__(status)
            if -(2**31) <= code < 2**31:
                _state.active = False
                _record_library_versions(look_up_distributions=False)
                _native.exiting_now(code)
    except BaseException:  # noqa: BLE001, S110 - tracing gives way; os._exit below says what is wrong
        pass
    finally:
        _os_exit(status)


# The real function's name, docs and signature (inspect follows __wrapped__), as every traced function keeps them.
_patch._look_like(_exit, _os_exit)


def _library_version(name: str, look_up_distributions: bool = True) -> str | None:
    module = sys.modules.get(name)
    if module is None:
        return None
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    if not look_up_distributions:  # importlib.metadata is a dozen modules: not on os._exit's way out
        return None
    version = _version_beside(module, name)
    if version:
        return version
    try:
        from importlib.metadata import version as dist_version

        return dist_version(name)
    except Exception:  # noqa: BLE001 - a version we cannot learn is left out
        return None


def _version_beside(module: object, name: str) -> str | None:
    """The version in the name of the one ``{name}-{version}.dist-info`` directory beside the package's own
    (pip's layout: ``site-packages/lamd/`` and ``site-packages/lamd-0.1.3.dist-info/``), found with one
    directory listing; None where there is no such single directory (an editable install, a package
    outside site-packages, two versions' leftovers), and the caller asks ``importlib.metadata``.

    lamd has no ``__version__``, and ``importlib.metadata.version`` looks through every entry of
    ``sys.path``: 1.5 ms at every lamd process's exit here, where this takes 0.1 ms."""
    package_dir = os.path.dirname(getattr(module, "__file__", None) or "")
    if os.path.basename(package_dir) != name:
        return None
    # `name` is a module's, so it has no "-" for the dist-info name to normalise to "_".
    prefix = name.lower() + "-"
    try:
        entries = os.listdir(os.path.dirname(package_dir))
    except OSError:
        return None
    found = [
        e[len(prefix) : -len(".dist-info")]
        for e in entries
        if e.lower().startswith(prefix) and e.endswith(".dist-info")
    ]
    return found[0] if len(found) == 1 and found[0] else None


_opened: set[str] = set()


def _record_open(event: str, args: tuple) -> None:
    # Only with LYNSHIM_RECORD_FILES=1 (the discovery run of `lynshim bench --cold`).
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        _opened.add(os.path.abspath(os.fsdecode(args[0])))


def _mapped_files() -> set[str]:
    """Files mapped into this process: the interpreter, libpython, extension modules, shared libraries."""
    try:
        with open("/proc/self/maps") as maps:
            return {
                line.split(None, 5)[5].strip()
                for line in maps
                if len(line.split(None, 5)) == 6 and line.split(None, 5)[5].startswith("/")
            }
    except OSError:
        return set()


def _at_python_exit() -> None:
    if not _state.active:
        return
    _lifecycle.python_exiting()
    if os.environ.get(schema.ENV_RECORD_FILES) == "1":
        files = sorted(f for f in (_opened | _mapped_files() | {sys.executable}) if os.path.isfile(f))
        _native.set_exit_meta(schema.ARG_OPENED_FILES, files)
    _record_library_versions()
    _state.active = False
    _native.python_exiting()


def _record_library_versions(look_up_distributions: bool = True) -> None:
    for name, key in (("lynguine", schema.ARG_LYNGUINE_VERSION), ("lamd", schema.ARG_LAMD_VERSION)):
        version = _library_version(name, look_up_distributions)
        if version:
            _native.set_exit_meta(key, version)


def _after_fork_in_child() -> None:
    if _state.active:
        meta = _process_meta()
        _native.after_fork_child(meta, meta[schema.ARG_COMMAND])
        _state.active = _native.is_active()
        if _state.active:
            _lifecycle.begin_main_program()


def _install_sigterm_handler() -> None:
    try:
        if _signal.getsignal(_signal.SIGTERM) != _signal.SIG_DFL:
            return
        _signal.signal(_signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread, or no signals here
        return
    # Python runs _on_sigterm only when its main thread next checks for signals, which a thread blocked at
    # the wrong moment or busy in C may never do; bare, SIGTERM would have ended it at once. The native
    # guard ends the process itself if this handler has not run soon after (lynshim/_native: signals.rs).
    _native.guard_termination(_signal.SIGTERM)


def _on_sigterm(signum: int, _frame: object) -> None:
    # Close the trace with the signal as the exit reason, then die of the same signal, as the default
    # action would have: the parent sees the same wait status. Not only while _state.active: the signal may
    # be acted on inside lynshim's os._exit, after it cleared that and before it wrote the trace out; a
    # session already ended is left alone.
    _state.active = False
    _native.killed_by_signal(signum)
    _signal.signal(signum, _signal.SIG_DFL)
    os.kill(os.getpid(), signum)
