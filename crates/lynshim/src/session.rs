//! One tracing session's state and the hot path of every traced call: the span stacks, the records
//! waiting for the emitter, and the functions the rest of lynshim records through.
//!
//! A traced call must cost well under a microsecond (issue #17), so the traced thread does not create
//! `tracing` spans (see [`crate::emitter`] for why and for where the records go). [`enter`] and [`exit`]
//! read the clock ([`crate::clock`]), take the session lock (a spin lock, see `SessionLock`) and append
//! a [`Record`] to the session's list. The lock is never held across Python code, and across a system
//! call only every [`HANDOFF_RECORDS`] records, when the list goes to the emitter (a channel send that
//! may wake it), and at the calls that reach a memory moment (an RSS sample reads `/proc`). When the
//! writer has fallen far behind (a traced function called in a tight loop), the thread then waits for
//! it, holding no lock, rather than have records dropped ([`wait_for_writer`]). Each thread
//! keeps the names of its open spans on a stack and Python holds a token (generation, depth) for each,
//! so a span opened before a fork or a `stop()` can never close into the next session.
//!
//! The other jobs of a session live beside this one: the batch format in [`crate::batch`], the emitter
//! thread in [`crate::emitter`], the file's layout in [`crate::fixup`], starting, ending and forking in
//! [`crate::lifecycle`] (re-exported here), the parent trace in [`crate::parent_trace`].

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lynschema::{arg, category, event, moment};
use serde_json::{Map, Value};
use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;

use crate::batch::{Batches, Name, OwnEvent, Record, Text};
use crate::clock;
use crate::emitter::Message;
use crate::fixup::Fixup;
pub use crate::lifecycle::{after_fork_in_child, end, start, End, StartInfo};
use crate::procinfo;
use crate::tracefile::TraceFile;

/// The traced threads hand the list of records to the emitter when it holds this many; the emitter
/// collects shorter lists itself, so that a traced call never waits for a system call to wake it.
/// Each handoff wakes the emitter and then tracing-chrome's writer: fewer, larger handoffs cost the
/// process less, and the lists are reused (see [`Batches`]), so they stay small enough (about 100
/// KiB) not to weigh on the memory the trace reports.
const HANDOFF_RECORDS: usize = 1024;
/// Bytes of args text per record that the text list starts with room for.
const HANDOFF_TEXT_BYTES: usize = 64;

/// The trace file, shared by tracing-chrome's writer thread and the exit handler.
pub(crate) type TraceWriter = Arc<Mutex<Fixup<TraceFile>>>;

pub(crate) struct Session {
    /// The traced threads' end of the channel; dropping it lets the emitter finish.
    pub(crate) sender: Sender<Message>,
    /// Where written lists come back to be filled again.
    batches: Batches,
    /// Records not handed to the emitter yet, oldest first.
    pending: Vec<Record>,
    /// The args of the pending records, one after another, written here as each record is made (see
    /// [`Args`]) rather than kept as a string per record: memory allocated on the traced thread and
    /// freed on another defeats the allocator's per-thread caches, and a buffer per call to copy from
    /// cost a thread-local lookup and a copy more.
    text: String,
    pub(crate) emitter: Option<JoinHandle<()>>,
    /// The file, shared with tracing-chrome's writer thread; ours again once that thread has ended.
    pub(crate) writer: TraceWriter,
    path: PathBuf,
    pub(crate) generation: u64,
    /// The process the session belongs to: a child after `fork` holds a copy of its parent's until
    /// [`forget_parent_session`], which only the parent may end.
    pub(crate) pid: u32,
    /// CLOCK_MONOTONIC at tracing-chrome's zero.
    pub(crate) zero_mono_ns: u64,
    /// Metadata added late (versions of libraries imported after activation), written at exit.
    pub(crate) exit_meta: Map<String, Value>,
    /// Memory moments already sampled (see [`Moments`]).
    moments: Moments,
    /// CLOCK_MONOTONIC when lynshim's bootstrap began, until [`activated`] records the activation span.
    pub(crate) activation_started_ns: Option<u64>,
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

/// The session lock: a spin lock, rather than `std::sync::Mutex`.
///
/// Every traced call takes it twice, and `std`'s futex lock pays an atomic read-modify-write to unlock
/// (a swap, to learn whether anyone waits) besides the one to lock; `perf annotate` put most of the
/// session's samples on those two instructions (issue #17). This one unlocks with a plain release
/// store. It is held for a few hundred nanoseconds at most (longer only at a handoff or an RSS sample),
/// taken by the traced threads (which mostly hold the GIL, so rarely at once) and by the emitter once
/// per [`FLUSH_DELAY`](crate::emitter::FLUSH_DELAY) or so: a waiter seldom waits, and calls
/// `sched_yield` between tries when it does. `fork` holds it (see [`hold_lock_across_fork`]), so a child
/// never starts with it held by a thread that does not exist there.
type SessionLock = SpinMutex<Option<Session>, Yield>;

static SESSION: SessionLock = SpinMutex::new(None);
pub(crate) static GENERATION: AtomicU64 = AtomicU64::new(0);
/// A session is running: read without the lock by the hot path of every traced call.
pub(crate) static ACTIVE: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);
/// The writer has fallen [`crate::batch::WRITER_BEHIND_LISTS`] lists behind: the next traced thread to
/// let go of the session lock waits for it ([`wait_for_writer`]). Read without the lock by every span's
/// begin and end.
static WRITER_BEHIND: AtomicBool = AtomicBool::new(false);

