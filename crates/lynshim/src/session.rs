//! One tracing session: the trace file of this process, the thread that hands its events to `tracing`,
//! and the span stacks.
//!
//! A traced call must cost well under a microsecond (issue #3), and a `tracing` span through the
//! tracing-chrome layer costs several on its own: tracing-chrome formats the span's fields, allocates
//! its name and target and sends a message to its writer thread at every enter and exit. So the traced
//! thread does not create `tracing` spans. It timestamps each span begin and end (and each of lynshim's
//! own events) into a [`Record`] appended to the session's list; full lists go down a channel to the
//! session's *emitter* thread, which also collects what is left every few milliseconds. The emitter
//! hands the records to `tracing` in batches, one `tracing` event per batch, which tracing-chrome
//! writes on its writer thread and [`crate::fixup`] expands into the events of the file with their
//! recorded times and threads. Everything in the file still goes
//! through `tracing` and tracing-chrome; the traced thread pays for a clock read, the session lock (held
//! for a push, never across a system call or Python code) and the push.
//!
//! A session owns a private `tracing` [`Dispatch`] (a `Registry` with the tracing-chrome layer) rather
//! than the global default, because a process may need a second one: after `fork` the child must write
//! its own file, and neither the emitter nor tracing-chrome's writer thread survives the fork. Each
//! thread keeps the names of its open spans on a stack and Python holds a token (generation, depth)
//! for each, so a span opened before a fork or a `stop()` can never close into the next session.
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

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lynschema::{arg, category, event, files, moment, FORMAT_VERSION};
use serde_json::{json, Map, Value};
use tracing::{Dispatch, Level};
use tracing_chrome::{ChromeLayerBuilder, FlushGuard, TraceStyle};
use tracing_subscriber::prelude::*;
use tracing_subscriber::Registry;

use crate::fixup::{kind, Fixup, SharedFixup};
use crate::json::{push_int, push_str};
use crate::procinfo;

/// Events reach the file about this long after they were recorded (unless the process is killed with
/// SIGKILL first, which loses them): the emitter collects and flushes at this pace while records come.
const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// …and at this pace when none came in the last round (an idle server, a long computation).
const IDLE_DELAY: Duration = Duration::from_millis(100);
/// The traced threads hand the list of records to the emitter when it holds this many; the emitter
/// collects shorter lists itself, so that a traced call never waits for a system call to wake it.
const HANDOFF_RECORDS: usize = 256;
/// Records per `tracing` event: large enough that tracing-chrome's per-event cost vanishes, small
/// enough that one event line stays a few hundred KiB.
const MAX_BATCH: usize = 1024;

type TraceWriter = Arc<Mutex<Fixup<fs::File>>>;

/// A span's name or category: borrowed from a probe (which lives as long as the process) or owned.
type Name = Cow<'static, str>;

/// A stretch of the text that goes with a list of records (see [`Session::text`]).
#[derive(Clone, Copy)]
struct Text {
    start: usize,
    len: usize,
}

