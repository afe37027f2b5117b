//! The shim's internal batch protocol: what the traced threads record ([`Record`], lynshim's own events
//! as [`OwnEvent`]), how a batch of records travels from the emitter thread to the file's writer
//! ([`Batches`]), and how the writer recognises a batch's `tracing` event ([`batch_id`]).
//!
//! Every batch still goes through `tracing` and tracing-chrome, one `tracing` event per batch: the
//! project writes its traces through them, tracing-chrome's writer thread does the file I/O, and the
//! order of its lines is the order the batches are written in. Around tracing-chrome, though, the
//! records themselves travel by a side channel: the emitter files the batch under a number in
//! [`Batches`] and the `tracing` event carries only that number (field [`F_PAYLOAD`]); the writer behind
//! tracing-chrome ([`crate::fixup`]) takes the batch back by the number it finds in the line. Sending
//! the records through the event instead — as text, which tracing-chrome escape-checks byte by byte and
//! the writer parses again — cost the process more than the traced calls themselves (issue #17).
//! A batch never leaves the process, so it needs no serialised form: the writer reads the typed records.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::Level;

use crate::clock::Converter;

/// Callsite field of lynshim's `tracing` events: which kind of event this is ([`kind::BATCH`]).
pub const F_KIND: &str = "k";
/// Callsite field of lynshim's `tracing` events: the batch's number in [`Batches`].
pub const F_PAYLOAD: &str = "p";

/// Kinds of lynshim's `tracing` events (field [`F_KIND`]).
pub mod kind {
    /// A batch of records, by its number in [`super::Batches`].
    pub const BATCH: &str = "batch";
}

/// A span's name or category: borrowed from a probe (which lives as long as the process) or owned.
pub type Name = Cow<'static, str>;

/// A stretch of a batch's text (see [`Batch::text`]): the args of one record, a JSON object.
///
/// In 32 bits (a list's text is a few hundred KiB; args that would end past 4 GiB into it are not
/// recorded, see `Session::push_args`): every record carries one or two, and a record is copied into
/// the list at each traced call, so it is kept small.
#[derive(Clone, Copy, Debug)]
pub struct Text {
    pub start: u32,
    pub len: u32,
}

/// What a traced thread records. Times (`ns`) are readings of [`crate::clock::now`], which the writer
/// converts with its batch's [`Batch::clock`]; `tid` is the OS thread id.
#[derive(Debug)]
pub enum Record {
    /// A span begins, with its args at the begin.
    Begin { tid: u64, ns: u64, name: Name, cat: Name, args: Option<Text> },
    /// The innermost open span of thread `tid` ends, with its args at the end.
    End { tid: u64, ns: u64, name: Name, cat: Name, args: Option<Text> },
    /// A span that ended with nothing recorded since its begin, whose end args name none of its begin
    /// args' keys: its begin and its end in one record (see `session::exit`), from `ns` to `end_ns`.
    Whole { tid: u64, ns: u64, end_ns: u64, name: Name, cat: Name, args: Option<Text>, end_args: Option<Text> },
    /// One of lynshim's own events (rare: boxed, so that span records stay small to copy).
    Own { tid: u64, ns: u64, event: Box<OwnEvent> },
}

/// Which end of a flow arrow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEnd {
    /// The client side of a request, where the arrow starts.
    Out,
    /// The server side, where it ends.
    In,
}

/// lynshim's own events, besides span begins and ends.
#[derive(Debug)]
pub enum OwnEvent {
    /// A thread's name, announced the first time it records something in a session.
    Thread { tid: u64, name: String },
    /// The process's name, labels and metadata (at the start of a session).
    Process { name: String, labels: String, meta: Map<String, Value> },
    /// The process exits: exit status, peak memory and late metadata.
    Exit { meta: Map<String, Value> },
    /// A memory sample in bytes, labelled with the moment it was taken at (a [`lynschema::moment`]).
    Counter { name: Name, bytes: u64, at: Option<Name> },
    /// A span timed by its caller: start in microseconds from the session's zero, duration.
    Complete { name: Name, cat: Name, start_us: f64, dur_us: f64, args: Map<String, Value> },
    /// An instant event on the recording thread.
    Instant { name: String, cat: String, args: Map<String, Value> },
    /// One end of a flow arrow joining a client request to the server span handling it.
    Flow { end: FlowEnd, id: u64, name: String, cat: String },
}

