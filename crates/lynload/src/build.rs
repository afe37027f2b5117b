//! Building a [`ProcessTrace`] from a file's events, one at a time: pairing `B`/`E` events into spans
//! (each `E` ends the innermost open span of its name), nesting `X` events inside the open span of their
//! thread, self times (a span's duration less its children's), samples and the process's own
//! description, with every event checked first ([`check`]).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use lynschema::{arg, event};
use rustc_hash::FxHashSet;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::check::{self, Dropped, Reason};
use crate::framing::Framing;
use crate::{ProcessTrace, Sample, Source, Span};

/// Span names and categories, each held once: a build has millions of spans but a few thousand names
/// (the same modules are imported by every process), and an allocation per span was a good part of
/// loading.
#[derive(Debug, Default)]
pub(crate) struct Names(FxHashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.0.get(name) {
            return Arc::clone(known);
        }
        let new: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&new));
        new
    }
}

/// One event as it stands in the file. Strings are borrowed from the file's text where they can be (no
/// escapes), so the `E` half of a span, whose name and category repeat the `B`, allocates nothing.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RawEvent<'a> {
    #[serde(borrow)]
    pub(crate) ph: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) name: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) cat: Cow<'a, str>,
    pub(crate) ts: f64,
    pub(crate) dur: f64,
    pub(crate) tid: i64,
    pub(crate) args: Map<String, Value>,
    /// The memory moment of a counter sample (see [`lynschema::arg::AT`]).
    #[serde(borrow)]
    pub(crate) at: Option<Cow<'a, str>>,
}

/// `args` boxed, or `None` when empty: an empty map in every span was a sixth of a span's size.
fn boxed(args: Map<String, Value>) -> Option<Box<Map<String, Value>>> {
    (!args.is_empty()).then(|| Box::new(args))
}

