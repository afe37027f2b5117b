//! The writer behind tracing-chrome: turns its output into the lynshim trace layout.
//!
//! tracing-chrome serialises every span and event on its own thread, but it writes `pid: 1`, numbers
//! threads from 0 in order of first use, names spans after their static callsite, writes no process
//! names and no counters, and buffers 8 KiB in a `BufWriter` whose `unwrap()` on a write error would kill
//! its thread. We give it this `Write` instead, and fix each line up on the way to the file:
//!
//! - lynshim's events arrive as `tracing` events, one per batch of span begins and ends and of lynshim's
//!   own events, recorded on the traced threads (see [`crate::session`]); the line carries the batch's
//!   number and the records come by the side channel [`Batches`] (see [`crate::batch`]). Nothing else
//!   is written through tracing-chrome, and its own thread-name lines, which carry its thread numbers,
//!   are dropped. Each record becomes an event with the time and OS thread id it was recorded with,
//!   args as real JSON objects: spans (`B`/`E`; a span with nothing recorded inside it is one complete
//!   `X` event: the traced thread records it as one [`Record::Whole`] where it knows that the end's args
//!   repeat no key of the begin's, and the writer puts the begin and end together here otherwise), thread
//!   names, process metadata, counters (`C`), complete events (`X`) and flows (`s`/`f`);
//! - every event gets the real pid;
//! - timestamps are shifted so that 0 is the process's start, not the moment tracing began;
//! - the array is re-framed so that the file only ever holds whole events: a file cut short by SIGKILL
//!   still parses as a Chrome trace with a missing `]`, which the format allows;
//! - the closing `]` is ours to write ([`Fixup::close`]), not tracing-chrome's: the exit status is only
//!   known in a C `on_exit` handler that runs after thread-local storage is gone, where neither
//!   `tracing` nor tracing-chrome can be used, so the exit event is written directly ([`Fixup::write_own`]);
//! - the file ([`crate::tracefile::TraceFile`]) is sent what it was handed at tracing-chrome's flushes
//!   only, and finished (cut to its exact length) at [`Fixup::close`];
//! - a failing write (full disk, file removed) is reported once on stderr and later output is dropped,
//!   so the traced program never sees an error from its tracer;
//! - tracing-chrome's writer thread, which it spawns unnamed, is named `lynshim-writer` at its first
//!   write, so that `top -H`, `perf` and `/proc` tell it from the program's own threads.

use std::io::{self, Write};

use lynschema::{arg, category, event};
use serde_json::{json, Map, Value};

use crate::batch::{batch_id, Batch, Batches, FlowEnd, Line, OwnEvent, Record, Text};
use crate::tracefile::Sink;

/// Where fixed-up events go: a [`crate::tracefile::TraceFile`] in production, a `Vec<u8>` in tests.
pub struct Fixup<W: Sink> {
    out: W,
    /// Where the batches named in tracing-chrome's lines wait.
    batches: Batches,
    pid: u32,
    /// CLOCK_MONOTONIC at tracing-chrome's zero, to time events written directly.
    zero_mono_ns: u64,
    /// Added to every timestamp: microseconds from the process's start to tracing-chrome's zero.
    shift_us: f64,
    /// The same in nanoseconds, for span times written exactly (see [`push_micros`]).
    shift_ns: i64,
    /// Bytes received but not yet ended by a newline (tracing-chrome writes `,\n` before each event).
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
    /// The fixed-up events on their way to the file.
    events: Vec<u8>,
    batches_parsed_in_full: usize,
    /// A line of tracing-chrome's was recognised as a batch's: what a loss of batches says about why.
    met_batch_line: bool,
    wrote_any: bool,
    /// We wrote ours; nothing more goes to the file.
    finished: bool,
    failed: bool,
    /// Called once, with a message, when writing first fails.
    on_error: Box<dyn FnMut(&str) + Send>,
}

impl<W: Sink> Fixup<W> {
    pub fn new(
        out: W,
        batches: Batches,
        pid: u32,
        zero_mono_ns: u64,
        shift_us: f64,
        on_error: Box<dyn FnMut(&str) + Send>,
    ) -> Self {
        Self {
            out,
            batches,
            pid,
            zero_mono_ns,
            shift_us,
            #[allow(clippy::cast_possible_truncation)]
            shift_ns: (shift_us * 1000.0).round() as i64,
            pending: Vec::with_capacity(16 * 1024),
            scanned: 0,
            events: Vec::with_capacity(16 * 1024),
            batches_parsed_in_full: 0,
            met_batch_line: false,
            wrote_any: false,
            finished: false,
            failed: false,
            on_error,
        }
    }

    /// The sink, for tests.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// How many batches were found only by parsing their line in full (tests check that none are).
    pub fn batches_parsed_in_full(&self) -> usize {
        self.batches_parsed_in_full
    }

    fn process_pending_lines(&mut self, at_flush: bool) {
        // Reused: a batch's events are a few hundred KiB, which a fresh Vec would grow to by copying.
        let mut batch = std::mem::take(&mut self.events);
        batch.clear();
        // Taken out while its lines are fixed up: they borrow from it.
        let mut pending = std::mem::take(&mut self.pending);
        let mut start = 0;
        // Bytes before `scanned` hold no newline: a long line arriving in pieces is searched once.
        let mut from = self.scanned;
        while let Some(rel) = memchr::memchr(b'\n', &pending[from..]) {
            let end = from + rel;
            self.fix_line(&pending[start..end], &mut batch);
            start = end + 1;
            from = start;
        }
        // At a flush tracing-chrome has written whole events only, so the unterminated tail is complete.
        if at_flush && start < pending.len() {
            self.fix_line(&pending[start..], &mut batch);
            start = pending.len();
        }
        pending.drain(..start);
        self.scanned = pending.len();
        self.pending = pending;
        self.emit(&batch);
        self.events = batch;
        if at_flush {
            self.flush_out();
        }
    }