/// What the traced threads record for the emitter thread. Times are CLOCK_MONOTONIC nanoseconds.
enum Record {
    /// A span begins: `args` is a JSON object, already serialised on the traced thread.
    Begin { tid: u64, ns: u64, name: Name, cat: Name, args: Option<Text> },
    /// The innermost open span of thread `tid` ends.
    End { tid: u64, ns: u64, name: Name, cat: Name, args: Option<Text> },
    /// One of lynshim's own events (a [`kind`]), with its payload.
    Own { tid: u64, ns: u64, kind: &'static str, payload: Value },
}

/// What goes down the channel to the emitter.
enum Message {
    Records(Vec<Record>, String),
    /// Write out what has been recorded; the sender, if any, is told once tracing-chrome has it.
    Flush(Option<SyncSender<()>>),
}

struct Session {
    /// The traced threads' end of the channel; dropping it lets the emitter finish.
    sender: Sender<Message>,
    /// Records not handed to the emitter yet, oldest first.
    pending: Vec<Record>,
    /// The args of the pending records, one after another. Copied here rather than kept as a string
    /// per record: memory allocated on the traced thread and freed on the emitter defeats the
    /// allocator's per-thread caches, and that cost more than the copy.
    text: String,
    emitter: Option<JoinHandle<()>>,
    /// The file, shared with tracing-chrome's writer thread; ours again once that thread has ended.
    writer: TraceWriter,
    path: PathBuf,
    generation: u64,
    /// CLOCK_MONOTONIC at tracing-chrome's zero.
    zero_mono_ns: u64,
    /// Metadata added late (versions of libraries imported after activation), written at exit.
    exit_meta: Map<String, Value>,
    /// Memory moments already sampled (see [`Moments`]).
    moments: Moments,
    /// CLOCK_MONOTONIC when lynshim's bootstrap began, until [`activated`] records the activation span.
    activation_started_ns: Option<u64>,
}

/// The memory moments a session samples once each, as their spans begin or end (the others —
/// baseline, after operations, exit — are sampled at fixed points of the process's life).
#[derive(Default, Clone, Copy)]
struct Moments {
    /// The first lamd/lynguine call made outside any import: the program's imports are done.
    after_imports: bool,
    /// The first configuration call returned.
    after_config: bool,
    /// The first data-loading call returned.
    after_data: bool,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);
/// A session whose spans are all written, waiting for the exit status (see the module doc).
static AWAITING_EXIT: Mutex<Option<Awaiting>> = Mutex::new(None);

/// What the exit handler needs of a session Python's exit has written out.
struct Awaiting {
    writer: TraceWriter,
    meta: Map<String, Value>,
    zero_mono_ns: u64,
    /// CLOCK_MONOTONIC when lynshim's `atexit` handler began writing, and when it had finished: the
    /// exit handler records lynshim's writing and, after it, the interpreter's teardown.
    writing: Option<(u64, u64)>,
}
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// A session is running: read without the lock by the hot path of every traced call.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);

/// An open span on this thread: what its end record repeats.
struct Open {
    name: Name,
    cat: Name,
}

thread_local! {
    /// The open spans of this thread, and the generation of the session they belong to.
    static STACK: RefCell<(u64, Vec<Open>)> = const { RefCell::new((0, Vec::new())) };
    /// Generation in which this thread announced its OS tid and name.
    static THREAD_GENERATION: Cell<u64> = const { Cell::new(0) };
    /// This thread's OS id (asked once: `gettid` is a system call).
    static TID: Cell<u64> = const { Cell::new(0) };
}

fn session() -> MutexGuard<'static, Option<Session>> {
    SESSION.lock().unwrap_or_else(PoisonError::into_inner)
}

fn tid() -> u64 {
    TID.with(|t| {
        if t.get() == 0 {
            t.set(procinfo::gettid());
        }
        t.get()
    })
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
    let (dispatch, guard) = chrome_dispatch(SharedFixup(Arc::clone(&writer)));
    let (sender, receiver) = mpsc::channel();
    let emitter = std::thread::Builder::new()
        .name("lynshim-emitter".into())
        .spawn(move || run_emitter(&receiver, &dispatch, guard, zero_mono_ns, generation))?;

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

    let mut s = Session {
        sender,
        pending: Vec::with_capacity(HANDOFF_RECORDS),
        text: String::with_capacity(HANDOFF_RECORDS * 64),
        emitter: Some(emitter),
        writer,
        path: path.clone(),
        generation,
        zero_mono_ns,
        exit_meta: Map::new(),
        moments: Moments::default(),
        activation_started_ns: None,
    };
    s.announce_thread(&info.thread_name);
    s.emit(kind::PROCESS, json!({"process_name": info.process_name, "labels": labels, "args": meta}));
    if info.forked_from.is_none() {
        let import_started = info.import_started_ns.unwrap_or(zero_mono_ns).min(zero_mono_ns);
        let startup_end_us = s.rel_us(import_started);
        s.emit(
            kind::COMPLETE,
            json!({"name": event::STARTUP, "cat": category::STARTUP,
                                       "ts": -shift_us, "dur": shift_us + startup_end_us,
                                       "args": {arg::STARTUP_CPU_USER_US: cpu_user, arg::STARTUP_CPU_SYS_US: cpu_sys}}),
        );
        // The activation span ends when the Python side has installed its hooks ([`activated`]).
        s.activation_started_ns = Some(import_started);
    }
    s.sample_rss(Some(moment::BASELINE));
    s.hand_off();
    let _ = s.sender.send(Message::Flush(None));
    *session() = Some(s);
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(path)
}