/// The latest time a line of this file may bear: a second after its process's exit event, which
/// lynshim writes among its last lines, or a week when there is none (a file cut short).
pub(crate) fn exit_bound(bytes: &[u8]) -> f64 {
    let mut end = bytes.len();
    for _ in 0..8 {
        let start = memchr::memrchr(b'\n', &bytes[..end]).map_or(0, |i| i + 1);
        let line = &bytes[start..end];
        if memchr::memmem::find(line, event::EXIT.as_bytes()).is_some() {
            let exit = std::str::from_utf8(line)
                .ok()
                .and_then(|text| serde_json::from_str::<RawEvent<'_>>(text.trim().trim_matches(',')).ok());
            if let Some(exit) = exit.filter(|e| e.ph == "i" && e.name == event::EXIT && check::timestamp_ok(e.ts)) {
                return (exit.ts.max(0.0) + check::SLACK_US).min(check::MAX_TS_US);
            }
            break;
        }
        if start == 0 {
            break;
        }
        end = start - 1;
    }
    check::MAX_TS_US
}

fn as_str(args: &Map<String, Value>, key: &str) -> Option<String> {
    args.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A span begun and not yet ended.
#[derive(Clone, Copy)]
struct Open {
    /// Index into the trace's spans.
    index: usize,
    /// The time of its closed children.
    children: f64,
    /// The line of its begin.
    line: usize,
}

/// What is known of one thread while its events are read.
#[derive(Default)]
struct Thread {
    tid: i64,
    /// Its open spans, outermost first.
    stack: Vec<Open>,
    /// The latest time seen on it (the end of an `X`): its next begin or end may not come earlier.
    frontier: f64,
    /// Begins dropped for nesting deeper than [`check::MAX_DEPTH`] and not yet ended.
    too_deep: usize,
}

/// The threads of a process. A process has a few, so they are found by looking, not hashing.
#[derive(Default)]
struct OpenSpans(Vec<Thread>);

impl OpenSpans {
    fn of(&mut self, tid: i64) -> &mut Thread {
        let index = match self.0.iter().position(|t| t.tid == tid) {
            Some(index) => index,
            None => {
                self.0.push(Thread { tid, frontier: f64::NEG_INFINITY, ..Thread::default() });
                self.0.len() - 1
            }
        };
        &mut self.0[index]
    }
}

/// Builds a [`ProcessTrace`] from a file's events, one at a time, checking each (see [`check`]).
pub(crate) struct Builder<'n> {
    names: &'n mut Names,
    trace: ProcessTrace,
    /// Whether the `lynshim.process` event has been seen.
    described: bool,
    /// Why the `lynshim.process` event cannot be believed, if it cannot.
    garbage: Option<String>,
    open: OpenSpans,
    last_ts: f64,
    /// The latest time a line may bear (see [`exit_bound`]).
    bound_us: f64,
    /// Spans dropped after they were begun (never ended): taken out in [`Builder::finish`].
    unended: Vec<usize>,
}

impl<'n> Builder<'n> {
    pub(crate) fn new(bytes: u64, names: &'n mut Names, bound_us: f64) -> Self {
        Self {
            names,
            trace: ProcessTrace {
                file: PathBuf::new(),
                pid: 0,
                ppid: 0,
                run_id: String::new(),
                label: String::new(),
                command: String::new(),
                lamd_command: None,
                wall_zero_ns: 0,
                end_us: 0.0,
                exit_status: None,
                exit_signal: None,
                peak_rss: None,
                rss: Vec::new(),
                // Every span is a `B`/`E` pair (or an `X`) of lines of ~100 bytes.
                spans: Vec::with_capacity(usize::try_from(bytes / 200).unwrap_or(0)),
                truncated: false,
                parent_trace: None,
                lynguine_version: None,
                bytes,
                source: Source::Python,
                start_ticks: None,
                exit_us: None,
                cpu_us: None,
                image: None,
                replaced_by_exec: false,
                dropped: Dropped::default(),
            },
            described: false,
            garbage: None,
            open: OpenSpans::default(),
            last_ts: 0.0,
            bound_us,
            unended: Vec::new(),
        }
    }

    /// The process's own description, from the first `lynshim.process` event.
    fn describe(&mut self, meta: &Map<String, Value>) {
        let trace = &mut self.trace;
        trace.pid = meta.get(arg::PID).and_then(Value::as_i64).unwrap_or(0);
        trace.ppid = meta.get(arg::PPID).and_then(Value::as_i64).unwrap_or(0);
        trace.run_id = as_str(meta, arg::RUN_ID).unwrap_or_default();
        trace.label = as_str(meta, arg::LABEL).unwrap_or_default();
        trace.command = as_str(meta, arg::COMMAND).unwrap_or_default();
        trace.lamd_command = as_str(meta, arg::LAMD_COMMAND);
        let zero = meta.get(arg::WALL_ZERO_NS).and_then(Value::as_u64);
        trace.wall_zero_ns = zero.unwrap_or(0);
        trace.parent_trace = as_str(meta, arg::PARENT_TRACE);
        trace.start_ticks = meta.get(arg::START_TICKS).and_then(Value::as_u64);
        if meta.get(arg::SOURCE).and_then(Value::as_str) == Some(arg::SOURCE_EXEC) {
            trace.source = Source::Exec;
        }
        self.described = true;
        if trace.pid <= 0 {
            self.garbage = Some(format!("its `{}` event is garbage (pid {:?})", event::PROCESS, meta.get(arg::PID)));
        } else if zero.is_none_or(|z| z > check::MAX_WALL_ZERO_NS) {
            self.garbage = Some(format!(
                "its `{}` event is garbage (wall_zero_ns {:?})",
                event::PROCESS,
                meta.get(arg::WALL_ZERO_NS)
            ));
        }
    }

    /// A line dropped: counted, and nothing of it kept.
    fn drop_line(&mut self, reason: Reason, line: usize) {
        self.trace.dropped.add(reason, line);
    }

    /// Read one event, from line `line` of `len` bytes, or drop it.
    pub(crate) fn push(&mut self, ev: RawEvent<'_>, line: usize, len: usize) {
        let ph = ev.ph.as_bytes();
        match ph {
            b"B" | b"E" | b"X" | b"C" => {
                if len > check::MAX_EVENT_LINE {
                    return self.drop_line(Reason::TooLong, line);
                }
            }
            // Metadata (names) bear no time.
            b"M" => return,
            b"i" | b"I" | b"s" | b"t" | b"f" => {}
            _ => return self.drop_line(Reason::UnknownPhase, line),
        }
        if !check::timestamp_ok(ev.ts) {
            return self.drop_line(Reason::Timestamp, line);
        }
        // A clock read a little before the zero: the process's start.
        let ts = ev.ts.max(0.0);
        let dur = if ph == b"X" { ev.dur } else { 0.0 };
        if !check::duration_ok(dur) {
            return self.drop_line(Reason::Duration, line);
        }
        if ts + dur > self.bound_us {
            return self.drop_line(Reason::AfterExit, line);
        }
        let trace = &mut self.trace;
        match ph {
            b"B" => {
                let thread = self.open.of(ev.tid);
                if thread.too_deep > 0 || thread.stack.len() >= check::MAX_DEPTH {
                    thread.too_deep += 1;
                    return self.drop_line(Reason::TooDeep, line);
                }
                if ts < thread.frontier - check::ROUNDING_US {
                    return self.drop_line(Reason::Backwards, line);
                }
                let ts = ts.max(thread.frontier);
                thread.frontier = ts;
                self.last_ts = self.last_ts.max(ts);
                let parent = thread.stack.last().map(|o| u32::try_from(o.index).unwrap_or(u32::MAX));
                thread.stack.push(Open { index: trace.spans.len(), children: 0.0, line });
                trace.spans.push(Span {
                    name: self.names.get(&ev.name),
                    cat: self.names.get(&ev.cat),
                    tid: ev.tid,
                    start_us: ts,
                    dur_us: 0.0,
                    self_us: 0.0,
                    depth: u32::try_from(thread.stack.len() - 1).unwrap_or(u32::MAX),
                    parent,
                    args: boxed(ev.args),
                    unfinished: false,
                });
            }
            b"E" => {
                let thread = self.open.of(ev.tid);
                if thread.too_deep > 0 {
                    thread.too_deep -= 1;
                    return self.drop_line(Reason::TooDeep, line);
                }
                if ts < thread.frontier - check::ROUNDING_US {
                    return self.drop_line(Reason::Backwards, line);
                }
                // It ends the innermost open span of its name (the innermost of all when it names none):
                // spans begun inside that one and never ended are dropped.
                let spans = &trace.spans;
                let found = if ev.name.is_empty() {
                    thread.stack.len().checked_sub(1)
                } else {
                    thread.stack.iter().rposition(|o| *spans[o.index].name == *ev.name)
                };
                let Some(at) = found else {
                    return self.drop_line(Reason::EndWithoutBegin, line);
                };
                while thread.stack.len() > at + 1 {
                    let unended = thread.stack.pop().expect("deeper than at");
                    trace.dropped.add(Reason::BeginWithoutEnd, unended.line);
                    self.unended.push(unended.index);
                    // Its ended children are its parent's now.
                    if let Some(parent) = thread.stack.last_mut() {
                        parent.children += unended.children;
                    }
                }
                let ts = ts.max(thread.frontier);
                thread.frontier = ts;
                self.last_ts = self.last_ts.max(ts);
                let open = thread.stack.pop().expect("found");
                let span = &mut trace.spans[open.index];
                span.dur_us = (ts - span.start_us).max(0.0);
                span.self_us = (span.dur_us - open.children).max(0.0);
                if !ev.args.is_empty() {
                    span.args.get_or_insert_with(Box::default).extend(ev.args);
                }
                let dur = span.dur_us;
                if let Some(parent) = thread.stack.last_mut() {
                    parent.children += dur;
                }
            }
            b"X" => {
                let thread = self.open.of(ev.tid);
                // As deep as a begin would be, or inside a span dropped for its depth: dropped like one
                // (a whole span has no end to drop with it).
                if thread.too_deep > 0 || thread.stack.len() >= check::MAX_DEPTH {
                    return self.drop_line(Reason::TooDeep, line);
                }
                if ts < thread.frontier - check::ROUNDING_US {
                    return self.drop_line(Reason::Backwards, line);
                }
                let ts = ts.max(thread.frontier);
                thread.frontier = ts + dur;
                self.last_ts = self.last_ts.max(ts + dur);
                // Inside whatever span is open on its thread.
                let parent = thread.stack.last_mut().map(|open| {
                    open.children += dur;
                    u32::try_from(open.index).unwrap_or(u32::MAX)
                });
                trace.spans.push(Span {
                    name: self.names.get(&ev.name),
                    cat: self.names.get(&ev.cat),
                    tid: ev.tid,
                    start_us: ts,
                    dur_us: dur,
                    self_us: dur,
                    depth: u32::try_from(thread.stack.len()).unwrap_or(u32::MAX),
                    parent,
                    args: boxed(ev.args),
                    unfinished: false,
                });
            }
            b"C" => {
                let bytes = ev.args.get(arg::BYTES).and_then(Value::as_f64).unwrap_or(0.0);
                if !check::amount_ok(bytes, check::MAX_BYTES) {
                    return self.drop_line(Reason::Value, line);
                }
                if ev.name == event::PEAK_RSS {
                    trace.peak_rss = Some(bytes);
                } else if ev.name == event::RSS {
                    let at = ev.at.as_deref().map(|at| self.names.get(at));
                    trace.rss.push(Sample { ts_us: ts, bytes, at });
                }
            }
            b"i" if ev.name == event::PROCESS && !self.described => self.describe(&ev.args),
            b"i" if ev.name == event::EXIT => {
                let amounts = [arg::CPU_USER_US, arg::CPU_SYS_US, arg::PEAK_RSS_BYTES]
                    .map(|key| ev.args.get(key).and_then(Value::as_f64));
                let [user, sys, peak] = amounts;
                let cpu_ok = |v: Option<f64>| v.is_none_or(|v| check::amount_ok(v, check::MAX_TS_US * 1024.0));
                if !(cpu_ok(user) && cpu_ok(sys) && peak.is_none_or(|v| check::amount_ok(v, check::MAX_BYTES))) {
                    return self.drop_line(Reason::Value, line);
                }
                trace.exit_us = Some(ts);
                if let (Some(user), Some(sys)) = (user, sys) {
                    trace.cpu_us = Some(user + sys);
                }
                trace.exit_status = ev.args.get(arg::EXIT_STATUS).and_then(Value::as_i64);
                trace.exit_signal = ev.args.get(arg::EXIT_SIGNAL).and_then(Value::as_i64);
                trace.lynguine_version = as_str(&ev.args, arg::LYNGUINE_VERSION);
                if trace.peak_rss.is_none() {
                    trace.peak_rss = peak;
                }
            }
            _ => {}
        }
        self.last_ts = self.last_ts.max(ts + dur);
    }

    pub(crate) fn finish(self, framing: Framing, unreadable: Dropped) -> Result<ProcessTrace, String> {
        if !self.described {
            return Err(format!("no `{}` event: not written by lynshim", event::PROCESS));
        }
        if let Some(garbage) = self.garbage {
            return Err(garbage);
        }
        let Self { mut trace, open, last_ts, mut unended, .. } = self;
        trace.truncated = framing.truncated;
        trace.end_us = last_ts;
        for thread in open.0 {
            // Innermost first: each unfinished span is a child of the one outside it.
            let mut inner = 0.0;
            for open in thread.stack.into_iter().rev() {
                if framing.truncated {
                    // Spans the file ended inside: they last until its last event.
                    let span = &mut trace.spans[open.index];
                    span.dur_us = (last_ts - span.start_us).max(0.0);
                    span.self_us = (span.dur_us - open.children - inner).max(0.0);
                    span.unfinished = true;
                    inner = span.dur_us;
                } else {
                    // A whole file whose span never ended: not the rest of the process.
                    trace.dropped.add(Reason::BeginWithoutEnd, open.line);
                    unended.push(open.index);
                }
            }
        }
        if !unreadable.is_empty() {
            for (count, more) in trace.dropped.counts.iter_mut().zip(unreadable.counts) {
                *count += more;
            }
            trace.dropped.lines.extend(unreadable.lines);
        }
        if !trace.dropped.is_empty() {
            trace.dropped.lines.sort_unstable();
            let dropped = trace.dropped.total() as usize;
            #[allow(clippy::cast_precision_loss)]
            if dropped as f64 > check::MAX_DROPPED_SHARE * framing.events.max(1) as f64 {
                return Err(format!(
                    "too damaged to trust: {} of {} event lines ({})",
                    dropped,
                    framing.events,
                    trace.dropped.describe()
                ));
            }
        }
        if !unended.is_empty() {
            remove_spans(&mut trace.spans, &unended);
        }
        Ok(trace)
    }
}

/// Take the spans at `removed` out of `spans`: their children move up to the nearest span kept.
fn remove_spans(spans: &mut Vec<Span>, removed: &[usize]) {
    let mut gone = vec![false; spans.len()];
    for &index in removed {
        gone[index] = true;
    }
    // For each old index: its new index if kept, else its nearest kept ancestor's (parents come first).
    let mut moved: Vec<Option<u32>> = Vec::with_capacity(spans.len());
    let mut depths: Vec<u32> = Vec::with_capacity(spans.len());
    for (index, span) in spans.iter_mut().enumerate() {
        let parent = span.parent.and_then(|p| moved.get(p as usize).copied().flatten());
        if gone[index] {
            moved.push(parent);
        } else {
            span.parent = parent;
            span.depth = parent.map_or(0, |p| depths[p as usize] + 1);
            moved.push(Some(u32::try_from(depths.len()).unwrap_or(u32::MAX)));
            depths.push(span.depth);
        }
    }
    let mut index = 0;
    spans.retain(|_| {
        index += 1;
        !gone[index - 1]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_held_once() {
        let mut names = Names::default();
        let (a, b) = (names.get("pandas"), names.get("pandas"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*names.get("numpy"), "numpy");
    }
}