/// Records in the order they were recorded, with their args' text, one handoff after another, and the
/// anchors that turn their times into CLOCK_MONOTONIC nanoseconds (read by the emitter once every record
/// of the batch was made; the writer converts each time as it writes it, when it reads the record anyway).
#[derive(Debug, Default)]
pub struct Batch {
    pub parts: Vec<(Vec<Record>, String)>,
    pub clock: Converter,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(|(records, _)| records.is_empty())
    }
}

/// The side channel from the emitter to the writer: batches filed under a number until the writer
/// meets that number in tracing-chrome's output. One per session (a forked child starts its own).
///
/// It also brings the lists back: the writer returns a batch's emptied lists ([`Batches::recycle`])
/// and the traced threads record into them again ([`Batches::spare`]). Memory already touched and
/// allocated once costs the traced thread less than a fresh allocation per handoff (page faults,
/// and a free on another thread than the one that allocated, which defeats the allocator's caches).
#[derive(Clone, Default)]
pub struct Batches(Arc<BatchesInner>);

/// Emptied lists kept for reuse, at most: enough for the one being filled while another is written.
const SPARE_LISTS: usize = 2;

/// Batches filed and not taken, at most. The writer takes every batch up to the one whose line it meets
/// ([`Batches::take_through`]), and the traced threads wait for it to catch up long before this many
/// are filed ([`WRITER_BEHIND_LISTS`]), so they only pile up if it recognises no line at all (a
/// tracing-chrome that writes lines in a shape [`batch_id`] cannot read) or cannot keep up even so:
/// then the oldest go, counted, rather than the host program's memory (a batch holds up to a few
/// thousand records).
const MAX_FILED: usize = 256;

/// Lists of records handed off and not yet written beyond which the traced threads wait for the writer
/// ([`Batches::wait_for_writer`]): 64 lists of up to 1024 records. A program that records faster than the
/// writer can write (a traced function called millions of times a second; a lamd build records a few
/// thousand spans a process) would otherwise have its oldest records dropped at [`MAX_FILED`], and the
/// cost of writing them would vanish from what the process pays for its trace (it did, in `make
/// bench`'s per-call loops, until issue #17's review).
pub const WRITER_BEHIND_LISTS: usize = 64;
/// A waiting thread goes on once the writer is down to this many lists.
const WRITER_CAUGHT_UP_LISTS: usize = WRITER_BEHIND_LISTS / 2;
/// The longest a thread waits for the writer. A writer that cannot write half of its backlog in this
/// time is stuck (a file system that hangs, lines it does not recognise): the session stops waiting
/// for it, so that the program runs on at its own pace, and drops at [`MAX_FILED`] as before.
const WRITER_WAIT_LIMIT: Duration = Duration::from_secs(1);
/// How often a waiting thread looks at the backlog again.
const WRITER_WAIT_STEP: Duration = Duration::from_micros(100);

#[derive(Default)]
struct BatchesInner {
    next: AtomicU64,
    /// By number, which is the order they were sent in.
    filed: Mutex<BTreeMap<u64, Batch>>,
    /// Batches dropped at [`MAX_FILED`].
    dropped: AtomicU64,
    spare: Mutex<Vec<(Vec<Record>, String)>>,
    /// Lists of records handed off by the traced threads and not yet written (or dropped).
    behind: AtomicUsize,
    /// A wait for the writer ran out of time: the session no longer waits for it.
    gave_up_waiting: AtomicBool,
}

impl Batches {
    /// Send `batch` through `tracing` (the current default dispatcher, tracing-chrome's): file it and
    /// emit one `tracing` event carrying its number.
    pub fn send(&self, batch: Batch) {
        let id = self.file(batch);
        tracing::event!(target: "lynshim", Level::INFO, k = %kind::BATCH, p = id);
    }

