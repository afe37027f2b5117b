//! How a session begins and ends: opening the trace file and starting the emitter, writing the end of
//! the trace when the process exits, and starting over in a child after `fork`.
//!
//! A session owns a private `tracing` [`Dispatch`](tracing::Dispatch) (a `Registry` with the
//! tracing-chrome layer, see [`crate::emitter`]) rather than the global default, because a process may
//! need a second one: after `fork` the child must write its own file, and neither the emitter nor
//! tracing-chrome's writer thread survives the fork.
//!
//! Ending a session happens in two steps when the process exits. Python's `atexit` (the last handler
//! to run, since lynshim registers first) closes the spans open on the exiting thread, lets the
//! emitter drain the channel and tracing-chrome write out and stop its thread; then a C `on_exit`
//! handler, the only place the exit status is known, writes memory figures and the exit event
//! directly into the file and closes it. By then thread-local storage is gone, so that last step must
//! not touch `tracing`.
//!
//! Nothing here panics into the host program and nothing returns an error to it: a failure to create
//! or write the file is reported once on stderr and tracing stays off.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};

use lynschema::{arg, category, event, files, moment, FORMAT_VERSION};
use serde_json::{Map, Value};

use crate::batch::{Batches, OwnEvent};
use crate::clock;
use crate::emitter::{self, Message};
use crate::fixup::{Fixup, SharedFixup};
use crate::parent_trace::find_parent_trace;
use crate::procinfo;
use crate::session::{self, Session, TraceWriter, ACTIVE, GENERATION};
use crate::signals;
use crate::tracefile::TraceFile;

/// A session whose spans are all written, waiting for the exit status (see the module doc).
static AWAITING_EXIT: Mutex<Option<Awaiting>> = Mutex::new(None);

/// What the exit handler needs of a session Python's exit has written out.
struct Awaiting {
    /// The process whose session it was (see [`Session::pid`]).
    pid: u32,
    writer: TraceWriter,
    meta: Map<String, Value>,
    zero_mono_ns: u64,
    /// CLOCK_MONOTONIC when lynshim's `atexit` handler began writing, and when it had finished: the
    /// exit handler records lynshim's writing and, after it, the interpreter's teardown.
    writing: Option<(u64, u64)>,
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
            session::warn_once(&format!("cannot write a trace in {} ({err})", dir.display()));
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
    // Full buffers go out with direct I/O where the file system has it: in a tight loop of traced calls
    // the writer thread's copies into fresh page-cache pages were most of its CPU (see `crate::tracefile`).
    let file = TraceFile::new(file, true)?;

    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    clock::choose();
    session::hold_lock_across_fork();
    // Before the session's first record, which it must come before (see `clock::Anchors`).
    let clock = clock::Anchors::start();
    let zero_mono_ns = procinfo::monotonic_ns();
    let wall_zero_now = procinfo::unix_ns();
    let age_ns = if info.forked_from.is_some() { 0 } else { procinfo::process_age_ns(start_ticks) };
    #[allow(clippy::cast_precision_loss)]
    let shift_us = age_ns as f64 / 1000.0;
    let batches = Batches::default();
    let fixup = Fixup::new(file, batches.clone(), pid, zero_mono_ns, shift_us, Box::new(session::warn_once));
    let writer = Arc::new(Mutex::new(fixup));
    let (sender, receiver) = mpsc::channel();
    let emitted = batches.clone();
    // Both threads (tracing-chrome's writer, spawned by `chrome_dispatch`, and the emitter) start with
    // every signal blocked: the program's signals are for the program's threads (see `crate::signals`).
    let emitter = signals::all_blocked(|| {
        let (dispatch, guard) = emitter::chrome_dispatch(SharedFixup(Arc::clone(&writer)));
        std::thread::Builder::new().name("lynshim-emitter".into()).spawn(move || {
            let collect = || session::collect(generation);
            if let Some(signum) = emitter::run(&receiver, &dispatch, guard, &emitted, clock, collect) {
                end_for_signal(generation, signum);
            }
        })
    })?;