/// A `tracing` dispatcher writing through tracing-chrome into `writer`.
fn chrome_dispatch<W: io::Write + Send + 'static>(writer: W) -> (Dispatch, FlushGuard) {
    let (layer, guard) = ChromeLayerBuilder::new()
        .writer(writer)
        .include_args(true)
        // Without source locations tracing-chrome's line starts with the args (keys sorted), where the
        // fixup finds a batch's payload without parsing the line.
        .include_locations(false)
        .trace_style(TraceStyle::Threaded)
        .build();
    (Dispatch::new(Registry::default().with(layer)), guard)
}

/// The emitter thread: records in, `tracing` events out, in batches (see the module doc). Returns when
/// every sender is gone and the channel is empty, after tracing-chrome has written everything out.
fn run_emitter(
    messages: &Receiver<Message>,
    dispatch: &Dispatch,
    guard: FlushGuard,
    zero_mono_ns: u64,
    generation: u64,
) {
    let default = tracing::dispatcher::set_default(dispatch);
    let mut batch = String::with_capacity(256 * 1024);
    let mut encoded = String::with_capacity(344 * 1024);
    let mut unflushed = false;
    let mut last_flush = Instant::now();
    let mut busy = true;
    loop {
        let message = match messages.recv_timeout(if busy { FLUSH_DELAY } else { IDLE_DELAY }) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                // Collect what the traced threads recorded since their last handoff; it arrives as a
                // message, in order after every earlier handoff.
                busy = collect(generation);
                if unflushed && !busy {
                    guard.flush();
                    unflushed = false;
                    last_flush = Instant::now();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        busy = true;
        let mut waiting = Vec::new();
        let mut count = 0;
        batch.clear();
        batch.push('[');
        let mut next = Some(message);
        while let Some(message) = next {
            match message {
                Message::Flush(ack) => waiting.push(ack),
                Message::Records(records, text) => {
                    for record in records {
                        if count > 0 {
                            batch.push(',');
                        }
                        write_record(&mut batch, record, &text, zero_mono_ns);
                        count += 1;
                    }
                }
            }
            next = if count < MAX_BATCH { messages.try_recv().ok() } else { None };
        }
        batch.push(']');
        if count > 0 {
            // In base64: tracing-chrome writes a field as a JSON string, and escaping every quote of
            // the batch there and unescaping it again in the fixup cost more than all the rest.
            encoded.clear();
            BASE64.encode_string(batch.as_bytes(), &mut encoded);
            tracing::event!(target: "lynshim", Level::INFO, k = %kind::BATCH, p = %encoded);
            unflushed = true;
        }
        // While records keep coming the channel never times out: flush on the clock too.
        if !waiting.is_empty() || (unflushed && last_flush.elapsed() >= FLUSH_DELAY) {
            guard.flush();
            unflushed = false;
            last_flush = Instant::now();
        }
        for ack in waiting.into_iter().flatten() {
            let _ = ack.send(());
        }
    }
    drop(default);
    // tracing-chrome writes out what it has and joins its writer thread.
    drop(guard);
}

/// Hand the running session's pending records to the emitter; false when there were none.
fn collect(generation: u64) -> bool {
    let mut guard = session();
    match guard.as_mut() {
        Some(s) if s.generation == generation && !s.pending.is_empty() => {
            s.hand_off();
            true
        }
        _ => false,
    }
}

/// One record as an element of a batch, an array (keys would be most of the bytes):
/// `[kind, tid, ns since the zero, name, cat, args]` for spans, `[kind, tid, ns, null, null, null,
/// payload]` for lynshim's own events.
fn write_record(out: &mut String, record: Record, text: &str, zero_mono_ns: u64) {
    #[allow(clippy::cast_possible_wrap)]
    let rel_ns = |ns: u64| ns.wrapping_sub(zero_mono_ns) as i64;
    let (k, tid, ns) = match &record {
        Record::Begin { tid, ns, .. } => (kind::BEGIN, *tid, *ns),
        Record::End { tid, ns, .. } => (kind::END, *tid, *ns),
        Record::Own { tid, ns, kind, .. } => (*kind, *tid, *ns),
    };
    out.push('[');
    push_str(out, k);
    out.push(',');
    push_int(out, tid);
    out.push(',');
    push_int(out, rel_ns(ns));
    match record {
        Record::Begin { name, cat, args, .. } | Record::End { name, cat, args, .. } => {
            out.push(',');
            push_str(out, &name);
            out.push(',');
            push_str(out, &cat);
            if let Some(Text { start, len }) = args {
                out.push(',');
                out.push_str(text.get(start..start + len).unwrap_or("{}"));
            }
        }
        Record::Own { payload, .. } => {
            out.push_str(",null,null,null,");
            out.push_str(&payload.to_string());
        }
    }
    out.push(']');
}

/// The trace of the nearest traced ancestor in `dir`: `(path, pid)`. The preload library's record of
/// an ancestor counts too (make, sh), so a Python process started by make points at make. An ancestor
/// with several files — a Python process has its lynshim trace and its exec record, a process that
/// exec'd has a record per program — is pointed at by its lynshim trace, else by its latest record.
fn find_parent_trace(dir: &Path, own: &Path) -> Option<(String, u32)> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| files::is_trace_file_name(n))
        .collect();
    let own_name = own.file_name()?.to_str()?;
    procinfo::ancestors().into_iter().find_map(|(pid, start)| {
        let prefix = files::trace_file_prefix(pid, start);
        let candidates = names.iter().filter(|n| n.as_str() != own_name && n.starts_with(&prefix));
        candidates
            .map(|n| dir.join(n))
            .max_by_key(|path| {
                let head = file_head(path);
                let exec = head.contains(&format!("\"{}\":\"{}\"", arg::SOURCE, arg::SOURCE_EXEC));
                (!exec, head_wall_zero(&head))
            })
            .map(|path| (path.to_string_lossy().into_owned(), pid))
    })
}

