//! One tracing session: the trace file of this process, its `tracing` dispatcher, and the span stacks.
//!
//! A session owns a private `tracing` [`Dispatch`] (a `Registry` with the tracing-chrome layer) rather
//! than the global default, because a process may need a second one: after `fork` the child must write
//! its own file, and tracing-chrome's writer thread does not survive the fork. Spans are created under
//! the session's dispatcher; each thread keeps its entered spans on a stack and Python holds a token
//! (generation, depth) for each, so a span opened before a fork or a `stop()` can never close into the
//! next session.
//!
//! Ending a session happens in two steps when the process exits. Python's `atexit` (the last handler
//! to run, since lynshim registers first) closes every span and lets tracing-chrome write out and stop
//! its thread; then a C `on_exit` handler, the only place the exit status is known, writes memory
//! figures and the exit event directly into the file and closes it. By then thread-local storage is
//! gone, so that last step must not touch `tracing`.
//!
//! Nothing here panics into the host program and nothing returns an error to it: a failure to create
//! or write the file is reported once on stderr and tracing stays off.

use std::cell::{Cell, RefCell};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lynschema::{arg, category, event, files, FORMAT_VERSION};
use serde_json::{json, Map, Value};
use tracing::span::EnteredSpan;
use tracing::{field, Dispatch, Level};
use tracing_chrome::{ChromeLayerBuilder, FlushGuard, TraceStyle};
use tracing_subscriber::prelude::*;
use tracing_subscriber::Registry;

use crate::fixup::{kind, Fixup, SharedFixup};
use crate::procinfo;

/// Flush tracing-chrome's buffer after this many events even inside a long span, so that a process
/// killed with SIGKILL loses at most this many.
const FLUSH_EVERY_EVENTS: u64 = 64;

type TraceWriter = Arc<Mutex<Fixup<fs::File>>>;

struct Session {
    dispatch: Dispatch,
    /// Dropping it makes tracing-chrome write out what it has and join its writer thread.
    guard: FlushGuard,
    /// The file, shared with tracing-chrome's writer thread; ours again once that thread has ended.
    writer: TraceWriter,
    path: PathBuf,
    generation: u64,
    /// CLOCK_MONOTONIC at tracing-chrome's zero.
    zero_mono_ns: u64,
    /// Metadata added late (versions of libraries imported after activation), written at exit.
    exit_meta: Map<String, Value>,
    /// The first work span has started: RSS was sampled "after imports".
    work_started: bool,
    events_since_flush: u64,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);
/// A session whose spans are all written, waiting for the exit status (see the module doc).
static AWAITING_EXIT: Mutex<Option<(TraceWriter, Map<String, Value>)>> = Mutex::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static STACK: RefCell<Vec<EnteredSpan>> = const { RefCell::new(Vec::new()) };
    /// Generation in which this thread announced its OS tid and name.
    static THREAD_GENERATION: Cell<u64> = const { Cell::new(0) };
}

fn session() -> MutexGuard<'static, Option<Session>> {
    SESSION.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Print one warning per process on stderr; tracing problems never say more than that.
pub fn warn_once(message: &str) {
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!("lynshim: {message}; tracing is off for this process, the program runs on unchanged");
    }
}

/// What the caller knows about the process when tracing starts.
pub struct StartInfo {
    /// argv, cwd, executable, Python version, run id, label… (the Python side gathers these).
    pub meta: Map<String, Value>,
    /// Name of the process in Perfetto, made from its command.
    pub process_name: String,
    /// Name of the calling thread.
    pub thread_name: String,
    /// CLOCK_MONOTONIC when `import lynshim` began, to time the shim's own activation.
    pub import_started_ns: Option<u64>,
    /// Trace file of the process this one was forked from.
    pub forked_from: Option<String>,
}

/// Start tracing this process into a new file under `dir`. Returns the file's path, or `None` (after
/// one warning) when the file cannot be created. A running session is finished first.
pub fn start(dir: &Path, info: StartInfo) -> Option<PathBuf> {
    end(End::Stop);
    match open_session(dir, info) {
        Ok(path) => Some(path),
        Err(err) => {
            warn_once(&format!("cannot write a trace in {} ({err})", dir.display()));
            None
        }
    }
}