    /// File `batch` for the writer; its number.
    pub fn file(&self, batch: Batch) -> u64 {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        let mut filed = self.0.filed.lock().unwrap_or_else(PoisonError::into_inner);
        filed.insert(id, batch);
        if filed.len() > MAX_FILED {
            if let Some((_, dropped)) = filed.pop_first() {
                self.written(dropped.parts.len());
            }
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
        id
    }

    /// A traced thread handed a list of records off: should the traced threads now wait for the writer
    /// ([`Self::wait_for_writer`])?
    pub fn handed_off(&self) -> bool {
        let behind = self.0.behind.fetch_add(1, Ordering::Relaxed) + 1;
        behind > WRITER_BEHIND_LISTS && !self.0.gave_up_waiting.load(Ordering::Relaxed)
    }

    /// `lists` handed off earlier are written (or dropped).
    fn written(&self, lists: usize) {
        let _ = self.0.behind.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(lists)));
    }

    /// Lists of records handed off and not yet written.
    pub fn behind(&self) -> usize {
        self.0.behind.load(Ordering::Relaxed)
    }

    /// Wait until the writer is down to [`WRITER_CAUGHT_UP_LISTS`] lists, or [`WRITER_WAIT_LIMIT`] has
    /// passed (then the session stops waiting for it). Called by a traced thread holding no lock of
    /// lynshim's (the emitter takes the session lock to collect records) and, where it can let go of it,
    /// not the GIL either (see `session::wait_for_writer`): neither the emitter nor the writer needs them.
    /// Returns how long it waited and how many lists were behind, if it waited at all.
    pub fn wait_for_writer(&self) -> Option<(Duration, usize)> {
        let behind = self.behind();
        if behind <= WRITER_CAUGHT_UP_LISTS || self.0.gave_up_waiting.load(Ordering::Relaxed) {
            return None;
        }
        let started = Instant::now();
        while self.behind() > WRITER_CAUGHT_UP_LISTS {
            if started.elapsed() >= WRITER_WAIT_LIMIT {
                self.0.gave_up_waiting.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(WRITER_WAIT_STEP);
        }
        Some((started.elapsed(), behind))
    }

    /// The batch filed under `id` and every batch filed before it and not taken, in the order they were
    /// sent, once each: the writer takes them as it meets `id`'s line. A batch before `id` still here
    /// is one whose line the writer did not recognise; its records are written all the same, in order.
    pub fn take_through(&self, id: u64) -> Vec<Batch> {
        let mut filed = self.0.filed.lock().unwrap_or_else(PoisonError::into_inner);
        let later = filed.split_off(&(id + 1));
        std::mem::replace(&mut *filed, later).into_values().collect()
    }

    /// Every batch still filed, in order (at the end of the session, when no line is still to come).
    pub fn take_all(&self) -> Vec<Batch> {
        std::mem::take(&mut *self.0.filed.lock().unwrap_or_else(PoisonError::into_inner)).into_values().collect()
    }

    /// How many batches were dropped at [`MAX_FILED`].
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }

    /// Keep a written batch's lists for the traced threads to fill again (every list the writer has
    /// written comes here).
    pub fn recycle(&self, mut records: Vec<Record>, mut text: String) {
        self.written(1);
        // Emptied before the lock is taken: the traced threads take it at a handoff.
        records.clear();
        text.clear();
        let mut spare = self.0.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < SPARE_LISTS {
            spare.push((records, text));
        }
    }

    /// Emptied lists to record into, when the writer has returned some.
    pub fn spare(&self) -> Option<(Vec<Record>, String)> {
        self.0.spare.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }
}

/// The part of a tracing-chrome line that matters when it is parsed in full: lynshim only writes
/// events (`ph` `i`) with a kind and a batch number.
#[derive(Deserialize)]
struct ChromeLine<'a> {
    #[serde(borrow)]
    ph: Cow<'a, str>,
    #[serde(default, borrow)]
    args: Option<ChromeArgs<'a>>,
}

#[derive(Deserialize)]
struct ChromeArgs<'a> {
    #[serde(default, borrow)]
    k: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    p: Option<BatchNumber<'a>>,
}

/// A batch's number as tracing-chrome wrote it: a string today (the field's `Debug` form), a number
/// should it ever write numbers as numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum BatchNumber<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Number(u64),
}

/// How a line of tracing-chrome's output was read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A batch's line, found without parsing it (tracing-chrome writes args first, keys sorted).
    Batch(u64),
    /// A batch's line in another shape, found by parsing it in full (should tracing-chrome change
    /// how it writes a line).
    BatchParsed(u64),
    /// Anything else: tracing-chrome's own thread names, or a line that does not parse.
    Other,
}

