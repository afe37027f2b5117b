//! `lynshim._native`: the Rust half of lynshim, exposed to Python with pyo3.
//!
//! The Python package (`python/lynshim`) decides *what* to trace — the bootstrap, the import hook, the
//! wrappers around lynguine and lamd — and calls in here to record it. This module owns *how* it is
//! recorded: a wrapped call runs through its [`probe`], which describes the call and records its span
//! without leaving Rust; a module import runs through the [`imports`] hook, which records its span and
//! leaves Rust only for the modules whose functions are patched; spans go through `tracing` and
//! tracing-chrome into one Chrome-trace file per process (recorded by [`session`], handed to `tracing`
//! in batches by the [`emitter`] thread in the protocol of [`batch`]), fixed up on the way with the real
//! pid and tid, process and thread names, counters and flows ([`fixup`]), timed by the [`clock`] of the
//! records; the process facts come from `/proc` ([`procinfo`]); names and keys come from the shared
//! schema crate, re-exported to Python as `lynshim._native.schema`.
//!
//! Every function here is total from Python's point of view: it never raises because tracing failed
//! (a failure warns once on stderr and turns tracing off); it raises only for a wrong call.

pub mod batch;
pub mod bench;
pub mod clock;
pub mod emitter;
pub mod fixup;
pub mod imports;
pub mod json;
pub mod lifecycle;
pub mod pagecache;
pub mod parent_trace;
pub mod probe;
pub mod procinfo;
pub mod session;
pub mod signals;
pub mod tracefile;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{json, Map, Value};

use crate::batch::{FlowEnd, OwnEvent};
use crate::session::{End, StartInfo};

/// Run `f`, turning a panic into one warning and `fallback`: the host program must never see one.
pub(crate) fn guarded<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        session::warn_once("internal error in lynshim");
        fallback
    })
}

/// A Python value as JSON: containers recursively, anything else by `str()`.
pub(crate) fn to_json(value: &Bound<'_, PyAny>) -> Value {
    if value.is_none() {
        Value::Null
    } else if let Ok(b) = value.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if value.is_instance_of::<PyInt>() {
        value.extract::<i64>().map_or_else(|_| Value::String(value.to_string()), Value::from)
    } else if let Ok(f) = value.cast::<PyFloat>() {
        json!(f.value())
    } else if let Ok(s) = value.cast::<PyString>() {
        Value::String(s.to_string_lossy().into_owned())
    } else if let Ok(d) = value.cast::<PyDict>() {
        Value::Object(dict_to_map(d))
    } else if let Ok(l) = value.cast::<PyList>() {
        Value::Array(l.iter().map(|v| to_json(&v)).collect())
    } else if let Ok(t) = value.cast::<PyTuple>() {
        Value::Array(t.iter().map(|v| to_json(&v)).collect())
    } else {
        Value::String(value.str().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default())
    }
}

fn dict_to_map(dict: &Bound<'_, PyDict>) -> Map<String, Value> {
    dict.iter()
        .map(|(k, v)| (k.str().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), to_json(&v)))
        .collect()
}

fn args_json(args: Option<&Bound<'_, PyDict>>) -> Option<String> {
    args.filter(|a| !a.is_empty()).map(|a| Value::Object(dict_to_map(a)).to_string())
}

/// Name of the calling Python thread (`threading.current_thread().name`). Without `threading`
/// imported there is only the main thread, and importing it here would hide its cost from the trace.
pub(crate) fn python_thread_name(py: Python<'_>) -> String {
    let threading =
        py.import("sys").and_then(|sys| sys.getattr("modules")).and_then(|modules| modules.get_item("threading"));
    let Ok(threading) = threading else {
        return "MainThread".to_owned();
    };
    threading
        .call_method0("current_thread")
        .and_then(|t| t.getattr("name"))
        .and_then(|n| n.extract::<String>())
        .unwrap_or_else(|_| "thread".to_owned())
}

extern "C" {
    /// glibc's `on_exit`: like `atexit`, but the handler receives the exit status.
    fn on_exit(function: extern "C" fn(libc::c_int, *mut libc::c_void), arg: *mut libc::c_void) -> libc::c_int;
}

extern "C" fn at_process_exit(status: libc::c_int, _arg: *mut libc::c_void) {
    // A panic must not unwind into C.
    let _ = catch_unwind(|| session::end(End::Exit { status: Some(status), signal: None }));
}

static ON_EXIT: Once = Once::new();