/// The first few kilobytes of a trace file: enough for its `lynshim.process` event.
fn file_head(path: &Path) -> String {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    let _ = fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
    String::from_utf8_lossy(&head).into_owned()
}

/// The `wall_zero_ns` written in a file's head (0 when it is not there yet): which image came last.
fn head_wall_zero(head: &str) -> u64 {
    let key = format!("\"{}\":", arg::WALL_ZERO_NS);
    head.find(&key)
        .map(|i| &head[i + key.len()..])
        .map_or(0, |rest| rest.bytes().take_while(u8::is_ascii_digit).fold(0, |n, b| n * 10 + u64::from(b - b'0')))
}

impl Session {
    /// Microseconds from tracing-chrome's zero to a CLOCK_MONOTONIC instant (negative before it).
    #[allow(clippy::cast_precision_loss)]
    fn rel_us(&self, mono_ns: u64) -> f64 {
        (mono_ns as f64 - self.zero_mono_ns as f64) / 1000.0
    }

    fn emit(&mut self, kind: &'static str, payload: Value) {
        self.push(Record::Own { tid: tid(), ns: procinfo::monotonic_ns(), kind, payload });
    }

    fn push(&mut self, record: Record) {
        self.pending.push(record);
        if self.pending.len() >= HANDOFF_RECORDS {
            self.hand_off();
        }
    }

    fn hand_off(&mut self) {
        if !self.pending.is_empty() {
            let records = std::mem::replace(&mut self.pending, Vec::with_capacity(HANDOFF_RECORDS));
            let text = std::mem::replace(&mut self.text, String::with_capacity(HANDOFF_RECORDS * 64));
            // A send fails only once the emitter has stopped, when there is nowhere left to write.
            let _ = self.sender.send(Message::Records(records, text));
        }
    }

    fn push_text(&mut self, text: Option<&str>) -> Option<Text> {
        let text = text?;
        let start = self.text.len();
        self.text.push_str(text);
        Some(Text { start, len: text.len() })
    }

    fn announce_thread(&mut self, name: &str) {
        self.emit(kind::THREAD, json!({"tid": tid(), "name": name}));
        THREAD_GENERATION.with(|g| g.set(self.generation));
    }