    let parent_trace = find_parent_trace(dir, &path);
    let (cpu_user, cpu_sys) = procinfo::cpu_times_us();
    let mut meta = info.meta;
    meta.insert(arg::FORMAT_VERSION.into(), FORMAT_VERSION.into());
    meta.insert(arg::PID.into(), pid.into());
    meta.insert(arg::PPID.into(), ppid.into());
    meta.insert(arg::START_TICKS.into(), start_ticks.into());
    meta.insert(arg::SOURCE.into(), arg::SOURCE_PYTHON.into());
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

    let mut s = Session::new(sender, batches, emitter, writer, path.clone(), generation, zero_mono_ns);
    s.announce_thread(&info.thread_name);
    s.record(OwnEvent::Process { name: info.process_name, labels, meta });
    if info.forked_from.is_none() {
        let import_started = info.import_started_ns.unwrap_or(zero_mono_ns).min(zero_mono_ns);
        let startup_end_us = s.rel_us(import_started);
        let mut args = Map::new();
        args.insert(arg::STARTUP_CPU_USER_US.into(), cpu_user.into());
        args.insert(arg::STARTUP_CPU_SYS_US.into(), cpu_sys.into());
        s.record(OwnEvent::Complete {
            name: event::STARTUP.into(),
            cat: category::STARTUP.into(),
            start_us: -shift_us,
            dur_us: shift_us + startup_end_us,
            args,
        });
        // The activation span ends when the Python side has installed its hooks ([`session::activated`]).
        s.activation_started_ns = Some(import_started);
    }
    s.sample_rss(Some(moment::BASELINE));
    s.hand_off();
    let _ = s.sender.send(Message::Flush(None));
    *session::session() = Some(s);
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(path)
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

/// Set while a session is being ended: by [`end`] for its whole run, and by the emitter's
/// [`end_for_signal`] from the moment it takes the session until the process is gone. Whichever comes
/// second yields: `end` waits (for the end of the process), `end_for_signal` leaves the session to `end`
/// (which is joining its thread). So the exit is written once, and nothing kills the process halfway
/// through writing it.
static ENDING: AtomicBool = AtomicBool::new(false);

/// In a child after `fork` (its `fork` handler, before any Python code runs): the parent's ending, and
/// a signal the parent had noted, are not the child's.
pub(crate) fn forget_parent_ending() {
    ENDING.store(false, Ordering::SeqCst);
    signals::forget();
}

/// End the session (or, for [`End::Exit`], the session that Python's exit left waiting).
pub fn end(how: End) {
    while ENDING.swap(true, Ordering::SeqCst) {
        // The emitter is ending the session for a signal and the process with it (or another thread is
        // ending it): wait.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    end_unguarded(how);
    ENDING.store(false, Ordering::SeqCst);
}

fn end_unguarded(how: End) {
    let began_ns = procinfo::monotonic_ns();
    let pid = std::process::id();
    let running = session::session().take().and_then(|s| {
        if s.pid == pid {
            return Some(s);
        }
        // A forked child's copy of its parent's session, before the child's fork handler forgot it
        // (a signal handled in between): its threads and file are the parent's.
        std::mem::forget(s);
        None
    });
    let awaiting = running.map(|mut s| {
        ACTIVE.store(false, Ordering::SeqCst);
        // Spans still open on this thread belong to this session: close them into it first.
        // (After thread-local storage is gone this fails and there is nothing left to close.)
        s.close_open_spans();
        s.hand_off();
        let Session { sender, emitter, writer, exit_meta, zero_mono_ns, .. } = s;
        // What is left is written on the exit's path: through the page cache, not waiting for the device.
        lock(&writer).ending();
        // The emitter drains the channel, then tracing-chrome writes out and stops.
        drop(sender);
        if let Some(emitter) = emitter {
            let _ = emitter.join();
        }
        let writing = (how == End::PythonExit).then(|| (began_ns, procinfo::monotonic_ns()));
        Awaiting { pid, writer, meta: exit_meta, zero_mono_ns, writing }
    });
    let mut waiting = AWAITING_EXIT.lock().unwrap_or_else(PoisonError::into_inner);
    if waiting.as_ref().is_some_and(|w| w.pid != pid) {
        std::mem::forget(waiting.take());
    }
    match how {
        End::Stop => {
            if let Some(done) = awaiting {
                lock(&done.writer).close();
            }
        }
        End::PythonExit => *waiting = awaiting.or(waiting.take()),
        End::Exit { status, signal } => {
            if let Some(done) = awaiting.or(waiting.take()) {
                write_exit(done, status, signal);
            }
        }
    }
}

/// The emitter's end of a session whose process was sent a signal that lynshim's Python handler did not
/// get to in time (see [`crate::signals`]): the emitter has written out what was recorded; write the
/// exit event with the signal, close the file and end the process by the signal. When the session is no
/// longer this emitter's (Python's handler took it meanwhile, or `lynshim.stop()` did), whoever took it
/// finishes, and this thread just ends.
fn end_for_signal(generation: u64, signum: i32) {
    if ENDING.swap(true, Ordering::SeqCst) {
        return;
    }
    let taken = {
        let mut slot = session::session();
        if slot.as_ref().is_some_and(|s| s.generation == generation && s.pid == std::process::id()) {
            slot.take()
        } else {
            None
        }
    };
    let Some(s) = taken else {
        ENDING.store(false, Ordering::SeqCst);
        return;
    };
    ACTIVE.store(false, Ordering::SeqCst);
    let Session { writer, exit_meta, zero_mono_ns, pid, emitter, .. } = s;
    // This thread's own handle: dropping it detaches.
    drop(emitter);
    write_exit(Awaiting { pid, writer, meta: exit_meta, zero_mono_ns, writing: None }, None, Some(signum));
    signals::die_of(signum);
}

fn lock(writer: &TraceWriter) -> MutexGuard<'_, Fixup<TraceFile>> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// lynshim's writing at Python's exit and the interpreter's teardown after it (when Python's exit
/// came first), memory at exit, peak memory and the exit event, written directly, then the closing `]`.
fn write_exit(done: Awaiting, status: Option<i32>, signal: Option<i32>) {
    let Awaiting { writer, mut meta, zero_mono_ns, writing, .. } = done;
    let fixup = &mut lock(&writer);
    fixup.ending();
    let tid = procinfo::gettid();
    let now_ns = procinfo::monotonic_ns();
    #[allow(clippy::cast_precision_loss)]
    let rel_us = |ns: u64| (ns as f64 - zero_mono_ns as f64) / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let dur_us = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
    if let Some((began, written)) = writing {
        let spans = [
            (event::SHIM_WRITE, category::TRACER, began, written),
            (event::TEARDOWN, category::TEARDOWN, written, now_ns),
        ];
        for (name, cat, from, to) in spans {
            let span = OwnEvent::Complete {
                name: name.into(),
                cat: cat.into(),
                start_us: rel_us(from),
                dur_us: dur_us(from, to),
                args: Map::new(),
            };
            fixup.write_own(&span, tid);
        }
    }
    if let Some(bytes) = procinfo::rss_bytes() {
        fixup.write_own(&OwnEvent::Counter { name: event::RSS.into(), bytes, at: Some(moment::EXIT.into()) }, tid);
    }
    let peak = procinfo::peak_rss_bytes();
    if let Some(peak) = peak {
        fixup.write_own(&OwnEvent::Counter { name: event::PEAK_RSS.into(), bytes: peak, at: None }, tid);
    }
    meta.insert(arg::EXIT_STATUS.into(), status.map_or(Value::Null, Value::from));
    meta.insert(arg::EXIT_SIGNAL.into(), signal.map_or(Value::Null, Value::from));
    meta.insert(arg::PEAK_RSS_BYTES.into(), peak.map_or(Value::Null, Value::from));
    fixup.write_own(&OwnEvent::Exit { meta }, tid);
    fixup.close();
}

/// In a child after `fork`: forget the parent's session without touching its file, its channel or
/// its threads (which do not exist here), and start the child's own.
pub fn after_fork_in_child(info: impl FnOnce(Option<String>) -> StartInfo) {
    let parent = session::forget_parent_session();
    let Some(parent_path) = parent else { return };
    if let Some(waiting) = AWAITING_EXIT.lock().unwrap_or_else(PoisonError::into_inner).take() {
        std::mem::forget(waiting);
    }
    let dir = parent_path.parent().map(Path::to_path_buf);
    let forked_from = parent_path.to_string_lossy().into_owned();
    if let Some(dir) = dir {
        start(&dir, info(Some(forked_from)));
    }
}