/// Start tracing this process into a new trace file in `dir`; returns its path, or None when the file
/// cannot be written (after one warning on stderr).
#[pyfunction]
#[pyo3(signature = (dir, meta, process_name, import_started_ns=None))]
fn start(
    py: Python<'_>,
    dir: PathBuf,
    meta: &Bound<'_, PyDict>,
    process_name: String,
    import_started_ns: Option<u64>,
) -> Option<String> {
    let info = StartInfo {
        meta: dict_to_map(meta),
        process_name,
        thread_name: python_thread_name(py),
        import_started_ns,
        forked_from: None,
    };
    guarded(None, || {
        ON_EXIT.call_once(|| {
            // SAFETY: at_process_exit is a valid handler for the life of the process (this library is
            // never unloaded: CPython does not dlclose extension modules).
            unsafe { on_exit(at_process_exit, std::ptr::null_mut()) };
        });
        session::start(&dir, info).map(|p| p.to_string_lossy().into_owned())
    })
}

/// In a child after `os.fork()`: start the child's own trace file, linked to the parent's.
#[pyfunction]
fn after_fork_child(py: Python<'_>, meta: &Bound<'_, PyDict>, process_name: String) {
    let meta = dict_to_map(meta);
    let thread_name = python_thread_name(py);
    guarded((), || {
        session::after_fork_in_child(|forked_from| StartInfo {
            meta,
            process_name,
            thread_name,
            import_started_ns: None,
            forked_from,
        });
    });
}

/// Activation is over: record the `lynshim activation` span, up to now.
#[pyfunction]
fn activated() {
    guarded((), session::activated);
}

/// Stop tracing and close the trace file (no exit event is written).
#[pyfunction]
fn stop() {
    guarded((), || session::end(End::Stop));
}

/// Python is exiting: write out every span; the exit status follows from the C exit handler.
#[pyfunction]
fn python_exiting() {
    guarded((), || session::end(End::PythonExit));
}

/// Put a native handler for `signum` in front of the Python one just set, so that the process still
/// ends if Python never gets to run it (see [`signals`]).
#[pyfunction]
fn guard_termination(signum: i32) {
    guarded((), || signals::guard_termination(signum));
}

/// The process is about to end with `status` without Python's exit (`os._exit`, which runs neither
/// Python's `atexit` nor C's exit handlers): write out every span and the exit event, and close the file.
#[pyfunction]
fn exiting_now(status: i32) {
    guarded((), || session::end(End::Exit { status: Some(status), signal: None }));
}

/// The process is about to die of signal `signum`: write the exit event and close the file.
#[pyfunction]
fn killed_by_signal(signum: i32) {
    guarded((), || session::end(End::Exit { status: None, signal: Some(signum) }));
}

#[pyfunction]
fn is_active() -> bool {
    guarded(false, session::is_active)
}

#[pyfunction]
fn trace_path() -> Option<String> {
    guarded(None, || session::trace_path().map(|p| p.to_string_lossy().into_owned()))
}

/// Open a span; returns a token for `exit` (0 when tracing is off).
#[pyfunction]
#[pyo3(signature = (name, cat, args=None))]
fn enter(py: Python<'_>, name: &str, cat: &str, args: Option<&Bound<'_, PyDict>>) -> u64 {
    if !session::is_recording() {
        return 0;
    }
    let args = args_json(args);
    guarded(0, || {
        session::enter(name.to_owned().into(), cat.to_owned().into(), args.as_deref(), || python_thread_name(py))
    })
}

/// The `gc` span open now: a collection runs holding the GIL and never starts inside another.
static GC_TOKEN: AtomicU64 = AtomicU64::new(0);

/// The `gc.callbacks` entry (`python/lynshim/_lifecycle.py`): one `gc` span per collection, with its
/// generation at the begin and the objects collected and found uncollectable at the end. Native, so a
/// collection costs no Python frame and no dict of args on top of its own work.
#[pyfunction]
fn on_gc(py: Python<'_>, phase: &str, info: &Bound<'_, PyDict>) {
    let count = |key: &'static str| -> (&'static str, i64) {
        let value = info.get_item(key).ok().flatten().and_then(|value| value.extract::<i64>().ok());
        (key, value.unwrap_or_default())
    };
    if phase == "start" {
        if !session::is_recording() {
            return;
        }
        let args = counts_json(&[count(lynschema::arg::GENERATION)]);
        let token = guarded(0, || {
            session::enter(lynschema::event::GC.into(), lynschema::category::GC.into(), Some(args.as_str()), || {
                python_thread_name(py)
            })
        });
        GC_TOKEN.store(token, Ordering::Relaxed);
    } else {
        let token = GC_TOKEN.swap(0, Ordering::Relaxed);
        if token == 0 {
            return;
        }
        let args = counts_json(&[count(lynschema::arg::COLLECTED), count(lynschema::arg::UNCOLLECTABLE)]);
        guarded((), || session::exit(token, Some(args.as_str())));
    }
}