    fn fix_line(&mut self, line: &[u8], batch: &mut Vec<u8>) {
        let line = trim_line(line);
        match line {
            // tracing-chrome's own brackets: ours are written around the events (see [`Fixup::close`]).
            b"" | b"[" | b"]" => {}
            // A line that is not a batch's is tracing-chrome's own thread names (or does not parse):
            // dropped rather than written, the file must stay valid.
            _ => match batch_id(line) {
                Line::Batch(id) => self.fix_batch(id, batch),
                Line::BatchParsed(id) => {
                    self.batches_parsed_in_full += 1;
                    self.fix_batch(id, batch);
                }
                Line::Other => {}
            },
        }
    }

    fn separate(&self, batch: &mut Vec<u8>) {
        if self.wrote_any || !batch.is_empty() {
            batch.extend_from_slice(b",\n");
        }
    }

    fn write_values(&self, events: &[Value], batch: &mut Vec<u8>) {
        for event in events {
            self.separate(batch);
            // Serialising a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *batch, event);
        }
    }

    /// Nanoseconds from the process's start to CLOCK_MONOTONIC `ns`. Subtracted as integers: the
    /// clock's nanoseconds pass 2^53 (what a float holds exactly) after some 104 days up.
    #[allow(clippy::cast_possible_wrap)]
    fn ts_ns(&self, ns: u64) -> i64 {
        (ns.wrapping_sub(self.zero_mono_ns) as i64).saturating_add(self.shift_ns)
    }

    #[allow(clippy::cast_precision_loss)]
    fn ts_us(&self, ns: u64) -> f64 {
        self.ts_ns(ns) as f64 / 1000.0
    }

    /// The batch filed as `id`, each record with its own time and OS thread id. Span records are the
    /// bulk of a trace: they are written straight from the records, args copied as the JSON text the
    /// traced thread wrote, without building JSON values.
    fn fix_batch(&mut self, id: u64, out: &mut Vec<u8>) {
        self.met_batch_line = true;
        for batch in self.batches.take_through(id) {
            self.write_batch(batch, out);
        }
    }

    fn write_batch(&mut self, Batch { parts, clock }: Batch, out: &mut Vec<u8>) {
        let mut prefix = ThreadPrefix::default();
        for (records, text) in parts {
            // Per list: it knows a name by its address, which is only that name's while the list holds it.
            let mut names = SpanNames::default();
            // Read in place, not moved out: a record is about 100 bytes.
            let mut at = 0;
            while let Some(record) = records.get(at) {
                at += 1;
                match record {
                    Record::Begin { tid, ns, name, cat, args } => {
                        let prefix = prefix.of(self.pid, *tid);
                        // A span that ends before anything else is recorded (a leaf call, a leaf import:
                        // about half the spans) is written whole, as one complete event.
                        if let Some(Record::End {
                            tid: end_tid,
                            ns: end_ns,
                            name: end_name,
                            cat: end_cat,
                            args: end_args,
                        }) = records.get(at)
                        {
                            let both = [text_of(&text, *args), text_of(&text, *end_args)];
                            if end_tid == tid && end_name == name && end_cat == cat && mergeable(both) {
                                let kind = SpanEvent::Whole { end_ns: clock.ns(*end_ns) };
                                let span = Span { ns: clock.ns(*ns), kind, names: names.of(name, cat) };
                                self.write_span(prefix, &span, both, out);
                                at += 1;
                                continue;
                            }
                        }
                        let span = Span { ns: clock.ns(*ns), kind: SpanEvent::Begin, names: names.of(name, cat) };
                        self.write_span(prefix, &span, [text_of(&text, *args), None], out);
                    }
                    Record::Whole { tid, ns, end_ns, name, cat, args, end_args } => {
                        let prefix = prefix.of(self.pid, *tid);
                        let kind = SpanEvent::Whole { end_ns: clock.ns(*end_ns) };
                        let span = Span { ns: clock.ns(*ns), kind, names: names.of(name, cat) };
                        self.write_span(prefix, &span, [text_of(&text, *args), text_of(&text, *end_args)], out);
                    }
                    Record::End { tid, ns, name, cat, args } => {
                        let prefix = prefix.of(self.pid, *tid);
                        let span = Span { ns: clock.ns(*ns), kind: SpanEvent::End, names: names.of(name, cat) };
                        self.write_span(prefix, &span, [text_of(&text, *args), None], out);
                    }
                    Record::Own { tid, ns, event } => {
                        let events = self.fix_own_event(event, *tid, self.ts_us(clock.ns(*ns)));
                        self.write_values(&events, out);
                    }
                }
            }
            self.batches.recycle(records, text);
        }
    }