/// An open span on this thread: what its end record repeats.
struct Open {
    name: Name,
    cat: Name,
}

/// What a thread keeps for the sessions it records into. One thread-local rather than three: in a
/// shared library every access to a thread-local is a call (`__tls_get_addr`), and the hot path made
/// three per span begin.
struct ThreadState {
    /// The open spans of this thread, and the generation of the session they belong to.
    open: RefCell<(u64, Vec<Open>)>,
    /// Generation in which this thread announced its OS tid and name.
    announced: Cell<u64>,
    /// This thread's OS id (asked once: `gettid` is a system call).
    tid: Cell<u64>,
}

impl ThreadState {
    fn tid(&self) -> u64 {
        if self.tid.get() == 0 {
            self.tid.set(procinfo::gettid());
        }
        self.tid.get()
    }

    /// The thread's name when it has not been announced in the current session yet. Asked for before
    /// the session lock is taken: naming a thread may run Python code, which may switch threads.
    fn new_name(&self, thread_name: impl FnOnce() -> String) -> Option<String> {
        let current = GENERATION.load(Ordering::Relaxed);
        (current != 0 && self.announced.get() != current).then(thread_name)
    }

    /// Is a span of category `import` open on this thread, in session `generation`?
    fn inside_import(&self, generation: u64) -> bool {
        let (open_generation, open) = &*self.open.borrow();
        *open_generation == generation && open.iter().any(|o| o.cat == category::IMPORT)
    }
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState { open: RefCell::new((0, Vec::new())), announced: Cell::new(0), tid: Cell::new(0) }
    };
}

pub(crate) fn session() -> SpinMutexGuard<'static, Option<Session>> {
    SESSION.lock()
}

/// Make every `fork` of this process take the session lock first and release it after, in the parent
/// and in the child (`pthread_atfork`, registered once). Without it, a fork made while another thread
/// held the lock (the emitter collecting, say) would leave the child's lock held for ever, and the
/// child's first traced call, whatever runs it first (a GC callback, another library's fork hook),
/// would spin on it. Holding it across the fork also means the child sees no half-made change.
/// The forking thread never holds it already: it is never held across Python code, or across a call
/// that could fork.
pub(crate) fn hold_lock_across_fork() {
    extern "C" fn take() {
        std::mem::forget(SESSION.lock());
    }
    extern "C" fn release() {
        // SAFETY: `take` locked it in this thread, just before the fork, and forgot the guard.
        unsafe { SESSION.force_unlock() };
    }
    extern "C" fn release_in_child() {
        release();
        crate::lifecycle::forget_parent_ending();
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: the handlers are plain functions of this library, which is never unloaded (Python
        // does not unload extension modules). It fails only for want of memory, and then forks are
        // as they would be without it.
        let _ = unsafe { libc::pthread_atfork(Some(take), Some(release), Some(release_in_child)) };
    });
}

fn tid() -> u64 {
    THREAD.with(ThreadState::tid)
}