/// `{"key": n, ...}`.
fn counts_json(pairs: &[(&str, i64)]) -> String {
    let mut out = String::with_capacity(48);
    out.push('{');
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json::push_str(&mut out, key);
        out.push(':');
        json::push_int(&mut out, *value);
    }
    out.push('}');
    out
}

/// Close the span `token` names, with `args` recorded at its end.
#[pyfunction]
#[pyo3(signature = (token, args=None))]
fn exit(token: u64, args: Option<&Bound<'_, PyDict>>) {
    if token == 0 {
        return;
    }
    let args = args_json(args);
    guarded((), || session::exit(token, args.as_deref()));
}

/// Record one of lynshim's own events on the calling thread.
fn record_own(py: Python<'_>, event: OwnEvent) {
    guarded((), || session::record(event, || python_thread_name(py)));
}

/// An instant event on the calling thread.
#[pyfunction]
#[pyo3(signature = (name, cat, args=None))]
fn instant(py: Python<'_>, name: &str, cat: &str, args: Option<&Bound<'_, PyDict>>) {
    let args = args.map(dict_to_map).unwrap_or_default();
    record_own(py, OwnEvent::Instant { name: name.to_owned(), cat: cat.to_owned(), args });
}

/// A complete span timed by the caller on CLOCK_MONOTONIC (`time.monotonic_ns()`).
#[pyfunction]
#[pyo3(signature = (name, cat, start_ns, end_ns, args=None))]
fn complete(py: Python<'_>, name: &str, cat: &str, start_ns: u64, end_ns: u64, args: Option<&Bound<'_, PyDict>>) {
    let Some(ts) = session::rel_us(start_ns) else { return };
    #[allow(clippy::cast_precision_loss)]
    let dur = end_ns.saturating_sub(start_ns) as f64 / 1000.0;
    let args = args.map(dict_to_map).unwrap_or_default();
    record_own(
        py,
        OwnEvent::Complete {
            name: name.to_owned().into(),
            cat: cat.to_owned().into(),
            start_us: ts,
            dur_us: dur,
            args,
        },
    );
}

/// Sample the resident set size now (an `rss` counter event), labelled with a memory moment
/// (`schema.MOMENT_*`) when `at` is given.
#[pyfunction]
#[pyo3(signature = (at=None))]
fn sample_rss(at: Option<&str>) {
    guarded((), || session::sample_rss(at));
}

/// One end of the flow arrow joining a lynguine request to the server span that handles it.
fn request_flow(end: FlowEnd, id: u64) -> OwnEvent {
    OwnEvent::Flow {
        end,
        id,
        name: lynschema::event::REQUEST_FLOW.to_owned(),
        cat: lynschema::category::SERVER_CLIENT.to_owned(),
    }
}

/// Start of a flow arrow (the client side of a request), bound to the enclosing span.
#[pyfunction]
fn flow_out(py: Python<'_>, id: u64) {
    record_own(py, request_flow(FlowEnd::Out, id));
}

/// End of a flow arrow (the server side), bound to the enclosing span.
#[pyfunction]
fn flow_in(py: Python<'_>, id: u64) {
    record_own(py, request_flow(FlowEnd::In, id));
}

/// Metadata written with the exit event.
#[pyfunction]
fn set_exit_meta(key: &str, value: &Bound<'_, PyAny>) {
    let value = to_json(value);
    guarded((), || session::set_exit_meta(key, value));
}

/// Flush what has been traced to the file.
#[pyfunction]
fn flush() {
    guarded((), session::flush);
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the trace's times (spans are recorded on the CPU's counter
/// where there is one, and converted to it, see `crate::clock`), and of `complete`'s arguments.
#[pyfunction]
fn monotonic_ns() -> u64 {
    procinfo::monotonic_ns()
}

/// `(user, system)` CPU seconds of all waited-for children.
#[pyfunction]
fn children_cpu_s() -> (f64, f64) {
    lynlaunch::children_cpu_s()
}

/// Who wrote a trace file: `schema.SOURCE_EXEC` or `schema.SOURCE_PYTHON` (the native launcher's rule).
#[pyfunction]
fn trace_source(path: PathBuf) -> &'static str {
    lynlaunch::summary::source_of(&path)
}

/// The line `lynshim run` ends with, as the native launcher words it.
#[pyfunction]
#[pyo3(signature = (python_traces, exec_records, not_traced, shown))]
fn run_summary(
    python_traces: Vec<PathBuf>,
    exec_records: Vec<PathBuf>,
    not_traced: Option<&str>,
    shown: PathBuf,
) -> String {
    let traces = lynlaunch::summary::Traces { python: python_traces, exec: exec_records };
    lynlaunch::summary::line(&traces, not_traced, &shown)
}

