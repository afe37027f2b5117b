//! The writer behind tracing-chrome: turns its output into the lynshim trace layout.
//!
//! tracing-chrome serialises every span and event on its own thread, but it writes `pid: 1`, numbers
//! threads from 0 in order of first use, names spans after their static callsite, writes no process
//! names and no counters, and buffers 8 KiB in a `BufWriter` whose `unwrap()` on a write error would kill
//! its thread. We give it this `Write` instead, and fix each line up on the way to the file:
//!
//! - lynshim's events arrive as `tracing` events with a kind ([`F_KIND`]) and a payload ([`F_PAYLOAD`]):
//!   batches ([`kind::BATCH`]) of span begins and ends and of lynshim's own events, recorded on the
//!   traced threads (see [`crate::session`]); nothing else is written through tracing-chrome, and its own
//!   thread-name lines, which carry its thread numbers, are dropped. Each element becomes an event of
//!   its own with the time and OS thread id it was recorded with, args as real JSON objects: spans
//!   (`B`/`E`), thread names, process metadata, counters (`C`), complete events (`X`) and flows (`s`/`f`);
//! - every event gets the real pid;
//! - timestamps are shifted so that 0 is the process's start, not the moment tracing began;
//! - the array is re-framed so that the file only ever holds whole events: a file cut short by SIGKILL
//!   still parses as a Chrome trace with a missing `]`, which the format allows;
//! - the closing `]` is ours to write ([`Fixup::close`]), not tracing-chrome's: the exit status is only
//!   known in a C `on_exit` handler that runs after thread-local storage is gone, where neither
//!   `tracing` nor tracing-chrome can be used, so the exit event is written directly ([`Fixup::write_own`]);
//! - a failing write (full disk, file removed) is reported once on stderr and later output is dropped,
//!   so the traced program never sees an error from its tracer.

use std::borrow::Cow;
use std::io::{self, Write};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lynschema::{category, event};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Callsite field of lynshim's own events: which kind of event this is.
pub const F_KIND: &str = "k";
/// Callsite field of lynshim's own events: the event's payload as JSON.
pub const F_PAYLOAD: &str = "p";

/// Kinds of lynshim's own events (values of [`F_KIND`]).
pub mod kind {
    /// A JSON array of records, each `[kind, OS thread id, ns since the zero, name, cat, args, payload]`
    /// (trailing nulls left out), in base64 (which tracing-chrome need not escape).
    pub const BATCH: &str = "batch";
    /// A span begins (a batch element with `name`, `cat` and optional `args`).
    pub const BEGIN: &str = "B";
    /// The innermost open span of its thread ends (optional `args` recorded at the end).
    pub const END: &str = "E";
    pub const THREAD: &str = "thread";
    pub const PROCESS: &str = "process";
    pub const EXIT: &str = "exit";
    pub const COUNTER: &str = "counter";
    pub const COMPLETE: &str = "complete";
    pub const INSTANT: &str = "instant";
    pub const FLOW_OUT: &str = "flow_out";
    pub const FLOW_IN: &str = "flow_in";
}

/// The part of a tracing-chrome line that matters: lynshim only writes events (`ph` `i`) with a kind
/// and a payload (see the module doc).
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
    p: Option<Cow<'a, str>>,
}

/// One record of a batch, as `crate::session` writes it: an array, in the order of these fields.
#[derive(Deserialize)]
struct BatchRecord<'a> {
    #[serde(borrow)]
    k: Cow<'a, str>,
    #[serde(default)]
    tid: u64,
    /// Nanoseconds since the zero.
    #[serde(default)]
    t: i64,
    #[serde(default, borrow)]
    name: Option<&'a RawValue>,
    #[serde(default, borrow)]
    cat: Option<&'a RawValue>,
    #[serde(default, borrow)]
    args: Option<&'a RawValue>,
    #[serde(default, borrow)]
    p: Option<&'a RawValue>,
}