    /// An RSS counter sample, labelled with the moment of the process it was taken at, if any.
    fn sample_rss(&mut self, at: Option<&str>) {
        if let Some(bytes) = procinfo::rss_bytes() {
            let mut payload = json!({"name": event::RSS, "value": bytes});
            if let Some(at) = at {
                payload[arg::AT] = at.into();
            }
            self.emit(kind::COUNTER, payload);
        }
    }
}

/// Is a session running in this process?
pub fn is_active() -> bool {
    session().is_some()
}

/// Is a session recording? Read without a lock, for the hot path of every traced call.
pub fn is_recording() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Path of the running session's trace file.
pub fn trace_path() -> Option<PathBuf> {
    session().as_ref().map(|s| s.path.clone())
}

/// Open a span on the calling thread, with `args` (a JSON object) recorded at its begin.
/// `thread_name` is asked for only when this thread is new to the session. Returns a token for
/// [`exit`]; 0 when tracing is off.
pub fn enter(name: Name, cat: Name, args: Option<&str>, thread_name: impl FnOnce() -> String) -> u64 {
    if !ACTIVE.load(Ordering::Relaxed) {
        return 0;
    }
    let new_thread_name = new_thread_name(thread_name);
    let ns = procinfo::monotonic_ns();
    let generation = {
        let mut guard = session();
        let Some(s) = guard.as_mut() else { return 0 };
        if let Some(name) = new_thread_name {
            s.announce_thread(&name);
        }
        // "After imports" is the first call the program makes once its imports are done, not one made
        // while a module is still importing (lynguine calls some of its own functions as it loads).
        if !s.moments.after_imports && category::WORK.contains(&&*cat) && !inside_import(s.generation) {
            s.moments.after_imports = true;
            s.sample_rss(Some(moment::AFTER_IMPORTS));
        }
        let args = s.push_text(args);
        s.push(Record::Begin { tid: tid(), ns, name: name.clone(), cat: cat.clone(), args });
        s.generation
    };
    STACK.with(|stack| {
        let (stack_generation, open) = &mut *stack.borrow_mut();
        if *stack_generation != generation {
            *stack_generation = generation;
            open.clear();
        }
        open.push(Open { name, cat });
        (generation << 32) | open.len() as u64
    })
}

/// Close the span `token` names, recording `end_args` (a JSON object) on it. Spans opened inside it
/// and still open are closed first; a token of an earlier session or already closed does nothing.
pub fn exit(token: u64, end_args: Option<&str>) {
    if token == 0 || token >> 32 != GENERATION.load(Ordering::Relaxed) {
        return;
    }
    let depth = usize::try_from(token & 0xffff_ffff).unwrap_or(usize::MAX);
    let ns = procinfo::monotonic_ns();
    let mut guard = session();
    let Some(s) = guard.as_mut() else { return };
    let tid = tid();
    STACK.with(|stack| {
        let (stack_generation, open) = &mut *stack.borrow_mut();
        if *stack_generation != s.generation || depth == 0 || open.len() < depth {
            return;
        }
        let mut end_args = end_args;
        // Which memory moments the spans ended here reach: noted as flags, sampled after their ends.
        let (mut config, mut data) = (false, false);
        while open.len() >= depth {
            let Some(span) = open.pop() else { break };
            let args = if open.len() + 1 == depth { end_args.take() } else { None };
            let args = s.push_text(args);
            config |= span.cat == category::CONFIG;
            data |= span.cat == category::READ || span.cat == category::DATAFRAME;
            s.push(Record::End { tid, ns, name: span.name, cat: span.cat, args });
        }
        s.moments_after(config, data);
    });
}

/// Is a span of category `import` open on this thread, in session `generation`?
fn inside_import(generation: u64) -> bool {
    STACK.with(|stack| {
        let (stack_generation, open) = &*stack.borrow();
        *stack_generation == generation && open.iter().any(|o| o.cat == category::IMPORT)
    })
}