    /// A span's begin (`B`), end (`E`), or the whole span (`X`, with its `dur`), as
    /// `{"ph":…,"name":…,"cat":…,"pid":…,"tid":…,"ts":…[,"dur":…][,"args":…]}`, in this order (lynload's
    /// fast path reads span events in it); `thread` is the `pid`…`ts` part up to the time
    /// ([`ThreadPrefix`]). The args of a whole span are its begin's and its end's in one object, as a
    /// reader merges a `B`'s and its `E`'s.
    fn write_span(&self, thread: &[u8], span: &Span<'_>, args: [Option<&str>; 2], out: &mut Vec<u8>) {
        let args_len = args.iter().flatten().map(|a| a.len()).sum::<usize>();
        // One reservation for the whole event (the numbers need at most 50 bytes, the keys 50).
        out.reserve(100 + span.names.len() + thread.len() + args_len);
        self.separate(out);
        out.extend_from_slice(match span.kind {
            SpanEvent::Begin => br#"{"ph":"B","name":"#,
            SpanEvent::End => br#"{"ph":"E","name":"#,
            SpanEvent::Whole { .. } => br#"{"ph":"X","name":"#,
        });
        out.extend_from_slice(span.names);
        out.extend_from_slice(thread);
        push_micros(out, self.ts_ns(span.ns));
        if let SpanEvent::Whole { end_ns } = span.kind {
            out.extend_from_slice(br#","dur":"#);
            #[allow(clippy::cast_possible_wrap)]
            push_micros(out, end_ns.saturating_sub(span.ns) as i64);
        }
        push_args(out, args);
        out.push(b'}');
    }

    /// The events of the file that one of lynshim's own events becomes, at `ts` (microseconds from
    /// the process's start).
    fn fix_own_event(&self, event: &OwnEvent, tid: u64, ts: f64) -> Vec<Value> {
        let pid = self.pid;
        // Empty args are left out rather than written as `{}`.
        let with_args = |mut ev: Value, args: &Map<String, Value>| {
            if !args.is_empty() {
                ev["args"] = Value::Object(args.clone());
            }
            ev
        };
        match event {
            OwnEvent::Thread { tid: os_tid, name } => {
                vec![json!({"ph": "M", "name": event::THREAD_NAME, "pid": pid, "tid": os_tid, "args": {"name": name}})]
            }
            OwnEvent::Process { name, labels, meta } => {
                let mut out = vec![
                    json!({"ph": "M", "name": event::PROCESS_NAME, "pid": pid, "tid": tid, "args": {"name": name}}),
                ];
                if !labels.is_empty() {
                    out.push(json!({"ph": "M", "name": event::PROCESS_LABELS, "pid": pid, "tid": tid,
                                    "args": {"labels": labels}}));
                }
                let process = json!({"ph": "i", "s": "t", "name": event::PROCESS, "cat": category::TRACER,
                                     "pid": pid, "tid": tid, "ts": 0.0});
                out.push(with_args(process, meta));
                out
            }
            OwnEvent::Exit { meta } => {
                let exit = json!({"ph": "i", "s": "t", "name": event::EXIT, "cat": category::TRACER,
                                  "pid": pid, "tid": tid, "ts": ts});
                vec![with_args(exit, meta)]
            }
            OwnEvent::Instant { name, cat, args } => {
                let instant = json!({"ph": "i", "s": "t", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts});
                vec![with_args(instant, args)]
            }
            OwnEvent::Counter { name, bytes, at } => {
                let mut ev = json!({"ph": "C", "name": name, "cat": category::MEMORY, "pid": pid, "tid": tid,
                                    "ts": ts, "args": {arg::BYTES: bytes}});
                // The moment a sample was taken at stands beside `args`, not in it: every arg of a
                // counter event is a series to Perfetto, which wants numbers there.
                if let Some(at) = at {
                    ev[arg::AT] = Value::from(at.as_ref());
                }
                vec![ev]
            }
            OwnEvent::Complete { name, cat, start_us, dur_us, args } => {
                let start = start_us + self.shift_us;
                let complete = json!({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid,
                                      "ts": start.max(0.0), "dur": dur_us.max(0.0)});
                vec![with_args(complete, args)]
            }
            OwnEvent::Flow { end, id, name, cat } => {
                let mut ev = json!({"ph": if *end == FlowEnd::Out { "s" } else { "f" },
                                    "name": name, "cat": cat, "id": id, "pid": pid, "tid": tid, "ts": ts});
                if *end == FlowEnd::In {
                    // Bind to the enclosing slice (the server span), not to the next one.
                    ev["bp"] = "e".into();
                }
                vec![ev]
            }
        }
    }

    fn emit(&mut self, batch: &[u8]) {
        if batch.is_empty() || self.failed {
            return;
        }
        if !self.wrote_any {
            self.write_out(b"[\n");
        }
        self.write_out(batch);
        self.wrote_any = true;
    }

    fn write_out(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        let result = self.out.write_all(bytes);
        self.check(result);
    }

    /// Send what [`Fixup::write_out`] has handed the sink on to the file: at tracing-chrome's flushes,
    /// which come every [`crate::emitter::FLUSH_DELAY`] while records come.
    fn flush_out(&mut self) {
        if self.failed {
            return;
        }
        let result = self.out.flush();
        self.check(result);
    }

    /// The first failure is reported, once, and ends the trace: a file with a hole would not parse.
    fn check(&mut self, result: io::Result<()>) {
        if let Err(err) = result {
            self.failed = true;
            (self.on_error)(&format!("writing the trace failed ({err}); the rest of this trace is lost"));
        }
    }

    /// Write one of lynshim's own events directly, timed now, on OS thread `tid`: for the exit event,
    /// written where tracing can no longer be used. It reaches the file at the next flush or at
    /// [`Fixup::close`].
    pub fn write_own(&mut self, event: &OwnEvent, tid: u64) {
        if self.finished {
            return;
        }
        let ts = self.ts_us(crate::procinfo::monotonic_ns());
        let mut batch = Vec::new();
        let events = self.fix_own_event(event, tid, ts);
        self.write_values(&events, &mut batch);
        self.emit(&batch);
    }

    /// The process is ending: the sink stops waiting for the device (see [`Sink::ending`]).
    pub fn ending(&mut self) {
        self.out.ending();
    }

    /// Write the closing `]` (also when no event was ever written, so the file is valid JSON). Later
    /// output is ignored.
    pub fn close(&mut self) {
        if self.finished {
            return;
        }
        self.process_pending_lines(true);
        // tracing-chrome has written every line it will: a batch still filed is one whose line was not
        // recognised, and its records go out all the same.
        let mut leftover = std::mem::take(&mut self.events);
        leftover.clear();
        for batch in self.batches.take_all() {
            self.write_batch(batch, &mut leftover);
        }
        if !leftover.is_empty() {
            self.emit(&leftover);
        }
        let dropped = self.batches.dropped();
        if dropped > 0 {
            let why = if self.met_batch_line {
                "the trace writer fell too far behind, and lynshim stopped waiting for it after a second"
            } else {
                "none of tracing-chrome's lines was recognised"
            };
            (self.on_error)(&format!("{dropped} batches of trace records were lost: {why}"));
        }
        let tail: &[u8] = if self.wrote_any { b"\n]\n" } else { b"[\n]\n" };
        self.write_out(tail);
        if !self.failed {
            let result = self.out.finish();
            self.check(result);
        }
        self.pending.clear();
        self.finished = true;
    }
}

impl<W: Sink> Write for Fixup<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.finished {
            self.pending.extend_from_slice(buf);
            self.process_pending_lines(false);
        }
        // Never report an error: tracing-chrome unwraps it on its writer thread.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.finished {
            self.process_pending_lines(true);
        }
        Ok(())
    }
}