fn open_session(dir: &Path, info: StartInfo) -> io::Result<PathBuf> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let pid = std::process::id();
    let (ppid, start_ticks) = procinfo::parent_and_start_ticks("self").unwrap_or((0, 0));
    let path = dir.join(files::trace_file_name(pid, start_ticks, procinfo::nonce()));
    // create_new: never clobber a file, whatever the pid; 0600: traces hold paths and arguments.
    let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;

    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    let zero_mono_ns = procinfo::monotonic_ns();
    let wall_zero_now = procinfo::unix_ns();
    let age_ns = if info.forked_from.is_some() { 0 } else { procinfo::process_age_ns(start_ticks) };
    #[allow(clippy::cast_precision_loss)]
    let shift_us = age_ns as f64 / 1000.0;
    let fixup = Fixup::new(file, pid, zero_mono_ns, shift_us, Box::new(warn_once));
    let writer = Arc::new(Mutex::new(fixup));
    let (layer, guard) = ChromeLayerBuilder::new()
        .writer(SharedFixup(Arc::clone(&writer)))
        .include_args(true)
        .trace_style(TraceStyle::Threaded)
        .build();
    let dispatch = Dispatch::new(Registry::default().with(layer));

    let parent_trace = find_parent_trace(dir, &path);
    let (cpu_user, cpu_sys) = procinfo::cpu_times_us();
    let mut meta = info.meta;
    meta.insert(arg::FORMAT_VERSION.into(), FORMAT_VERSION.into());
    meta.insert(arg::PID.into(), pid.into());
    meta.insert(arg::PPID.into(), ppid.into());
    meta.insert(arg::WALL_ZERO_NS.into(), wall_zero_now.saturating_sub(age_ns).into());
    meta.insert(arg::ACTIVATED_US.into(), shift_us.into());
    meta.insert(arg::STARTUP_CPU_USER_US.into(), cpu_user.into());
    meta.insert(arg::STARTUP_CPU_SYS_US.into(), cpu_sys.into());
    if let Some((parent_path, parent_pid)) = &parent_trace {
        meta.insert(arg::PARENT_TRACE.into(), parent_path.clone().into());
        meta.insert(arg::PARENT_PID.into(), (*parent_pid).into());
    }
    if let Some(from) = &info.forked_from {
        meta.insert(arg::FORKED_FROM.into(), from.clone().into());
    }
    let labels = [meta.get(arg::LABEL), meta.get(arg::RUN_ID)]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ");

    let mut s = Session {
        dispatch,
        guard,
        writer,
        path: path.clone(),
        generation,
        zero_mono_ns,
        exit_meta: Map::new(),
        work_started: false,
        events_since_flush: 0,
    };
    s.announce_thread(&info.thread_name);
    s.emit(kind::PROCESS, &json!({"process_name": info.process_name, "labels": labels, "args": meta}));
    if info.forked_from.is_none() {
        let import_started = info.import_started_ns.unwrap_or(zero_mono_ns).min(zero_mono_ns);
        let startup_end_us = s.rel_us(import_started);
        s.emit(kind::COMPLETE, &json!({"name": event::STARTUP, "cat": category::STARTUP,
                                        "ts": -shift_us, "dur": shift_us + startup_end_us,
                                        "args": {arg::STARTUP_CPU_USER_US: cpu_user, arg::STARTUP_CPU_SYS_US: cpu_sys}}));
        s.emit(kind::COMPLETE, &json!({"name": event::SHIM_IMPORT, "cat": category::TRACER,
                                        "ts": startup_end_us, "dur": -startup_end_us}));
    }
    s.sample_rss(event::RSS);
    s.guard.flush();
    *session() = Some(s);
    Ok(path)
}

/// The trace of the nearest traced ancestor in `dir`: `(path, pid)`.
fn find_parent_trace(dir: &Path, own: &Path) -> Option<(String, u32)> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| files::is_trace_file_name(n))
        .collect();
    let own_name = own.file_name()?.to_str()?;
    procinfo::ancestors().into_iter().find_map(|(pid, start)| {
        let prefix = files::trace_file_prefix(pid, start);
        names
            .iter()
            .filter(|n| n.as_str() != own_name && n.starts_with(&prefix))
            .min()
            .map(|n| (dir.join(n).to_string_lossy().into_owned(), pid))
    })
}