/// What a (trimmed) line of tracing-chrome's output holds.
pub fn batch_id(line: &[u8]) -> Line {
    // tracing-chrome writes every field as a string (its `Debug` form).
    const PREFIX: &[u8] = br#"{"args":{"k":"batch","p":""#;
    if let Some(rest) = line.strip_prefix(PREFIX) {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && rest[digits..].starts_with(br#""},"#) {
            if let Some(id) = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse().ok()) {
                return Line::Batch(id);
            }
        }
    }
    match serde_json::from_slice::<ChromeLine<'_>>(line) {
        Ok(ChromeLine { ph, args: Some(ChromeArgs { k: Some(k), p: Some(id) }) }) if ph == "i" && k == kind::BATCH => {
            match id {
                BatchNumber::Text(text) => text.parse().map_or(Line::Other, Line::BatchParsed),
                BatchNumber::Number(id) => Line::BatchParsed(id),
            }
        }
        _ => Line::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_line_is_found_quickly_or_by_parsing_it() {
        let quick =
            br#"{"args":{"k":"batch","p":"17"},"cat":"lynshim","name":"event","ph":"i","pid":1,"tid":0,"ts":9.0}"#;
        assert_eq!(batch_id(quick), Line::Batch(17));
        // tracing-chrome with source locations writes ".file" first.
        let located = json!({".file": "src/batch.rs", ".line": 1, "args": {"k": kind::BATCH, "p": "18"},
                             "cat": "lynshim", "name": "event", "ph": "i", "pid": 1, "tid": 0, "ts": 9.0});
        assert_eq!(batch_id(located.to_string().as_bytes()), Line::BatchParsed(18));
        let numbered = json!({"args": {"k": kind::BATCH, "p": 19}, "ph": "i", "ts": 9.0});
        assert_eq!(batch_id(numbered.to_string().as_bytes()), Line::BatchParsed(19));
        let thread_name = br#"{"name":"thread_name","ph":"M","pid":1,"tid":0,"args":{"name":"x"}}"#;
        assert_eq!(batch_id(thread_name), Line::Other);
        assert_eq!(batch_id(b"{not json"), Line::Other);
    }

    /// A traced call copies one record into the list: the one that holds a whole span stays as small
    /// as a begin alone was before it (96 bytes, with 64-bit text positions).
    #[test]
    fn a_record_stays_small() {
        assert!(std::mem::size_of::<Record>() <= 96, "{} bytes", std::mem::size_of::<Record>());
    }

    #[test]
    fn a_filed_batch_is_taken_once() {
        let batches = Batches::default();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry());
        tracing::dispatcher::with_default(&dispatch, || {
            batches.send(Batch { parts: vec![(Vec::new(), String::new())], ..Batch::default() });
        });
        assert_eq!(batches.take_through(0).len(), 1);
        assert!(batches.take_through(0).is_empty());
    }

    #[test]
    fn batches_whose_line_was_missed_come_with_the_next_and_never_pile_up() {
        let batches = Batches::default();
        let one = || Batch { parts: vec![(Vec::new(), "x".to_owned())], ..Batch::default() };
        let ids: Vec<u64> = (0..4).map(|_| batches.file(one())).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        // The writer meets batch 2's line (0's and 1's were not recognised): 0, 1 and 2, in order.
        assert_eq!(batches.take_through(2).len(), 3);
        assert_eq!(batches.take_all().len(), 1);
        // A writer that recognises nothing: the oldest go beyond MAX_FILED, counted, and no longer count
        // as behind.
        for _ in 0..MAX_FILED + 10 {
            batches.handed_off();
            batches.file(one());
        }
        assert_eq!(batches.behind(), MAX_FILED);
        assert_eq!((batches.take_all().len(), batches.dropped()), (MAX_FILED, 10));
    }

    #[test]
    fn traced_threads_wait_for_a_writer_that_falls_behind_and_stop_waiting_for_a_stuck_one() {
        let batches = Batches::default();
        for _ in 0..WRITER_BEHIND_LISTS {
            assert!(!batches.handed_off());
        }
        assert!(batches.handed_off(), "one list more than the writer may fall behind");
        // A writer that writes meanwhile: the wait ends once it is down to half.
        let writer = batches.clone();
        let writing = std::thread::spawn(move || {
            for _ in 0..=WRITER_BEHIND_LISTS - WRITER_CAUGHT_UP_LISTS {
                std::thread::sleep(Duration::from_millis(1));
                writer.recycle(Vec::new(), String::new());
            }
        });
        let (waited, behind) = batches.wait_for_writer().expect("the thread waited");
        writing.join().expect("writer thread");
        assert_eq!(behind, WRITER_BEHIND_LISTS + 1);
        assert!(batches.behind() <= WRITER_CAUGHT_UP_LISTS);
        assert!(waited < WRITER_WAIT_LIMIT, "{waited:?}");
        assert_eq!(batches.wait_for_writer(), None, "caught up: no wait");
        // A writer that writes nothing: the wait ends at the limit, and the session waits no more.
        while !batches.handed_off() {}
        let (waited, _) = batches.wait_for_writer().expect("the thread waited");
        assert!(waited >= WRITER_WAIT_LIMIT);
        assert!(!batches.handed_off());
        assert_eq!(batches.wait_for_writer(), None);
    }
}