impl Session {
    /// Sample the memory moments reached as a configuration call (`config`) or a data-loading call
    /// (`data`) ended, the first time each is, once the program's imports are done (a configuration
    /// read while lynguine loads is not the program's). Takes flags, not categories: this runs at the
    /// end of every traced call, which must not allocate for it.
    fn moments_after(&mut self, config: bool, data: bool) {
        if !self.moments.after_imports {
            return;
        }
        if config && !self.moments.after_config {
            self.moments.after_config = true;
            self.sample_rss(Some(moment::AFTER_CONFIG));
        }
        if data && !self.moments.after_data {
            self.moments.after_data = true;
            self.sample_rss(Some(moment::AFTER_DATA));
        }
    }
}

/// One of lynshim's own events (instant, counter, flow) on the calling thread.
pub fn emit(kind: &'static str, payload: Value, thread_name: impl FnOnce() -> String) {
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
    let current = GENERATION.load(Ordering::Relaxed);
    (current != 0 && THREAD_GENERATION.with(Cell::get) != current).then(thread_name)
}

/// Activation is over (the import hook, exit and fork handlers are installed): record lynshim's
/// activation from the moment its bootstrap began, so that it ends where the main program begins.
pub fn activated() {
    let now = procinfo::monotonic_ns();
    let mut guard = session();
    let Some(s) = guard.as_mut() else { return };
    if let Some(started) = s.activation_started_ns.take() {
        #[allow(clippy::cast_precision_loss)]
        let dur = now.saturating_sub(started) as f64 / 1000.0;
        let ts = s.rel_us(started);
        s.emit(kind::COMPLETE, json!({"name": event::SHIM_IMPORT, "cat": category::TRACER, "ts": ts, "dur": dur}));
    }
}