/// Where fixed-up events go: a file in production, a `Vec<u8>` in tests.
pub struct Fixup<W: Write> {
    out: W,
    pid: u32,
    /// CLOCK_MONOTONIC at tracing-chrome's zero, to time events written directly.
    zero_mono_ns: u64,
    /// Added to every timestamp: microseconds from the process's start to tracing-chrome's zero.
    shift_us: f64,
    /// Bytes received but not yet ended by a newline (tracing-chrome writes `,\n` before each event).
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline.
    scanned: usize,
    batches_parsed_in_full: usize,
    wrote_any: bool,
    /// tracing-chrome wrote its closing `]` (it is not copied: see [`Fixup::close`]).
    chrome_done: bool,
    /// We wrote ours; nothing more goes to the file.
    finished: bool,
    failed: bool,
    /// Called once, with a message, when writing first fails.
    on_error: Box<dyn FnMut(&str) + Send>,
}

impl<W: Write> Fixup<W> {
    pub fn new(out: W, pid: u32, zero_mono_ns: u64, shift_us: f64, on_error: Box<dyn FnMut(&str) + Send>) -> Self {
        Self {
            out,
            pid,
            zero_mono_ns,
            shift_us,
            pending: Vec::with_capacity(16 * 1024),
            scanned: 0,
            batches_parsed_in_full: 0,
            wrote_any: false,
            chrome_done: false,
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
        let mut batch = Vec::new();
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
    }

    fn fix_line(&mut self, line: &[u8], batch: &mut Vec<u8>) {
        let line = trim_line(line);
        match line {
            b"" | b"[" => {}
            b"]" => self.chrome_done = true,
            _ => {
                // Batches are nearly all of the bytes: their payload is found without parsing the line
                // (tracing-chrome writes args first, keys sorted, and base64 holds no quote).
                if let Some(payload) = batch_payload(line) {
                    self.fix_batch(payload, batch);
                    return;
                }
                // A line we cannot parse is dropped rather than written: the file must stay valid.
                let Ok(line) = serde_json::from_slice::<ChromeLine<'_>>(line) else {
                    return;
                };
                // A batch in another shape (should tracing-chrome change how it writes a line); anything
                // else is tracing-chrome's own thread names, dropped.
                if let Some(ChromeArgs { k: Some(kind), p: Some(payload) }) = line.args.filter(|_| line.ph == "i") {
                    if kind == kind::BATCH {
                        self.batches_parsed_in_full += 1;
                        self.fix_batch(payload.as_bytes(), batch);
                    }
                }
            }
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

    /// A batch of records, each with its own time and OS thread id. Span records are the bulk of a
    /// trace: they are copied through without building JSON values (names, categories and args are
    /// already valid JSON, written by the session).
    fn fix_batch(&mut self, payload: impl AsRef<[u8]>, batch: &mut Vec<u8>) {
        let Ok(decoded) = BASE64.decode(payload) else { return };
        let Ok(records) = serde_json::from_slice::<Vec<BatchRecord<'_>>>(&decoded) else { return };
        for record in records {
            #[allow(clippy::cast_precision_loss)]
            let ts = record.t as f64 / 1000.0 + self.shift_us;
            if record.k == kind::BEGIN || record.k == kind::END {
                self.separate(batch);
                batch.extend_from_slice(br#"{"ph":""#);
                batch.extend_from_slice(record.k.as_bytes());
                batch.extend_from_slice(br#"","name":"#);
                batch.extend_from_slice(record.name.map_or("\"\"", RawValue::get).as_bytes());
                batch.extend_from_slice(br#","cat":"#);
                batch.extend_from_slice(record.cat.map_or("\"\"", RawValue::get).as_bytes());
                batch.extend_from_slice(br#","pid":"#);
                batch.extend_from_slice(itoa::Buffer::new().format(self.pid).as_bytes());
                batch.extend_from_slice(br#","tid":"#);
                batch.extend_from_slice(itoa::Buffer::new().format(record.tid).as_bytes());
                batch.extend_from_slice(br#","ts":"#);
                let _ = serde_json::to_writer(&mut *batch, &ts);
                if let Some(args) = record.args.filter(|a| a.get() != "{}") {
                    batch.extend_from_slice(br#","args":"#);
                    batch.extend_from_slice(args.get().as_bytes());
                }
                batch.push(b'}');
            } else {
                let payload = record.p.and_then(|p| serde_json::from_str(p.get()).ok()).unwrap_or(Value::Null);
                let events = self.fix_own_event(&record.k, payload, record.tid, ts);
                self.write_values(&events, batch);
            }
        }
    }

    fn fix_own_event(&self, kind: &str, p: Value, tid: u64, ts: f64) -> Vec<Value> {
        let pid = self.pid;
        let str_of = |key: &str| p.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
        let args_of = |key: &str| match p.get(key) {
            Some(Value::Object(o)) if !o.is_empty() => Some(Value::Object(o.clone())),
            _ => None,
        };
        match kind {
            kind::THREAD => {
                let os_tid = p.get("tid").and_then(Value::as_u64).unwrap_or(tid);
                vec![json!({"ph": "M", "name": event::THREAD_NAME, "pid": pid, "tid": os_tid,
                            "args": {"name": str_of("name")}})]
            }
            kind::PROCESS => {
                let mut out = vec![json!({"ph": "M", "name": event::PROCESS_NAME, "pid": pid, "tid": tid,
                           "args": {"name": str_of("process_name")}})];
                let labels = str_of("labels");
                if !labels.is_empty() {
                    out.push(json!({"ph": "M", "name": event::PROCESS_LABELS, "pid": pid, "tid": tid,
                                    "args": {"labels": labels}}));
                }
                let mut meta = json!({"ph": "i", "s": "t", "name": event::PROCESS, "cat": category::TRACER,
                                      "pid": pid, "tid": tid, "ts": 0.0});
                if let Some(a) = args_of("args") {
                    meta["args"] = a;
                }
                out.push(meta);
                out
            }
            kind::EXIT | kind::INSTANT => {
                let (name, cat) = if kind == kind::EXIT {
                    (event::EXIT.to_owned(), category::TRACER.to_owned())
                } else {
                    (str_of("name"), str_of("cat"))
                };
                let mut ev = json!({"ph": "i", "s": "t", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts});
                if let Some(a) = args_of("args") {
                    ev["args"] = a;
                }
                vec![ev]
            }
            kind::COUNTER => {
                let value = p.get("value").cloned().unwrap_or(Value::Null);
                let mut ev = json!({"ph": "C", "name": str_of("name"), "cat": category::MEMORY, "pid": pid, "tid": tid,
                                    "ts": ts, "args": {lynschema::arg::BYTES: value}});
                // The moment a sample was taken at stands beside `args`, not in it: every arg of a
                // counter event is a series to Perfetto, which wants numbers there.
                if let Some(at) = p.get(lynschema::arg::AT).filter(|at| at.is_string()) {
                    ev[lynschema::arg::AT] = at.clone();
                }
                vec![ev]
            }
            kind::COMPLETE => {
                let start = p.get("ts").and_then(Value::as_f64).unwrap_or(0.0) + self.shift_us;
                let dur = p.get("dur").and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
                let mut ev = json!({"ph": "X", "name": str_of("name"), "cat": str_of("cat"), "pid": pid,
                                    "tid": tid, "ts": start.max(0.0), "dur": dur});
                if let Some(a) = args_of("args") {
                    ev["args"] = a;
                }
                vec![ev]
            }
            kind::FLOW_OUT | kind::FLOW_IN => {
                let id = p.get("id").cloned().unwrap_or(Value::Null);
                let mut ev = json!({"ph": if kind == kind::FLOW_OUT { "s" } else { "f" },
                                    "name": str_of("name"), "cat": str_of("cat"),
                                    "id": id, "pid": pid, "tid": tid, "ts": ts});
                if kind == kind::FLOW_IN {
                    // Bind to the enclosing slice (the server span), not to the next one.
                    ev["bp"] = "e".into();
                }
                vec![ev]
            }
            _ => Vec::new(),
        }
    }

    fn emit(&mut self, batch: &[u8]) {
        if batch.is_empty() || self.failed {
            return;
        }
        let mut chunk = Vec::with_capacity(batch.len() + 2);
        if !self.wrote_any {
            chunk.extend_from_slice(b"[\n");
        }
        chunk.extend_from_slice(batch);
        self.write_out(&chunk);
        self.wrote_any = true;
    }

    fn write_out(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if let Err(err) = self.out.write_all(bytes).and_then(|()| self.out.flush()) {
            self.failed = true;
            (self.on_error)(&format!("writing the trace failed ({err}); the rest of this trace is lost"));
        }
    }

    /// Write one of lynshim's own events directly, timed now, on OS thread `tid`: for the exit event,
    /// written where tracing can no longer be used.
    pub fn write_own(&mut self, kind: &str, payload: &Value, tid: u64) {
        if self.finished {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let ts = (crate::procinfo::monotonic_ns() as f64 - self.zero_mono_ns as f64) / 1000.0 + self.shift_us;
        let mut batch = Vec::new();
        let events = self.fix_own_event(kind, payload.clone(), tid, ts);
        self.write_values(&events, &mut batch);
        self.emit(&batch);
    }

    /// Write the closing `]` (also when no event was ever written, so the file is valid JSON). Later
    /// output is ignored.
    pub fn close(&mut self) {
        if self.finished {
            return;
        }
        self.process_pending_lines(true);
        let tail: &[u8] = if self.wrote_any { b"\n]\n" } else { b"[\n]\n" };
        self.write_out(tail);
        self.pending.clear();
        self.finished = true;
    }
}

impl<W: Write> Write for Fixup<W> {
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

/// The base64 payload of a batch line as tracing-chrome writes it, or `None` for any other line (which
/// is then parsed in full).
fn batch_payload(line: &[u8]) -> Option<&[u8]> {
    const PREFIX: &[u8] = br#"{"args":{"k":"batch","p":""#;
    let rest = line.strip_prefix(PREFIX)?;
    let end = memchr::memchr(b'"', rest)?;
    rest[end..].starts_with(br#""},"#).then(|| &rest[..end])
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
pub struct SharedFixup<W: Write>(pub std::sync::Arc<std::sync::Mutex<Fixup<W>>>);

impl<W: Write> Write for SharedFixup<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut fixup = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fixup.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut fixup = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        fixup.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixup() -> Fixup<Vec<u8>> {
        Fixup::new(Vec::new(), 4242, 0, 1000.0, Box::new(|_| {}))
    }

    fn events(bytes: &[u8]) -> Vec<Value> {
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        let text = if text.trim_end().ends_with(']') { text } else { format!("{text}\n]") };
        serde_json::from_str(&text).expect("valid JSON array")
    }

    /// A line as tracing-chrome writes one of lynshim's events: kind and payload as string fields.
    fn chrome_line(kind: &str, payload: &str, chrome_tid: u64, ts: f64) -> Vec<u8> {
        let line = json!({"args": {"k": kind, "p": payload}, "cat": "lynshim", "name": "event",
                          "ph": "i", "pid": 1, "tid": chrome_tid, "ts": ts, "s": "t"});
        line.to_string().into_bytes()
    }

    /// A tracing-chrome line carrying `records` as a batch, as a session writes it.
    fn batch_line(records: &Value) -> Vec<u8> {
        chrome_line(kind::BATCH, &BASE64.encode(records.to_string()), 0, 1.0)
    }

    #[test]
    fn batches_become_spans_with_real_pid_tid_time_name_and_args() {
        let mut f = fixup();
        let batch = json!([
            ["thread", 77, 500, null, null, null, {"tid": 77, "name": "MainThread"}],
            ["B", 77, 5000, "lynguine", "import", {"file": "talk.md"}],
            ["E", 77, 9000, "lynguine", "import", {"rows": 3}],
            ["E", 77, 9500, "lynguine", "import"],
            ["counter", 78, 10000, null, null, null, {"name": "rss", "value": 7}],
        ]);
        f.write_all(b"[\n").unwrap();
        let encoded = BASE64.encode(batch.to_string());
        f.write_all(&chrome_line(kind::BATCH, &encoded, 0, 123.0)).unwrap();
        f.flush().unwrap();
        f.write_all(b"\n]").unwrap();
        f.flush().unwrap();
        f.close();
        let ev = events(&f.into_inner());
        assert_eq!(ev.len(), 5);
        assert_eq!(ev[0]["ph"], "M");
        assert_eq!(ev[0]["tid"], 77);
        assert_eq!(ev[1]["ph"], "B");
        assert_eq!(ev[1]["name"], "lynguine");
        assert_eq!(ev[1]["cat"], "import");
        assert_eq!(ev[1]["pid"], 4242);
        assert_eq!(ev[1]["tid"], 77);
        // The recorded time, shifted to the process start; not tracing-chrome's time of the batch.
        assert_eq!(ev[1]["ts"], 1005.0);
        assert_eq!(ev[1]["args"]["file"], "talk.md");
        assert_eq!(ev[2]["ph"], "E");
        assert_eq!(ev[2]["args"], json!({"rows": 3}));
        assert!(ev[3].get("args").is_none());
        assert_eq!(
            (ev[4]["ph"].as_str(), ev[4]["tid"].as_u64(), ev[4]["ts"].as_f64()),
            (Some("C"), Some(78), Some(1010.0))
        );
    }

    #[test]
    fn a_batch_line_in_another_shape_is_parsed_in_full() {
        // tracing-chrome with source locations writes ".file" first: the quick search fails, the full
        // parse finds the same batch.
        let batch = json!([["B", 5, 2000, "f", "compute", {"x": 1}], ["E", 5, 3000, "f", "compute"]]);
        let encoded = BASE64.encode(batch.to_string());
        let line = json!({".file": "src/session.rs", ".line": 1, "args": {"k": kind::BATCH, "p": encoded},
                          "cat": "lynshim", "name": "event", "ph": "i", "pid": 1, "tid": 0, "ts": 9.0, "s": "t"});
        let mut f = fixup();
        f.write_all(b"[\n").unwrap();
        f.write_all(line.to_string().as_bytes()).unwrap();
        f.flush().unwrap();
        assert_eq!(f.batches_parsed_in_full(), 1);
        f.close();
        let ev = events(&f.into_inner());
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0]["ph"].as_str(), ev[0]["ts"].as_f64()), (Some("B"), Some(1002.0)));
        assert_eq!(ev[0]["args"], json!({"x": 1}));
    }

    #[test]
    fn file_holds_only_whole_events_until_flushed() {
        let mut f = fixup();
        let instant = |name: &str| json!([["instant", 7, 1000, null, null, null, {"name": name, "cat": "user"}]]);
        f.write_all(b"[\n").unwrap();
        f.write_all(&batch_line(&instant("a"))).unwrap();
        f.write_all(b",\n").unwrap();
        let second = batch_line(&instant("b"));
        f.write_all(&second[..second.len() / 2]).unwrap();
        // Cut mid-event (as SIGKILL would leave tracing-chrome's buffer): what reached the sink parses.
        let ev = events(&f.into_inner());
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["name"], "a");
    }

    #[test]
    fn closing_an_empty_trace_gives_valid_json() {
        let mut f = fixup();
        f.close();
        assert_eq!(events(&f.into_inner()), Vec::<Value>::new());
    }

    #[test]
    fn own_events_become_counters_flows_and_complete_events() {
        let mut f = fixup();
        f.write_own(kind::COUNTER, &json!({"name": "rss", "value": 1234}), 9);
        f.write_own(kind::FLOW_IN, &json!({"name": "req", "cat": "server-client", "id": 5}), 9);
        f.write_own(kind::COMPLETE, &json!({"name": "start-up", "cat": "startup", "ts": -1000.0, "dur": 1000.0}), 9);
        f.close();
        let ev = events(&f.into_inner());
        assert_eq!(ev[0]["ph"], "C");
        assert_eq!(ev[0]["args"]["bytes"], 1234);
        assert_eq!(ev[1]["ph"], "f");
        assert_eq!(ev[1]["bp"], "e");
        assert_eq!(ev[2]["ph"], "X");
        assert_eq!(ev[2]["ts"], 0.0);
        assert_eq!(ev[2]["dur"], 1000.0);
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_warns_once_and_never_errors() {
        let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&warnings);
        let mut f = Fixup::new(Failing, 1, 0, 0.0, Box::new(move |m| sink.lock().unwrap().push(m.to_owned())));
        for _ in 0..3 {
            let line = batch_line(&json!([["instant", 7, 1000, null, null, null, {"name": "a", "cat": "user"}]]));
            assert!(f.write(&line).is_ok());
            assert!(f.write(b"\n").is_ok());
            assert!(f.flush().is_ok());
        }
        f.close();
        assert_eq!(warnings.lock().unwrap().len(), 1);
    }
}