impl Session {
    /// Microseconds from tracing-chrome's zero to a CLOCK_MONOTONIC instant (negative before it).
    #[allow(clippy::cast_precision_loss)]
    fn rel_us(&self, mono_ns: u64) -> f64 {
        (mono_ns as f64 - self.zero_mono_ns as f64) / 1000.0
    }

    fn emit(&mut self, kind: &str, payload: &Value) {
        tracing::dispatcher::with_default(&self.dispatch, || {
            tracing::event!(target: "lynshim", Level::INFO, k = %kind, p = %payload);
        });
        self.count_event();
    }

    fn count_event(&mut self) {
        self.events_since_flush += 1;
        if self.events_since_flush >= FLUSH_EVERY_EVENTS {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.events_since_flush = 0;
        self.guard.flush();
    }

    fn announce_thread(&mut self, name: &str) {
        let payload = json!({"tid": procinfo::gettid(), "name": name});
        self.emit(kind::THREAD, &payload);
        THREAD_GENERATION.with(|g| g.set(self.generation));
    }

    fn sample_rss(&mut self, name: &str) {
        if let Some(bytes) = procinfo::rss_bytes() {
            self.emit(kind::COUNTER, &json!({"name": name, "value": bytes}));
        }
    }
}

/// Is a session running in this process?
pub fn is_active() -> bool {
    session().is_some()
}

/// Path of the running session's trace file.
pub fn trace_path() -> Option<PathBuf> {
    session().as_ref().map(|s| s.path.clone())
}

/// Open a span on the calling thread. `thread_name` is asked for only when this thread is new to the
/// session. Returns a token for [`exit`]; 0 when tracing is off.
pub fn enter(name: &str, cat: &str, args: Option<&str>, thread_name: impl FnOnce() -> String) -> u64 {
    let new_thread_name = new_thread_name(thread_name);
    let span = {
        let mut guard = session();
        let Some(s) = guard.as_mut() else { return 0 };
        if let Some(name) = new_thread_name {
            s.announce_thread(&name);
        }
        if !s.work_started && category::WORK.contains(&cat) {
            s.work_started = true;
            s.sample_rss(event::RSS);
        }
        s.count_event();
        let args = args.unwrap_or("");
        let span = tracing::dispatcher::with_default(&s.dispatch, || {
            tracing::span!(target: "lynshim", Level::INFO, "span", n = %name, c = %cat, a = %args, r = field::Empty)
        });
        (span, s.generation)
    };
    let (span, generation) = span;
    STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        stack.push(span.entered());
        (generation << 32) | stack.len() as u64
    })
}

/// Close the span `token` names, recording `end_args` (a JSON object) on it. Spans opened inside it
/// and still open are closed first; a token of an earlier session or already closed does nothing.
pub fn exit(token: u64, end_args: Option<&str>) {
    if token == 0 || token >> 32 != GENERATION.load(Ordering::SeqCst) {
        return;
    }
    let depth = usize::try_from(token & 0xffff_ffff).unwrap_or(usize::MAX);
    let now_empty = STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        if depth == 0 || stack.len() < depth {
            return false;
        }
        while stack.len() > depth {
            stack.pop();
        }
        if let Some(span) = stack.pop() {
            if let Some(end_args) = end_args {
                span.record("r", field::display(end_args));
            }
            drop(span);
        }
        stack.is_empty()
    });
    let mut guard = session();
    if let Some(s) = guard.as_mut() {
        if now_empty {
            s.flush();
        } else {
            s.count_event();
        }
    }
}

/// One of lynshim's own events (instant, counter, flow) on the calling thread.
pub fn emit(kind: &str, payload: &Value, thread_name: impl FnOnce() -> String) {
    let new_thread_name = new_thread_name(thread_name);
    let mut guard = session();
    if let Some(s) = guard.as_mut() {
        if let Some(name) = new_thread_name {
            s.announce_thread(&name);
        }
        s.emit(kind, payload);
    }
}

/// The calling thread's name when it has not been announced in the current session yet. Asked for
/// before the session lock is taken: naming a thread may run Python code, which may switch threads.
fn new_thread_name(thread_name: impl FnOnce() -> String) -> Option<String> {
    let current = GENERATION.load(Ordering::SeqCst);
    (current != 0 && THREAD_GENERATION.with(Cell::get) != current).then(thread_name)
}