/// Print one warning per process on stderr; tracing problems never say more than that.
pub fn warn_once(message: &str) {
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!("lynshim: {message}; tracing is off for this process, the program runs on unchanged");
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

/// What a record carries as its args: a JSON object, written straight into the session's text (see
/// [`Session`]'s `text`), under the session lock. Writing must not run Python code (which could switch
/// threads while the lock is held): describe values first, then write.
pub trait Args {
    /// Append the args, a JSON object, to `out`; nothing when there are none.
    fn write_to(self, out: &mut String);

    /// As a span's end args: known to name none of the keys of its begin's args, so that the two can
    /// make one object (see [`exit`]). False when not known: the writer then looks.
    fn disjoint_from_begin(&self) -> bool {
        false
    }
}

/// Args already written as JSON text (or none).
impl Args for Option<&str> {
    fn write_to(self, out: &mut String) {
        if let Some(text) = self {
            out.push_str(text);
        }
    }

    /// No args name no key.
    fn disjoint_from_begin(&self) -> bool {
        self.is_none()
    }
}

/// Open a span on the calling thread, with `args` recorded at its begin.
/// `thread_name` is asked for only when this thread is new to the session. Returns a token for
/// [`exit`]; 0 when tracing is off.
pub fn enter(name: Name, cat: Name, args: impl Args, thread_name: impl FnOnce() -> String) -> u64 {
    if !ACTIVE.load(Ordering::Relaxed) {
        return 0;
    }
    THREAD.with(|thread| {
        let new_thread_name = thread.new_name(thread_name);
        let ns = clock::now();
        let tid = thread.tid();
        let generation = {
            let mut guard = session();
            let Some(s) = guard.as_mut() else { return 0 };
            if let Some(name) = new_thread_name {
                s.announce_thread(&name);
            }
            // "After imports" is the first call the program makes once its imports are done, not one
            // made while a module is still importing (lynguine calls some of its own functions as it
            // loads).
            if !s.moments.after_imports && category::WORK.contains(&&*cat) && !thread.inside_import(s.generation) {
                s.moments.after_imports = true;
                s.sample_rss(Some(moment::AFTER_IMPORTS));
            }
            let args = s.push_args(args);
            s.push(Record::Begin { tid, ns, name: name.clone(), cat: cat.clone(), args });
            s.generation
        };
        let token = {
            let (open_generation, open) = &mut *thread.open.borrow_mut();
            if *open_generation != generation {
                *open_generation = generation;
                open.clear();
            }
            open.push(Open { name, cat });
            (generation << 32) | open.len() as u64
        };
        wait_if_writer_behind();
        token
    })
}

/// Close the span `token` names, recording `end_args` on it. Spans opened inside it and still open
/// are closed first; a token of an earlier session or already closed does nothing.
pub fn exit(token: u64, end_args: impl Args) {
    if token == 0 || token >> 32 != GENERATION.load(Ordering::Relaxed) {
        return;
    }
    let depth = usize::try_from(token & 0xffff_ffff).unwrap_or(usize::MAX);
    let ns = clock::now();
    THREAD.with(|thread| {
        let tid = thread.tid();
        let mut guard = session();
        let Some(s) = guard.as_mut() else { return };
        let (open_generation, open) = &mut *thread.open.borrow_mut();
        if *open_generation != s.generation || depth == 0 || open.len() < depth {
            return;
        }
        let mut end_args = Some(end_args);
        // Which memory moments the spans ended here reach: noted as flags, sampled after their ends.
        let (mut config, mut data) = (false, false);
        while open.len() >= depth {
            let Some(span) = open.pop() else { break };
            let args = if open.len() + 1 == depth { end_args.take() } else { None };
            let disjoint = args.as_ref().is_none_or(Args::disjoint_from_begin);
            let args = args.and_then(|args| s.push_args(args));
            config |= span.cat == category::CONFIG;
            data |= span.cat == category::READ || span.cat == category::DATAFRAME;
            s.push_end(tid, ns, span, args, disjoint);
        }
        s.moments_after(config, data);
    });
    wait_if_writer_behind();
}

/// After a span's begin or end, holding no lock: wait for the writer if it has fallen behind (a relaxed
/// load on every call; the wait itself is rare).
#[inline]
fn wait_if_writer_behind() {
    if WRITER_BEHIND.load(Ordering::Relaxed) {
        wait_for_writer();
    }
}

/// Wait, holding no lock, until the writer has caught up (see [`Batches::wait_for_writer`]), and record
/// that this thread waited, with how long: the wait is lynshim's, not the program's, though it falls
/// inside the program's spans. Losing the oldest records instead, as lynshim did, hid both the records
/// and the cost of writing them. Every caller holds the GIL (spans are opened and closed from Python
/// and from lynshim's hooks): it is released for the wait, as for blocking I/O, so that the program's
/// other threads run on meanwhile; neither the emitter nor the writer needs it.
#[cold]
fn wait_for_writer() {
    WRITER_BEHIND.store(false, Ordering::Relaxed);
    let Some(batches) = session().as_ref().map(|s| s.batches.clone()) else { return };
    let wait = || batches.wait_for_writer();
    // While the interpreter shuts down it cannot be attached to: the thread waits holding what it holds.
    let Some((waited, behind)) = pyo3::Python::try_attach(|py| py.detach(wait)).unwrap_or_else(wait) else { return };
    if let Some(s) = session().as_mut() {
        let mut args = Map::new();
        #[allow(clippy::cast_precision_loss)]
        args.insert(arg::WAITED_US.into(), Value::from(waited.as_nanos() as f64 / 1000.0));
        args.insert(arg::LISTS_BEHIND.into(), Value::from(behind));
        s.record(OwnEvent::Instant { name: event::WAITED_FOR_WRITER.into(), cat: category::TRACER.into(), args });
    }
}

/// One of lynshim's own events, recorded on the calling thread.
pub fn record(event: OwnEvent, thread_name: impl FnOnce() -> String) {
    let new_thread_name = THREAD.with(|thread| thread.new_name(thread_name));
    let mut guard = session();
    if let Some(s) = guard.as_mut() {
        if let Some(name) = new_thread_name {
            s.announce_thread(&name);
        }
        s.record(event);
    }
}

/// Activation is over (the import hook, exit and fork handlers are installed): record lynshim's
/// activation from the moment its bootstrap began, so that it ends where the main program begins.
pub fn activated() {
    let now = procinfo::monotonic_ns();
    let mut guard = session();
    let Some(s) = guard.as_mut() else { return };
    if let Some(started) = s.activation_started_ns.take() {
        #[allow(clippy::cast_precision_loss)]
        let dur_us = now.saturating_sub(started) as f64 / 1000.0;
        let start_us = s.rel_us(started);
        s.record(OwnEvent::Complete {
            name: event::SHIM_ACTIVATION.into(),
            cat: category::TRACER.into(),
            start_us,
            dur_us,
            args: Map::new(),
        });
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

/// For the emitter's clock: hand session `generation`'s pending records to the emitter; false when
/// there were none (or that session is over).
pub(crate) fn collect(generation: u64) -> bool {
    let mut guard = session();
    match guard.as_mut() {
        Some(s) if s.generation == generation && !s.pending.is_empty() => {
            s.hand_off();
            true
        }
        _ => false,
    }
}

/// In a child after `fork`: forget the parent's session — its channel and threads do not exist here,
/// so it must never be dropped — and this thread's open spans. Returns the parent's trace path.
pub(crate) fn forget_parent_session() -> Option<PathBuf> {
    // The forking thread's id is the parent's: ask again.
    THREAD.with(|thread| thread.tid.set(0));
    let parent = session().take()?;
    ACTIVE.store(false, Ordering::SeqCst);
    let path = parent.path.clone();
    std::mem::forget(parent);
    THREAD.with(|thread| std::mem::forget(std::mem::take(&mut *thread.open.borrow_mut())));
    Some(path)
}

impl Session {
    pub(crate) fn new(
        sender: Sender<Message>,
        batches: Batches,
        emitter: JoinHandle<()>,
        writer: TraceWriter,
        path: PathBuf,
        generation: u64,
        zero_mono_ns: u64,
    ) -> Self {
        Self {
            sender,
            batches,
            pending: Vec::with_capacity(HANDOFF_RECORDS),
            text: String::with_capacity(HANDOFF_RECORDS * HANDOFF_TEXT_BYTES),
            emitter: Some(emitter),
            writer,
            path,
            generation,
            pid: std::process::id(),
            zero_mono_ns,
            exit_meta: Map::new(),
            moments: Moments::default(),
            activation_started_ns: None,
        }
    }

    /// Microseconds from tracing-chrome's zero to a CLOCK_MONOTONIC instant (negative before it).
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn rel_us(&self, mono_ns: u64) -> f64 {
        (mono_ns as f64 - self.zero_mono_ns as f64) / 1000.0
    }

    /// One of lynshim's own events on the calling thread, timed now.
    pub(crate) fn record(&mut self, event: OwnEvent) {
        self.push(Record::Own { tid: tid(), ns: clock::now(), event: Box::new(event) });
    }

    fn push(&mut self, record: Record) {
        self.pending.push(record);
        if self.pending.len() >= HANDOFF_RECORDS {
            self.hand_off();
        }
    }

    pub(crate) fn hand_off(&mut self) {
        if !self.pending.is_empty() {
            let (records, text) = self.batches.spare().unwrap_or_else(|| {
                (Vec::with_capacity(HANDOFF_RECORDS), String::with_capacity(HANDOFF_RECORDS * HANDOFF_TEXT_BYTES))
            });
            let records = std::mem::replace(&mut self.pending, records);
            let text = std::mem::replace(&mut self.text, text);
            // A send fails only once the emitter has stopped, when there is nowhere left to write.
            let _ = self.sender.send(Message::Records(records, text));
            if self.batches.handed_off() {
                // Have the emitter pass on what it has now, rather than at its next round, so that the
                // writer sees the lines it is waiting for; the traced thread waits once it lets go of the lock.
                let _ = self.sender.send(Message::Flush(None));
                WRITER_BEHIND.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The end of `span`. When the last record is this thread's begin — nothing was recorded since,
    /// on any thread, nor handed off (the begin is this span's: a span opened since would have been
    /// closed first, leaving its end last) — and the end args are known to name none of its keys, the two
    /// become one [`Record::Whole`]: the writer writes it as the complete event it would have made of the
    /// pair, without looking for the pair or comparing their keys, and a traced call adds one record to
    /// the list, not two (about half the spans: leaf calls, leaf imports).
    fn push_end(&mut self, tid: u64, ns: u64, span: Open, end_args: Option<Text>, disjoint: bool) {
        if disjoint {
            if let Some(last) = self.pending.last_mut() {
                if let Record::Begin { tid: begun, ns: begin_ns, name, cat, args } = last {
                    if *begun == tid {
                        // In place: the record is not moved out of the list and back. What is left of the
                        // begin once its names are taken holds nothing to free: forgotten, not dropped.
                        let (name, cat) = (std::mem::take(name), std::mem::take(cat));
                        let whole = Record::Whole { tid, ns: *begin_ns, end_ns: ns, name, cat, args: *args, end_args };
                        std::mem::forget(std::mem::replace(last, whole));
                        return;
                    }
                }
            }
        }
        self.push(Record::End { tid, ns, name: span.name, cat: span.cat, args: end_args });
    }

    /// Write `args` into the list's text; where they are, if anywhere. Args that would end past what
    /// a [`Text`] holds (4 GiB of args in one list: never, in practice) are cut off again, unrecorded.
    fn push_args(&mut self, args: impl Args) -> Option<Text> {
        let start = self.text.len();
        args.write_to(&mut self.text);
        let text = u32::try_from(start)
            .ok()
            .zip(u32::try_from(self.text.len() - start).ok())
            .filter(|(start, len)| *len > 0 && start.checked_add(*len).is_some());
        if text.is_none() {
            self.text.truncate(start);
        }
        text.map(|(start, len)| Text { start, len })
    }

    pub(crate) fn announce_thread(&mut self, name: &str) {
        self.record(OwnEvent::Thread { tid: tid(), name: name.to_owned() });
        THREAD.with(|thread| thread.announced.set(self.generation));
    }

    /// An RSS counter sample, labelled with the moment of the process it was taken at, if any.
    pub(crate) fn sample_rss(&mut self, at: Option<&str>) {
        if let Some(bytes) = procinfo::rss_bytes() {
            self.record(OwnEvent::Counter { name: event::RSS.into(), bytes, at: at.map(|at| at.to_owned().into()) });
        }
    }

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

    /// Close the spans still open on the calling thread into this session, as it ends. After
    /// thread-local storage is gone (the exit handler) there is nothing left to close.
    pub(crate) fn close_open_spans(&mut self) {
        let ns = clock::now();
        let tid = THREAD.try_with(|thread| thread.tid.get()).ok().filter(|&t| t != 0).unwrap_or_else(procinfo::gettid);
        let _ = THREAD.try_with(|thread| {
            let (open_generation, open) = &mut *thread.open.borrow_mut();
            if *open_generation == self.generation {
                while let Some(span) = open.pop() {
                    self.pending.push(Record::End { tid, ns, name: span.name, cat: span.cat, args: None });
                }
            }
            open.clear();
        });
    }
}