/// Write the run record of `lynshim run` (validated against the schema) to `path`, mode 0600.
#[pyfunction]
fn write_run_record(path: PathBuf, record: &Bound<'_, PyDict>) -> PyResult<()> {
    let mut map = dict_to_map(record);
    map.entry(lynschema::arg::FORMAT_VERSION).or_insert(lynschema::FORMAT_VERSION.into());
    let record: lynschema::RunRecord = serde_json::from_value(Value::Object(map))
        .map_err(|e| PyValueError::new_err(format!("bad run record: {e}")))?;
    record.write(&path).map_err(|e| PyValueError::new_err(format!("{}: {e}", path.display())))
}

/// An `OSError` naming the file.
fn os_error(path: &std::path::Path, err: &std::io::Error) -> PyErr {
    pyo3::exceptions::PyOSError::new_err(format!("{}: {err}", path.display()))
}

/// `(resident pages, total pages)` of a file in the page cache (`mincore`).
#[pyfunction]
fn page_residency(path: PathBuf) -> PyResult<(u64, u64)> {
    pagecache::residency(&path).map_err(|e| os_error(&path, &e))
}

/// Drop a file's pages from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`; no root needed).
#[pyfunction]
fn evict_from_page_cache(path: PathBuf) -> PyResult<()> {
    pagecache::evict(&path).map_err(|e| os_error(&path, &e))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_child, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(activated, m)?)?;
    m.add_function(wrap_pyfunction!(python_exiting, m)?)?;
    m.add_function(wrap_pyfunction!(killed_by_signal, m)?)?;
    m.add_function(wrap_pyfunction!(guard_termination, m)?)?;
    m.add_function(wrap_pyfunction!(exiting_now, m)?)?;
    m.add_function(wrap_pyfunction!(is_active, m)?)?;
    m.add_function(wrap_pyfunction!(trace_path, m)?)?;
    m.add_function(wrap_pyfunction!(enter, m)?)?;
    m.add_class::<imports::ImportHook>()?;
    m.add_class::<probe::Probe>()?;
    m.add_class::<probe::TracedFunction>()?;
    probe::enable_vectorcall(m.py())?;
    m.add_function(wrap_pyfunction!(probe::call, m)?)?;
    m.add_function(wrap_pyfunction!(probe::probe_begin, m)?)?;
    m.add_function(wrap_pyfunction!(probe::probe_end, m)?)?;
    m.add_function(wrap_pyfunction!(exit, m)?)?;
    m.add_function(wrap_pyfunction!(on_gc, m)?)?;
    m.add_function(wrap_pyfunction!(instant, m)?)?;
    m.add_function(wrap_pyfunction!(complete, m)?)?;
    m.add_function(wrap_pyfunction!(sample_rss, m)?)?;
    m.add_function(wrap_pyfunction!(flow_out, m)?)?;
    m.add_function(wrap_pyfunction!(flow_in, m)?)?;
    m.add_function(wrap_pyfunction!(set_exit_meta, m)?)?;
    m.add_function(wrap_pyfunction!(flush, m)?)?;
    m.add_function(wrap_pyfunction!(monotonic_ns, m)?)?;
    m.add_function(wrap_pyfunction!(children_cpu_s, m)?)?;
    m.add_function(wrap_pyfunction!(trace_source, m)?)?;
    m.add_function(wrap_pyfunction!(run_summary, m)?)?;
    m.add_function(wrap_pyfunction!(write_run_record, m)?)?;
    m.add_function(wrap_pyfunction!(page_residency, m)?)?;
    m.add_function(wrap_pyfunction!(evict_from_page_cache, m)?)?;
    m.add_function(wrap_pyfunction!(bench::process_phases, m)?)?;

    let schema = PyModule::new(m.py(), "schema")?;
    for (name, value) in lynschema::PYTHON_CONSTANTS {
        schema.add(*name, *value)?;
    }
    schema.add("FORMAT_VERSION", lynschema::FORMAT_VERSION)?;
    schema.add("WORK_CATEGORIES", lynschema::category::WORK.to_vec())?;
    schema.add("OPERATION_CATEGORIES", lynschema::category::OPERATIONS.to_vec())?;
    schema.add("CREDENTIAL_WORDS", lynschema::CREDENTIAL_WORDS.to_vec())?;
    schema.add("MAX_ARG_CHARS", lynschema::MAX_ARG_CHARS)?;
    m.add_submodule(&schema)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