/// Sample RSS now (a counter event), labelled with a memory moment (see [`lynschema::moment`]) or not.
pub fn sample_rss(at: Option<&str>) {
    if let Some(s) = session().as_mut() {
        s.sample_rss(at);
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

/// Hand what has been traced so far to tracing-chrome, to be written to the file; waits (up to a
/// second) until the emitter has done so.
pub fn flush() {
    let (ack, acked) = mpsc::sync_channel(1);
    {
        let mut guard = session();
        let Some(s) = guard.as_mut() else { return };
        s.hand_off();
        if s.sender.send(Message::Flush(Some(ack))).is_err() {
            return;
        }
    }
    let _ = acked.recv_timeout(Duration::from_secs(1));
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
    let began_ns = procinfo::monotonic_ns();
    let running = session().take();
    let awaiting = match running {
        Some(mut s) => {
            ACTIVE.store(false, Ordering::SeqCst);
            // Spans still open on this thread belong to this session: close them into it first.
            // (After thread-local storage is gone this fails and there is nothing left to close.)
            let ns = procinfo::monotonic_ns();
            let tid = TID.try_with(Cell::get).ok().filter(|&t| t != 0).unwrap_or_else(procinfo::gettid);
            let _ = STACK.try_with(|stack| {
                let (stack_generation, open) = &mut *stack.borrow_mut();
                if *stack_generation == s.generation {
                    while let Some(span) = open.pop() {
                        s.pending.push(Record::End { tid, ns, name: span.name, cat: span.cat, args: None });
                    }
                }
                open.clear();
            });
            s.hand_off();
            let Session { sender, emitter, writer, exit_meta, zero_mono_ns, .. } = s;
            // The emitter drains the channel, then tracing-chrome writes out and stops.
            drop(sender);
            if let Some(emitter) = emitter {
                let _ = emitter.join();
            }
            let writing = (how == End::PythonExit).then(|| (began_ns, procinfo::monotonic_ns()));
            Some(Awaiting { writer, meta: exit_meta, zero_mono_ns, writing })
        }
        None => None,
    };
    let mut waiting = AWAITING_EXIT.lock().unwrap_or_else(PoisonError::into_inner);
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

fn lock(writer: &TraceWriter) -> MutexGuard<'_, Fixup<fs::File>> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// lynshim's writing at Python's exit and the interpreter's teardown after it (when Python's exit
/// came first), memory at exit, peak memory and the exit event, written directly, then the closing `]`.
fn write_exit(done: Awaiting, status: Option<i32>, signal: Option<i32>) {
    let Awaiting { writer, mut meta, zero_mono_ns, writing } = done;
    let fixup = &mut lock(&writer);
    let tid = procinfo::gettid();
    let now_ns = procinfo::monotonic_ns();
    #[allow(clippy::cast_precision_loss)]
    let rel_us = |ns: u64| (ns as f64 - zero_mono_ns as f64) / 1000.0;
    #[allow(clippy::cast_precision_loss)]
    let dur_us = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
    if let Some((began, written)) = writing {
        fixup.write_own(
            kind::COMPLETE,
            &json!({"name": event::SHIM_WRITE, "cat": category::TRACER,
                                                 "ts": rel_us(began), "dur": dur_us(began, written)}),
            tid,
        );
        fixup.write_own(
            kind::COMPLETE,
            &json!({"name": event::TEARDOWN, "cat": category::TEARDOWN,
                                                 "ts": rel_us(written), "dur": dur_us(written, now_ns)}),
            tid,
        );
    }
    if let Some(bytes) = procinfo::rss_bytes() {
        fixup.write_own(kind::COUNTER, &json!({"name": event::RSS, "value": bytes, arg::AT: moment::EXIT}), tid);
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

/// In a child after `fork`: forget the parent's session without touching its file, its channel or
/// its threads (which do not exist here), and start the child's own.
pub fn after_fork_in_child(info: impl FnOnce(Option<String>) -> StartInfo) {
    // The forking thread's id is the parent's: ask again.
    TID.with(|t| t.set(0));
    let parent = session().take();
    let Some(parent) = parent else { return };
    ACTIVE.store(false, Ordering::SeqCst);
    let dir = parent.path.parent().map(Path::to_path_buf);
    let forked_from = parent.path.to_string_lossy().into_owned();
    // Dropping it would join threads that only exist in the parent: never drop it here.
    std::mem::forget(parent);
    if let Some(waiting) = AWAITING_EXIT.lock().unwrap_or_else(PoisonError::into_inner).take() {
        std::mem::forget(waiting);
    }
    STACK.with(|stack| std::mem::forget(std::mem::take(&mut *stack.borrow_mut())));
    if let Some(dir) = dir {
        start(&dir, info(Some(forked_from)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch a session writes, through the real tracing-chrome, into a fixup: every record comes out
    /// with its own time and thread, and the fixup finds the batch without parsing the line.
    #[test]
    fn batches_reach_the_file_through_tracing_chrome() {
        let fixup = Arc::new(Mutex::new(Fixup::new(Vec::new(), 42, 0, 0.0, Box::new(|_| {}))));
        let (dispatch, guard) = chrome_dispatch(SharedFixup(Arc::clone(&fixup)));
        let text = r#"{"field":"title"}{"found":true}"#.to_owned();
        let records = vec![
            Record::Begin {
                tid: 7,
                ns: 1_000,
                name: "f".into(),
                cat: "field".into(),
                args: Some(Text { start: 0, len: 17 }),
            },
            Record::End {
                tid: 7,
                ns: 3_500,
                name: "f".into(),
                cat: "field".into(),
                args: Some(Text { start: 17, len: 14 }),
            },
            Record::Own { tid: 8, ns: 4_000, kind: kind::COUNTER, payload: json!({"name": "rss", "value": 5}) },
        ];
        let mut batch = String::from("[");
        for (i, record) in records.into_iter().enumerate() {
            if i > 0 {
                batch.push(',');
            }
            write_record(&mut batch, record, &text, 0);
        }
        batch.push(']');
        let encoded = BASE64.encode(&batch);
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::event!(target: "lynshim", Level::INFO, k = %kind::BATCH, p = %encoded);
        });
        drop(guard);
        drop(dispatch);
        let mut fixup = Arc::try_unwrap(fixup).ok().expect("writer thread ended").into_inner().expect("lock");
        fixup.close();
        assert_eq!(fixup.batches_parsed_in_full(), 0);
        let out: Vec<Value> = serde_json::from_slice(&fixup.into_inner()).expect("valid JSON");
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            json!({"ph": "B", "name": "f", "cat": "field", "pid": 42, "tid": 7, "ts": 1.0,
                                   "args": {"field": "title"}})
        );
        assert_eq!(out[1]["args"], json!({"found": true}));
        assert_eq!(out[1]["ts"], 3.5);
        assert_eq!((out[2]["ph"].as_str(), out[2]["tid"].as_u64()), (Some("C"), Some(8)));
    }
}