/// `,"pid":…,"tid":…,"ts":` for the thread whose records are being written: formatted again only
/// when the thread changes (a batch is mostly one thread's), not twice per event.
#[derive(Default)]
struct ThreadPrefix {
    tid: Option<u64>,
    text: Vec<u8>,
}

impl ThreadPrefix {
    fn of(&mut self, pid: u32, tid: u64) -> &[u8] {
        if self.tid != Some(tid) {
            self.text.clear();
            self.text.extend_from_slice(br#","pid":"#);
            self.text.extend_from_slice(itoa::Buffer::new().format(pid).as_bytes());
            self.text.extend_from_slice(br#","tid":"#);
            self.text.extend_from_slice(itoa::Buffer::new().format(tid).as_bytes());
            self.text.extend_from_slice(br#","ts":"#);
            self.tid = Some(tid);
        }
        &self.text
    }
}

/// `"name","cat":"category"` of the span being written, escaped again only when the name or the
/// category changes: a traced loop's list is one name over and over, and checking and quoting it again
/// for every event was an eighth of the writer's instructions per traced call (callgrind,
/// `--toggle-collect` on `Fixup::process_pending_lines`).
///
/// A name is known by its address and length: a probe's name and category are one leaked string each,
/// the same address at every call, so a hit costs two comparisons; a name that is the same text at
/// another address (an import's, owned by its record) is written again, as before. Made afresh for each
/// list of records: an address can only be mistaken for another string's once the string it held is
/// freed, and the strings of a list live until the list is written.
#[derive(Default)]
struct SpanNames {
    name: (usize, usize),
    cat: (usize, usize),
    json: Vec<u8>,
}

impl SpanNames {
    fn of(&mut self, name: &str, cat: &str) -> &[u8] {
        let (name_at, cat_at) = ((name.as_ptr() as usize, name.len()), (cat.as_ptr() as usize, cat.len()));
        if self.json.is_empty() || self.name != name_at || self.cat != cat_at {
            self.json.clear();
            crate::json::push_str_bytes(&mut self.json, name);
            self.json.extend_from_slice(br#","cat":"#);
            crate::json::push_str_bytes(&mut self.json, cat);
            (self.name, self.cat) = (name_at, cat_at);
        }
        &self.json
    }
}

/// What [`Fixup::write_span`] writes of a span: which event, at `ns`, with its [`SpanNames`].
struct Span<'a> {
    ns: u64,
    kind: SpanEvent,
    names: &'a [u8],
}

/// The event a span record becomes.
#[derive(Clone, Copy)]
enum SpanEvent {
    Begin,
    End,
    /// The begin, with the end at `end_ns`: one complete event.
    Whole {
        end_ns: u64,
    },
}

/// The args a record points to in its batch's text; `None` for none, and for an empty object.
fn text_of(text: &str, args: Option<Text>) -> Option<&str> {
    // lynshim's writers write compact JSON: trimming is for a caller's own text, and ASCII is enough
    // (the Unicode-aware `trim` showed in the writer's profile).
    let args =
        args.and_then(|Text { start, len }| text.get(start as usize..(start as usize + len as usize)))?.trim_ascii();
    let empty_object =
        args.strip_prefix('{').and_then(|a| a.strip_suffix('}')).is_some_and(|a| a.trim_ascii().is_empty());
    (!args.is_empty() && !empty_object).then_some(args)
}

/// Can [`push_args`] write these args as one object? Every writer of args writes an object, but
/// anything else is written as it came, on a `B` and an `E` of its own; so are a begin and an end that
/// name the same key (`lynshim.span("x", error=…)` that raises), which one object could only hold twice.
fn mergeable(args: [Option<&str>; 2]) -> bool {
    match args {
        [Some(begin), Some(end)] => begin.ends_with('}') && end.starts_with('{') && keys_disjoint(begin, end),
        _ => true,
    }
}

/// Does no top-level key of `end` appear as a key in `begin`? Both are compact JSON objects as lynshim
/// writes them. A key of `end`, quotes included, is looked for in `begin` where a key stands (after
/// `{` or `,`, before `:`); inside a string its quotes would be escaped, so a value never matches. A
/// nested object's key may match: that only costs the span its `X`.
fn keys_disjoint(begin: &str, end: &str) -> bool {
    let (begin, end) = (begin.as_bytes(), end.as_bytes());
    let mut depth = 0_usize;
    let mut key_next = true;
    let mut at = 1; // past the opening `{`
    while let Some(&byte) = end.get(at) {
        match byte {
            b'"' => {
                let start = at;
                at += 1;
                while let Some(&b) = end.get(at) {
                    match b {
                        b'"' => break,
                        b'\\' => at += 2,
                        _ => at += 1,
                    }
                }
                if depth == 0 && key_next {
                    let Some(key) = end.get(start..=at) else { return false };
                    // Where a key can stand in `begin`: after each `{` and `,`. (A searcher built per key,
                    // `memmem`, cost more than the few bytes it searches.)
                    let names_it = |i: usize| {
                        begin.get(i + 1..).is_some_and(|rest| rest.starts_with(key))
                            && begin.get(i + 1 + key.len()) == Some(&b':')
                    };
                    if memchr::memchr2_iter(b'{', b',', begin).any(names_it) {
                        return false;
                    }
                    key_next = false;
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => key_next = true,
            _ => {}
        }
        at += 1;
    }
    true
}

/// `,"args":{…}`: the JSON objects in `args` as one (each is written by lynshim, `{` to `}`), or nothing
/// when there are none.
fn push_args(out: &mut Vec<u8>, args: [Option<&str>; 2]) {
    let mut objects = args.into_iter().flatten();
    let Some(first) = objects.next() else { return };
    out.extend_from_slice(br#","args":"#);
    match objects.next() {
        None => out.extend_from_slice(first.as_bytes()),
        Some(second) => {
            // `{"a":1}` and `{"b":2}` make `{"a":1,"b":2}`: the first's `}` and the second's `{` go.
            out.extend_from_slice(&first.as_bytes()[..first.len() - 1]);
            out.push(b',');
            out.extend_from_slice(&second.as_bytes()[1..]);
        }
    }
}

fn trim_line(mut line: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = line {
        if first.is_ascii_whitespace() || *first == b',' {
            line = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = line {
        if last.is_ascii_whitespace() || *last == b',' {
            line = rest;
        } else {
            break;
        }
    }
    line
}

/// A [`Fixup`] shared between tracing-chrome's writer thread and the exit handler.
pub struct SharedFixup<W: Sink>(pub std::sync::Arc<std::sync::Mutex<Fixup<W>>>);

impl<W: Sink> Write for SharedFixup<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        name_writer_thread();
        let mut fixup = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fixup.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut fixup = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fixup.flush()
    }
}

/// The name tracing-chrome's writer thread gets, as `top -H`, `perf` and `/proc/<pid>/task/*/comm` show it.
const WRITER_THREAD_NAME: &std::ffi::CStr = c"lynshim-writer";

/// Name the calling thread [`WRITER_THREAD_NAME`], once. Only tracing-chrome's writer thread writes
/// through [`SharedFixup`] (tracing-chrome moves its writer into the thread it spawns; the exit handler
/// locks the [`Fixup`] itself), and tracing-chrome spawns it unnamed, so the OS showed it under the
/// program's name ("python"), beside the program's and OpenBLAS's threads. Whatever calls this, the
/// process's main thread keeps its name, which is the process's in `ps` and `top`, and so does a thread
/// Rust named (a test's).
fn name_writer_thread() {
    thread_local! {
        static NAMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if NAMED.with(|named| named.replace(true))
        || crate::procinfo::gettid() == u64::from(std::process::id())
        || std::thread::current().name().is_some()
    {
        return;
    }
    // SAFETY: a NUL-terminated name of fewer than 16 bytes, for the calling thread.
    unsafe {
        libc::pthread_setname_np(libc::pthread_self(), WRITER_THREAD_NAME.as_ptr());
    }
}

/// A time in nanoseconds as JSON microseconds, `1234.567`, written as serde_json writes the float
/// `ns / 1000.0` (no trailing zeros, `.0` for a whole microsecond) but without formatting a float, which
/// was a tenth of the writer thread's time per traced call, and exactly: the float sum it replaces (time
/// since the zero plus the process's age) could end in `…000001`.
fn push_micros(out: &mut Vec<u8>, ns: i64) {
    if ns < 0 {
        out.push(b'-');
    }
    let abs = ns.unsigned_abs();
    out.extend_from_slice(itoa::Buffer::new().format(abs / 1000).as_bytes());
    let frac = abs % 1000;
    out.push(b'.');
    if frac == 0 {
        out.push(b'0');
        return;
    }
    #[allow(clippy::cast_possible_truncation)]
    let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
    let len = if frac % 100 == 0 {
        1
    } else if frac % 10 == 0 {
        2
    } else {
        3
    };
    out.extend_from_slice(&digits[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_times_are_written_as_serde_json_writes_their_float() {
        let mut values: Vec<i64> =
            vec![0, 1, 9, 10, 100, 999, 1000, 1001, 1010, 1100, -1, -999, -1000, -1500, 1_234_567];
        values.extend((0..2000).map(|i: i64| i * 7919 + i * i * 104_729));
        values.push(86_400 * 1_000_000_000 + 123_456); // a day in, to the nanosecond
        for ns in values {
            let mut ours = Vec::new();
            push_micros(&mut ours, ns);
            #[allow(clippy::cast_precision_loss)]
            let theirs = serde_json::to_string(&(ns as f64 / 1000.0)).expect("a float");
            assert_eq!(String::from_utf8(ours).expect("UTF-8"), theirs, "{ns} ns");
        }
    }

    fn fixup() -> (Fixup<Vec<u8>>, Batches) {
        let batches = Batches::default();
        (Fixup::new(Vec::new(), batches.clone(), 4242, 0, 1000.0, Box::new(|_| {})), batches)
    }

    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        let text = if text.trim_end().ends_with(']') { text } else { format!("{text}\n]") };
        serde_json::from_str(&text).expect("valid JSON array")
    }

    /// A line as tracing-chrome writes a batch's event, with the batch's number as a string field.
    fn chrome_line(id: u64, chrome_tid: u64, ts: f64) -> Vec<u8> {
        let line = json!({"args": {"k": crate::batch::kind::BATCH, "p": id.to_string()}, "cat": "lynshim",
                          "name": "event", "ph": "i", "pid": 1, "tid": chrome_tid, "ts": ts, "s": "t"});
        line.to_string().into_bytes()
    }

    /// `records` filed as one batch with `text`, and the tracing-chrome line naming it.
    fn batch_line(batches: &Batches, records: Vec<Record>, text: &str) -> Vec<u8> {
        chrome_line(batches.file(Batch { parts: vec![(records, text.to_owned())], ..Batch::default() }), 0, 1.0)
    }

    /// The events a fresh fixup writes for `records`, filed as one batch with `text`, once it is closed.
    fn written(records: Vec<Record>, text: &str) -> Vec<Value> {
        written_batch(Batch { parts: vec![(records, text.to_owned())], ..Batch::default() })
    }

    /// The events a fresh fixup writes for `batch`, once it is closed.
    fn written_batch(batch: Batch) -> Vec<Value> {
        let (mut f, batches) = fixup();
        f.write_all(&chrome_line(batches.file(batch), 0, 1.0)).unwrap();
        f.flush().unwrap();
        f.close();
        events(&f.into_inner())
    }

    fn instant(name: &str) -> Record {
        let event = OwnEvent::Instant { name: name.into(), cat: "user".into(), args: Map::new() };
        Record::Own { tid: 7, ns: 1_000_000, event: Box::new(event) }
    }

    #[test]
    fn batches_become_spans_with_real_pid_tid_time_name_and_args() {
        let (mut f, batches) = fixup();
        let text = r#"{"file":"talk.md"}{"rows":3}"#;
        let records = vec![
            Record::Own { tid: 77, ns: 500, event: Box::new(OwnEvent::Thread { tid: 77, name: "MainThread".into() }) },
            Record::Begin {
                tid: 77,
                ns: 5_000_000,
                name: "lynguine".into(),
                cat: "import".into(),
                args: Some(Text { start: 0, len: 18 }),
            },
            Record::End {
                tid: 77,
                ns: 9_000_000,
                name: "lynguine".into(),
                cat: "import".into(),
                args: Some(Text { start: 18, len: 10 }),
            },
            Record::End { tid: 77, ns: 9_500_000, name: "lynguine".into(), cat: "import".into(), args: None },
            Record::Own {
                tid: 78,
                ns: 10_000_000,
                event: Box::new(OwnEvent::Counter { name: "rss".into(), bytes: 7, at: None }),
            },
        ];
        f.write_all(b"[\n").unwrap();
        f.write_all(&batch_line(&batches, records, text)).unwrap();
        f.flush().unwrap();
        f.write_all(b"\n]").unwrap();
        f.flush().unwrap();
        f.close();
        assert_eq!(f.batches_parsed_in_full(), 0);
        let ev = events(&f.into_inner());
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0]["ph"], "M");
        assert_eq!(ev[0]["tid"], 77);
        // A begin followed at once by its end is the whole span: one complete event.
        assert_eq!(ev[1]["ph"], "X");
        assert_eq!(ev[1]["name"], "lynguine");
        assert_eq!(ev[1]["cat"], "import");
        assert_eq!(ev[1]["pid"], 4242);
        assert_eq!(ev[1]["tid"], 77);
        // The recorded time, shifted to the process start; not tracing-chrome's time of the batch.
        assert_eq!(ev[1]["ts"], 6000.0);
        assert_eq!(ev[1]["dur"], 4000.0);
        // The begin's args and the end's, in one object.
        assert_eq!(ev[1]["args"], json!({"file": "talk.md", "rows": 3}));
        assert_eq!(ev[2]["ph"], "E");
        assert!(ev[2].get("args").is_none());
        assert_eq!(
            (ev[3]["ph"].as_str(), ev[3]["tid"].as_u64(), ev[3]["ts"].as_f64()),
            (Some("C"), Some(78), Some(11000.0))
        );
    }

    /// Records timed on the counter: the writer converts each time with its batch's anchors, once (the
    /// begin and the end of a whole span, a lone begin and end, lynshim's own events).
    #[test]
    fn times_are_converted_with_the_anchors_of_their_batch() {
        // 4 counts per nanosecond, from count 1 000 000 at 0 ns: a span at 5 ms is at count 21 000 000.
        let count = |ns: u64| 1_000_000 + 4 * ns;
        let clock = crate::clock::Converter::through(&[(count(0), 0), (count(1_000_000), 1_000_000)]);
        let records = vec![
            begin(7, count(5_000_000), "whole", None),
            end(7, count(9_000_000), "whole", None),
            begin(7, count(10_000_000), "outer", None),
            instant("inside"),
            end(7, count(12_000_000), "outer", None),
        ];
        let ev = written_batch(Batch { parts: vec![(records, String::new())], clock });
        let times: Vec<(&str, f64, Option<f64>)> = ev
            .iter()
            .map(|e| (e["ph"].as_str().expect("ph"), e["ts"].as_f64().expect("ts"), e["dur"].as_f64()))
            .collect();
        // Microseconds from the process's start: the fixup's session began 1 000 µs after it. The instant
        // was made at count 1 000 000, which is 0 ns.
        assert_eq!(
            times,
            [("X", 6_000.0, Some(4_000.0)), ("B", 11_000.0, None), ("i", 1_000.0, None), ("E", 13_000.0, None)]
        );
    }

    fn begin(tid: u64, ns: u64, name: &'static str, args: Option<Text>) -> Record {
        Record::Begin { tid, ns, name: name.into(), cat: "field".into(), args }
    }

    fn end(tid: u64, ns: u64, name: &'static str, args: Option<Text>) -> Record {
        Record::End { tid, ns, name: name.into(), cat: "field".into(), args }
    }

    /// The spans a reader sees, whichever events they were written as: (tid, name, ts, dur, args), in
    /// the order they begin.
    fn spans(events: &[Value]) -> Vec<(u64, String, f64, f64, Value)> {
        let mut out: Vec<(u64, String, f64, f64, Value)> = Vec::new();
        let mut open: Vec<(u64, usize)> = Vec::new();
        for e in events {
            let tid = e["tid"].as_u64().expect("tid");
            let ts = e["ts"].as_f64().expect("ts");
            let args = e.get("args").cloned().unwrap_or_else(|| json!({}));
            match e["ph"].as_str() {
                Some("X") => {
                    out.push((tid, e["name"].as_str().expect("name").into(), ts, e["dur"].as_f64().expect("dur"), args))
                }
                Some("B") => {
                    open.push((tid, out.len()));
                    out.push((tid, e["name"].as_str().expect("name").into(), ts, f64::NAN, args));
                }
                Some("E") => {
                    let at = open.iter().rposition(|(t, _)| *t == tid).expect("an open span");
                    let (_, index) = open.remove(at);
                    let span = &mut out[index];
                    span.3 = ts - span.2;
                    if let (Some(begun), Some(ended)) = (span.4.as_object_mut(), args.as_object()) {
                        begun.extend(ended.clone());
                    }
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn only_a_span_with_nothing_recorded_inside_it_is_written_whole() {
        let text = r#"{"a":1}{"b":2}{"c":3}[4]"#;
        let t = |start, len| Some(Text { start, len });
        let records = vec![
            // Nested: the inner span is whole, the outer one begins and ends around it.
            begin(1, 1_000, "outer", t(0, 7)),
            begin(1, 2_000, "inner", None),
            end(1, 3_000, "inner", t(7, 7)),
            end(1, 4_000, "outer", None),
            // Another thread's record in between: written as they came.
            begin(1, 5_000, "interleaved", None),
            begin(2, 5_500, "other", None),
            end(1, 6_000, "interleaved", None),
            end(2, 6_500, "other", t(14, 7)),
            // An end of another name (a span left open inside it) is not this begin's.
            begin(1, 7_000, "left open", None),
            end(1, 8_000, "outer", None),
            // Args that are not an object cannot be merged: a begin and an end of its own.
            begin(1, 9_000, "odd", t(0, 7)),
            end(1, 9_500, "odd", t(21, 3)),
        ];
        let ev = written(records, text);
        let phases: Vec<&str> = ev.iter().map(|e| e["ph"].as_str().expect("ph")).collect();
        assert_eq!(phases, ["B", "X", "E", "B", "B", "E", "E", "B", "E", "B", "E"]);
        let whole = &ev[1];
        assert_eq!(
            (whole["name"].as_str(), whole["ts"].as_f64(), whole["dur"].as_f64()),
            (Some("inner"), Some(1002.0), Some(1.0))
        );
        assert_eq!(whole["args"], json!({"b": 2}));
        assert_eq!(ev[6]["args"], json!({"c": 3}));
        assert_eq!(ev[10]["args"], json!([4]));
        let spans = spans(&ev);
        assert_eq!(spans[0], (1, "outer".into(), 1001.0, 3.0, json!({"a": 1})));
        assert_eq!(spans[1], (1, "inner".into(), 1002.0, 1.0, json!({"b": 2})));
        assert_eq!(spans[3], (2, "other".into(), 1005.5, 1.0, json!({"c": 3})));
    }

    /// A span the traced thread recorded as one record is written as the same complete event as the
    /// begin and end it stands for.
    #[test]
    fn a_whole_record_is_written_as_its_begin_and_end_would_be() {
        let text = r#"{"field":"title"}{"found":true}"#;
        let t = |start, len| Some(Text { start, len });
        let pair = written(vec![begin(1, 1_000, "f", t(0, 17)), end(1, 3_500, "f", t(17, 14))], text);
        let whole = Record::Whole {
            tid: 1,
            ns: 1_000,
            end_ns: 3_500,
            name: "f".into(),
            cat: "field".into(),
            args: t(0, 17),
            end_args: t(17, 14),
        };
        assert_eq!(written(vec![whole], text), pair);
        assert_eq!(pair[0]["ph"], "X");
        assert_eq!(pair[0]["args"], json!({"field": "title", "found": true}));
        let bare = Record::Whole {
            tid: 1,
            ns: 1_000,
            end_ns: 1_000,
            name: "g".into(),
            cat: "import".into(),
            args: None,
            end_args: None,
        };
        let ev = written(vec![bare], text);
        assert_eq!((ev[0]["ph"].as_str(), ev[0]["dur"].as_f64(), ev[0].get("args")), (Some("X"), Some(0.0), None));
    }

    #[test]
    fn a_begin_and_an_end_naming_the_same_key_stay_apart() {
        assert!(keys_disjoint(r#"{"field":"title","fields":"dict[1]"}"#, r#"{"found":true}"#));
        assert!(!keys_disjoint(r#"{"field":"title","error":"strict"}"#, r#"{"error":"ValueError"}"#));
        assert!(!keys_disjoint(r#"{"error":"strict"}"#, r#"{"rows":3,"error":"ValueError"}"#));
        // A key's text inside a value, or inside the end's own nested values, is not a key.
        assert!(keys_disjoint(r#"{"note":"\"found\":true"}"#, r#"{"found":true}"#));
        assert!(keys_disjoint(r#"{"error":"x"}"#, r#"{"rows":{"error":1},"list":["error"]}"#));
        assert!(keys_disjoint(r#"{"a\"b":1}"#, r#"{"a":1}"#));
        assert!(!keys_disjoint(r#"{"a\"b":1}"#, r#"{"a\"b":2}"#));

        let text = r#"{"error":"strict"}{"error":"ValueError"}{ }{"rows":1}"#;
        let t = |start, len| Some(Text { start, len });
        let records = vec![
            begin(1, 1_000, "span", t(0, 18)),
            end(1, 2_000, "span", t(18, 22)),
            // Whitespace around nothing is no args: the span is whole and carries the end's alone.
            begin(1, 3_000, "spaced", t(40, 3)),
            end(1, 4_000, "spaced", t(43, 10)),
        ];
        let ev = written(records, text);
        let phases: Vec<&str> = ev.iter().map(|e| e["ph"].as_str().expect("ph")).collect();
        assert_eq!(phases, ["B", "E", "X"]);
        assert_eq!(
            (ev[0]["args"].clone(), ev[1]["args"].clone()),
            (json!({"error": "strict"}), json!({"error": "ValueError"}))
        );
        assert_eq!(ev[2]["args"], json!({"rows": 1}));
    }

    #[test]
    fn a_batch_line_in_another_shape_is_parsed_in_full() {
        // tracing-chrome with source locations writes ".file" first: the quick search fails, the full
        // parse finds the same batch.
        let (mut f, batches) = fixup();
        let id = batches.file(Batch { parts: vec![(vec![instant("a")], String::new())], ..Batch::default() });
        let line = json!({".file": "src/batch.rs", ".line": 1, "args": {"k": "batch", "p": id.to_string()},
                          "cat": "lynshim", "name": "event", "ph": "i", "pid": 1, "tid": 0, "ts": 9.0, "s": "t"});
        f.write_all(b"[\n").unwrap();
        f.write_all(line.to_string().as_bytes()).unwrap();
        f.flush().unwrap();
        assert_eq!(f.batches_parsed_in_full(), 1);
        f.close();
        let ev = events(&f.into_inner());
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0]["ph"].as_str(), ev[0]["ts"].as_f64()), (Some("i"), Some(2000.0)));
    }

    #[test]
    fn file_holds_only_whole_events_until_flushed() {
        let (mut f, batches) = fixup();
        f.write_all(b"[\n").unwrap();
        f.write_all(&batch_line(&batches, vec![instant("a")], "")).unwrap();
        f.write_all(b",\n").unwrap();
        let second = batch_line(&batches, vec![instant("b")], "");
        f.write_all(&second[..second.len() / 2]).unwrap();
        // Cut mid-event (as SIGKILL would leave tracing-chrome's buffer): what reached the sink parses.
        let ev = events(&f.into_inner());
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["name"], "a");
    }

    #[test]
    fn closing_an_empty_trace_gives_valid_json() {
        let (mut f, _) = fixup();
        f.close();
        assert_eq!(events(&f.into_inner()), Vec::<Value>::new());
    }

    #[test]
    fn own_events_become_counters_flows_and_complete_events() {
        let (mut f, _) = fixup();
        f.write_own(&OwnEvent::Counter { name: "rss".into(), bytes: 1234, at: Some("exit".into()) }, 9);
        f.write_own(&OwnEvent::Flow { end: FlowEnd::In, id: 5, name: "req".into(), cat: "server-client".into() }, 9);
        let startup = OwnEvent::Complete {
            name: "start-up".into(),
            cat: "startup".into(),
            start_us: -1000.0,
            dur_us: 1000.0,
            args: Map::new(),
        };
        f.write_own(&startup, 9);
        f.close();
        let ev = events(&f.into_inner());
        assert_eq!(ev[0]["ph"], "C");
        assert_eq!(ev[0]["args"]["bytes"], 1234);
        assert_eq!(ev[0]["at"], "exit");
        assert_eq!(ev[1]["ph"], "f");
        assert_eq!(ev[1]["bp"], "e");
        assert_eq!(ev[2]["ph"], "X");
        assert_eq!(ev[2]["ts"], 0.0);
        assert_eq!(ev[2]["dur"], 1000.0);
    }

    /// A name is escaped again whenever the name or the category is another string, whatever its text.
    #[test]
    fn span_names_are_written_again_for_another_name_or_category() {
        let mut names = SpanNames::default();
        let (probe_name, probe_cat) = ("lynguine.util.yaml.header_field", "field");
        assert_eq!(names.of(probe_name, probe_cat), br#""lynguine.util.yaml.header_field","cat":"field""#);
        assert_eq!(names.of(probe_name, probe_cat), br#""lynguine.util.yaml.header_field","cat":"field""#);
        let owned = String::from("lynguine.util.yaml.header_fiel\"d");
        assert_eq!(names.of(&owned, probe_cat), br#""lynguine.util.yaml.header_fiel\"d","cat":"field""#);
        assert_eq!(names.of(&owned[..4], probe_cat), br#""lyng","cat":"field""#, "same address, shorter");
        assert_eq!(names.of(&owned[..4], "import"), br#""lyng","cat":"import""#);
        assert_eq!(names.of("", ""), br#""","cat":"""#);
    }

    #[test]
    fn names_that_need_escaping_stay_valid_json() {
        let name = "say \"hi\"\n";
        let records =
            vec![Record::Begin { tid: 1, ns: 0, name: name.to_owned().into(), cat: "user".into(), args: None }];
        assert_eq!(written(records, "")[0]["name"], name);
    }

    /// A sink whose writes, flushes or finish fail, as a full disk's do: a buffered sink such as
    /// [`crate::tracefile::TraceFile`] reports it at the flush or the finish, not the write.
    struct Failing {
        at: &'static str,
        finished: bool,
    }
    impl Failing {
        fn fail_at(&self, at: &str) -> io::Result<()> {
            if self.at == at {
                Err(io::Error::other("disk full"))
            } else {
                Ok(())
            }
        }
    }
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.fail_at("write").map(|()| buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.fail_at("flush")
        }
    }
    impl Sink for Failing {
        fn finish(&mut self) -> io::Result<()> {
            self.finished = true;
            self.fail_at("finish")
        }
    }

    #[test]
    fn a_failing_sink_warns_once_and_never_errors() {
        for at in ["write", "flush", "finish"] {
            let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&warnings);
            let batches = Batches::default();
            let out = Failing { at, finished: false };
            let mut f =
                Fixup::new(out, batches.clone(), 1, 0, 0.0, Box::new(move |m| sink.lock().unwrap().push(m.to_owned())));
            for _ in 0..3 {
                let line = batch_line(&batches, vec![instant("a")], "");
                assert!(f.write(&line).is_ok());
                assert!(f.write(b"\n").is_ok());
                assert!(f.flush().is_ok());
            }
            f.close();
            assert_eq!(warnings.lock().unwrap().len(), 1, "failing at {at}");
            // A sink that failed earlier is not asked to finish: its file is cut short already.
            assert_eq!(f.into_inner().finished, at == "finish", "failing at {at}");
        }
    }

    #[test]
    fn the_sink_is_flushed_at_each_flush_and_finished_at_close() {
        #[derive(Default)]
        struct Counting {
            bytes: Vec<u8>,
            flushed_at: Vec<usize>,
            finished_at: Option<usize>,
        }
        impl Write for Counting {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                self.flushed_at.push(self.bytes.len());
                Ok(())
            }
        }
        impl Sink for Counting {
            fn finish(&mut self) -> io::Result<()> {
                self.finished_at = Some(self.bytes.len());
                Ok(())
            }
        }
        let batches = Batches::default();
        let mut f = Fixup::new(Counting::default(), batches.clone(), 1, 0, 0.0, Box::new(|_| {}));
        let line = batch_line(&batches, vec![instant("a")], "");
        f.write_all(&line).unwrap();
        f.write_all(b"\n").unwrap();
        assert!(f.out.flushed_at.is_empty(), "a write alone does not flush the sink");
        f.flush().unwrap();
        assert_eq!(f.out.flushed_at, [f.out.bytes.len()], "a flush sends everything so far");
        f.close();
        let out = f.into_inner();
        assert_eq!(out.finished_at, Some(out.bytes.len()), "finished after the closing bracket");
        assert!(out.bytes.ends_with(b"\n]\n"));
    }
}