/// Sample RSS now (a counter event).
pub fn sample_rss() {
    if let Some(s) = session().as_mut() {
        s.sample_rss(event::RSS);
    }
}

/// Record metadata written with the exit event (e.g. library versions learned after activation).
pub fn set_exit_meta(key: &str, value: Value) {
    if let Some(s) = session().as_mut() {
        s.exit_meta.insert(key.to_owned(), value);
    }
}

/// Microseconds from the session's zero to `mono_ns`, for complete events timed by the caller.
pub fn rel_us(mono_ns: u64) -> Option<f64> {
    session().as_ref().map(|s| s.rel_us(mono_ns))
}

/// Flush what has been traced so far to the file.
pub fn flush() {
    if let Some(s) = session().as_mut() {
        s.flush();
    }
}

/// How a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `lynshim.stop()`: close the file, no exit event.
    Stop,
    /// Python is exiting: write everything out, keep the file open for [`End::Exit`].
    PythonExit,
    /// The process is ending with this exit status or signal: write the exit event and close.
    Exit { status: Option<i32>, signal: Option<i32> },
}

/// End the session (or, for [`End::Exit`], the session that Python's exit left waiting).
pub fn end(how: End) {
    let running = session().take();
    let writer_and_meta = match running {
        Some(s) => {
            // Spans still open on this thread belong to this session: close them into it first.
            // (After thread-local storage is gone this fails and there is nothing left to close.)
            let _ = STACK.try_with(|stack| stack.borrow_mut().clear());
            let Session { guard, writer, exit_meta, dispatch, .. } = s;
            drop(guard);
            drop(dispatch);
            Some((writer, exit_meta))
        }
        None => None,
    };
    let mut awaiting = AWAITING_EXIT.lock().unwrap_or_else(PoisonError::into_inner);
    match how {
        End::Stop => {
            if let Some((writer, _)) = writer_and_meta {
                lock(&writer).close();
            }
        }
        End::PythonExit => *awaiting = writer_and_meta.or(awaiting.take()),
        End::Exit { status, signal } => {
            if let Some((writer, meta)) = writer_and_meta.or(awaiting.take()) {
                write_exit(&mut lock(&writer), meta, status, signal);
            }
        }
    }
}

fn lock(writer: &TraceWriter) -> MutexGuard<'_, Fixup<fs::File>> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Memory at exit, peak memory and the exit event, written directly, then the closing `]`.
fn write_exit(fixup: &mut Fixup<fs::File>, mut meta: Map<String, Value>, status: Option<i32>, signal: Option<i32>) {
    let tid = procinfo::gettid();
    if let Some(bytes) = procinfo::rss_bytes() {
        fixup.write_own(kind::COUNTER, &json!({"name": event::RSS, "value": bytes}), tid);
    }
    let peak = procinfo::peak_rss_bytes();
    if let Some(peak) = peak {
        fixup.write_own(kind::COUNTER, &json!({"name": event::PEAK_RSS, "value": peak}), tid);
    }
    meta.insert(arg::EXIT_STATUS.into(), status.map_or(Value::Null, Value::from));
    meta.insert(arg::EXIT_SIGNAL.into(), signal.map_or(Value::Null, Value::from));
    meta.insert(arg::PEAK_RSS_BYTES.into(), peak.map_or(Value::Null, Value::from));
    fixup.write_own(kind::EXIT, &json!({"args": meta}), tid);
    fixup.close();
}

/// In a child after `fork`: forget the parent's session without touching its file or its writer
/// thread (which does not exist here), and start the child's own.
pub fn after_fork_in_child(info: impl FnOnce(Option<String>) -> StartInfo) {
    let parent = session().take();
    let Some(parent) = parent else { return };
    let dir = parent.path.parent().map(Path::to_path_buf);
    let forked_from = parent.path.to_string_lossy().into_owned();
    // The parent's guard would join a thread that only exists in the parent: never drop it here.
    std::mem::forget(parent);
    if let Some(waiting) = AWAITING_EXIT.lock().unwrap_or_else(PoisonError::into_inner).take() {
        std::mem::forget(waiting);
    }
    STACK.with(|stack| std::mem::forget(std::mem::take(&mut *stack.borrow_mut())));
    if let Some(dir) = dir {
        start(&dir, info(Some(forked_from)));
    }
}
