//! Loading lynshim trace files: one [`ProcessTrace`] per file, problems collected per file, never a panic.
//!
//! lynshim writes one event per line inside a JSON array (`[` on the first line). A file cut short by a
//! crash lacks the closing `]` and may end in half an event: it is read as far as it goes and reported
//! as truncated. Anything else that is not such a file — empty, not UTF-8, not JSON, JSON of another
//! shape, larger than the limit — is skipped with a one-line reason naming the file.
//!
//! Nothing is summed before it is checked ([`check`]): a line that cannot be trusted is dropped and
//! counted, a file with too much of it is skipped, each file is read once however many paths lead to
//! it ([`discover`]), and two files telling the same process are counted once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use lynschema::{arg, category, event, RunRecord};

pub mod check;
pub mod discover;
pub mod link;
use check::{Dropped, Reason};
use rayon::prelude::*;
use rustc_hash::FxHashSet;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One span of a process: a `B`/`E` pair, or an `X` event.
#[derive(Debug, Clone)]
pub struct Span {
    /// Shared by every span of that name loaded on the same thread (see [`Names`]), as is `cat`.
    pub name: Arc<str>,
    pub cat: Arc<str>,
    pub tid: i64,
    pub start_us: f64,
    pub dur_us: f64,
    /// Duration minus the durations of the spans directly inside it.
    pub self_us: f64,
    pub depth: u32,
    /// Index in [`ProcessTrace::spans`] of the span directly enclosing this one.
    pub parent: Option<u32>,
    /// The span's args, when it has any (most spans, imports, have none): see [`Span::args`].
    pub args: Option<Box<Map<String, Value>>>,
    /// The file ended before this span did.
    pub unfinished: bool,
}

impl Span {
    /// The span's args (`B` and `E` halves together), empty when it has none.
    pub fn args(&self) -> &Map<String, Value> {
        static NONE: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        self.args.as_deref().unwrap_or(&NONE)
    }
}

/// `args` boxed, or `None` when empty: an empty map in every span was a sixth of a span's size.
fn boxed(args: Map<String, Value>) -> Option<Box<Map<String, Value>>> {
    (!args.is_empty()).then(|| Box::new(args))
}

/// An RSS sample (counter event).
#[derive(Debug, Clone)]
pub struct Sample {
    pub ts_us: f64,
    pub bytes: f64,
    /// The [`lynschema::moment`] it was taken at, when lynshim labelled it.
    pub at: Option<Arc<str>>,
}

/// Who wrote a trace file (see [`lynschema::arg::SOURCE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// lynshim inside a Python process: spans, imports, calls.
    #[default]
    Python,
    /// The preload library: one program image of any process, its life and exit only.
    Exec,
}

/// Everything one trace file says about its process.
#[derive(Debug, Clone)]
pub struct ProcessTrace {
    pub file: PathBuf,
    pub pid: i64,
    pub ppid: i64,
    pub run_id: String,
    pub label: String,
    pub command: String,
    pub lamd_command: Option<String>,
    pub wall_zero_ns: u64,
    /// Microseconds from the process's start to its last event (its exit, when it exited normally).
    pub end_us: f64,
    pub exit_status: Option<i64>,
    pub exit_signal: Option<i64>,
    pub peak_rss: Option<f64>,
    pub rss: Vec<Sample>,
    pub spans: Vec<Span>,
    pub truncated: bool,
    pub parent_trace: Option<String>,
    pub lynguine_version: Option<String>,
    pub bytes: u64,
    pub source: Source,
    /// The process's start in clock ticks since boot: with the pid, what tells processes apart.
    pub start_ticks: Option<u64>,
    /// Microseconds from the zero to the exit event, when there is one.
    pub exit_us: Option<f64>,
    /// CPU time of the whole process, from the exit event.
    pub cpu_us: Option<f64>,
    /// For a Python trace: what its process's exec record adds (see [`link`]).
    pub image: Option<link::Image>,
    /// For an exec record: its program exec'd another, which has a record of its own (see [`link`]).
    pub replaced_by_exec: bool,
    /// The lines of its file that were dropped, and why (see [`check`]).
    pub dropped: Dropped,
}

impl ProcessTrace {
    /// The program's name: the first word of its command.
    pub fn program(&self) -> &str {
        self.command.split_whitespace().next().unwrap_or("?")
    }

    /// When the process ended, in microseconds from its zero: the end of its exec record when one
    /// was linked (the real exit, after the interpreter's teardown), else its last event.
    pub fn end_us(&self) -> f64 {
        self.image.as_ref().map_or(self.end_us, |image| image.end_us.max(self.end_us))
    }

    /// The lamd command, or the command's first word: how processes are grouped.
    pub fn group(&self) -> String {
        self.lamd_command
            .clone()
            .unwrap_or_else(|| self.command.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    }
}

/// A file that was skipped (or, for warnings, read only in part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

/// What loading a set of inputs gave.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The Python processes (lynshim's traces).
    pub processes: Vec<ProcessTrace>,
    /// The preload library's records of programs that no Python trace covers (make, sh, gpp, pandoc…),
    /// each ending where it exited or exec'd the next program (see [`link`]).
    pub programs: Vec<ProcessTrace>,
    pub runs: Vec<RunRecord>,
    /// Files skipped.
    pub skipped: Vec<Problem>,
    /// Files read in part (cut short), and paths passed over because what they lead to was read by
    /// another path.
    pub warnings: Vec<Problem>,
    /// Files read with some lines dropped (see [`check`]): the message says how many and why.
    pub damaged: Vec<Problem>,
    pub bytes: u64,
}

impl Loaded {
    /// Whether anything was skipped or dropped: what the exit status says.
    pub fn lost_anything(&self) -> bool {
        !self.skipped.is_empty() || !self.damaged.is_empty()
    }

    /// The runs the loaded processes belong to.
    pub fn run_ids(&self) -> std::collections::BTreeSet<&str> {
        self.processes.iter().map(|p| p.run_id.as_str()).collect()
    }
}

/// Options for [`load`].
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub max_file_bytes: u64,
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { max_file_bytes: 1 << 30, progress: false }
    }
}

/// Span names and categories, each held once: a build has millions of spans but a few thousand names
/// (the same modules are imported by every process), and an allocation per span was a good part of
/// loading.
#[derive(Debug, Default)]
pub struct Names(FxHashSet<Arc<str>>);

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
struct RawEvent<'a> {
    #[serde(borrow)]
    ph: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    cat: Cow<'a, str>,
    ts: f64,
    dur: f64,
    tid: i64,
    args: Map<String, Value>,
    /// The memory moment of a counter sample (see [`lynschema::arg::AT`]).
    #[serde(borrow)]
    at: Option<Cow<'a, str>>,
}

/// A trace, and a warning when its file was cut short.
type TraceAndWarning = (ProcessTrace, Option<String>);

/// Load every trace and run record under `inputs`, in parallel.
pub fn load(inputs: &[PathBuf], options: LoadOptions) -> Loaded {
    let discover::Found { traces, runs: run_files, mut skipped, notes } = discover::collect(inputs);
    let bar = if options.progress && traces.len() > 20 {
        let bar = ProgressBar::new(traces.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} files, {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("loading traces");
        bar
    } else {
        ProgressBar::hidden()
    };
    let results: Vec<(PathBuf, Result<TraceAndWarning, String>)> = traces
        .par_iter()
        .map_init(<(Vec<u8>, Names)>::default, |(buffer, names), path| {
            let result = read_trace_with(path, options.max_file_bytes, buffer, names);
            bar.inc(1);
            (path.clone(), result)
        })
        .collect();
    bar.finish_and_clear();

    let mut loaded = Loaded { warnings: notes, ..Loaded::default() };
    for file in run_files {
        match fs::read(&file).map_err(|e| e.to_string()).and_then(|b| {
            serde_json::from_slice::<RunRecord>(&b).map_err(|e| format!("not a lynshim run record ({e})"))
        }) {
            Ok(run) => loaded.runs.push(run),
            Err(message) => skipped.push(Problem { file, message }),
        }
    }
    let runs: HashMap<&str, (u64, u64)> =
        loaded.runs.iter().map(|r| (r.run_id.as_str(), (r.start_unix_ns, r.end_unix_ns))).collect();
    // The same process told by two files of the same source (a copied file): counted once, from the
    // more complete file.
    let mut told: HashMap<(bool, String, i64, Option<u64>, u64), usize> = HashMap::new();
    let mut kept: Vec<TraceAndWarning> = Vec::with_capacity(results.len());
    for (file, result) in results {
        let (trace, warning) = match result {
            Ok(read) => read,
            Err(message) => {
                skipped.push(Problem { file, message });
                continue;
            }
        };
        if let Some(&(start, end)) = runs.get(trace.run_id.as_str()) {
            if let Some(message) = outside_run(trace.wall_zero_ns, start, end) {
                skipped.push(Problem { file, message });
                continue;
            }
        }
        let key =
            (trace.source == Source::Exec, trace.run_id.clone(), trace.pid, trace.start_ticks, trace.wall_zero_ns);
        if let Some(&index) = told.get(&key) {
            let completeness = |t: &ProcessTrace| (!t.truncated, std::cmp::Reverse(t.dropped.total()), t.bytes);
            let mut other = (trace, warning);
            if completeness(&other.0) > completeness(&kept[index].0) {
                std::mem::swap(&mut kept[index], &mut other);
            }
            let message = format!(
                "the same process as {} (same run, pid, start and source): counted once, from that file",
                kept[index].0.file.display()
            );
            skipped.push(Problem { file: other.0.file, message });
            continue;
        }
        told.insert(key, kept.len());
        kept.push((trace, warning));
    }
    for (trace, warning) in kept {
        loaded.bytes += trace.bytes;
        if let Some(message) = warning {
            loaded.warnings.push(Problem { file: trace.file.clone(), message });
        }
        if !trace.dropped.is_empty() {
            let message = format!("{}: the rest read", trace.dropped.describe());
            loaded.damaged.push(Problem { file: trace.file.clone(), message });
        }
        loaded.processes.push(trace);
    }
    loaded.skipped = skipped;
    link::link(&mut loaded);
    loaded
}

/// Why a process whose zero is `zero_ns` cannot belong to the run from `start_ns` to `end_ns`, if it
/// cannot: it began more than a second before the run, or more than a week after it ended (a process
/// may outlive its run, as a server left running does, but not begin long after it).
fn outside_run(zero_ns: u64, start_ns: u64, end_ns: u64) -> Option<String> {
    const SECOND_NS: u64 = 1_000_000_000;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let week_ns = (check::MAX_TS_US * 1000.0) as u64;
    #[allow(clippy::cast_precision_loss)]
    let seconds = |ns: u64| ns as f64 / 1e9;
    if zero_ns.saturating_add(SECOND_NS) < start_ns {
        Some(format!(
            "starts {:.3} s before its run (run.json): its zero (wall_zero_ns) is garbage",
            seconds(start_ns - zero_ns)
        ))
    } else if zero_ns > end_ns.saturating_add(week_ns) {
        Some(format!(
            "starts {:.0} s after its run ended (run.json): its zero (wall_zero_ns) is garbage",
            seconds(zero_ns - end_ns)
        ))
    } else {
        None
    }
}

/// Read and parse one file; `Ok` carries a warning when the file was cut short.
pub fn read_trace(path: &Path, max_bytes: u64) -> Result<TraceAndWarning, String> {
    read_trace_with(path, max_bytes, &mut Vec::new(), &mut Names::default())
}

/// [`read_trace`] into a buffer and with names kept between files: a thread loading hundreds of files
/// reuses one allocation instead of faulting in fresh pages for each, and holds each name once.
fn read_trace_with(
    path: &Path,
    max_bytes: u64,
    buffer: &mut Vec<u8>,
    names: &mut Names,
) -> Result<TraceAndWarning, String> {
    read_limited(path, max_bytes, buffer)?;
    let mut trace = parse_trace_with(buffer, names)?;
    trace.file = path.to_path_buf();
    let warning = trace.truncated.then(|| "cut short (no closing ]): read as far as it goes".to_owned());
    Ok((trace, warning))
}

/// Read a file into `buffer`, unless it is larger than `max_bytes`.
fn read_limited(path: &Path, max_bytes: u64, buffer: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|e| format!("cannot read it ({e})"))?;
    let size = file.metadata().map_err(|e| format!("cannot read it ({e})"))?.len();
    if size > max_bytes {
        return Err(format!("too large ({size} bytes, limit {max_bytes}; raise it with --max-file-size)"));
    }
    buffer.clear();
    // A file still being written may have grown since: read no more than the limit either way.
    file.take(max_bytes.saturating_add(1)).read_to_end(buffer).map_err(|e| format!("cannot read it ({e})"))?;
    if buffer.len() as u64 > max_bytes {
        return Err(format!("too large (over {max_bytes} bytes; raise the limit with --max-file-size)"));
    }
    Ok(())
}

/// Parse the bytes of one trace file.
pub fn parse_trace(bytes: &[u8]) -> Result<ProcessTrace, String> {
    parse_trace_with(bytes, &mut Names::default())
}

fn parse_trace_with(bytes: &[u8], names: &mut Names) -> Result<ProcessTrace, String> {
    let mut builder = Builder::new(bytes.len() as u64, names, exit_bound(bytes));
    let mut dropped = Dropped::default();
    let framing = for_each_line(bytes, &mut dropped, |number, line| {
        let event = match plain_event(line) {
            Some(event) => event,
            None => serde_json::from_str::<RawEvent<'_>>(line)?,
        };
        builder.push(event, number, line.len());
        Ok(())
    })?;
    builder.finish(framing, dropped)
}

/// The latest time a line of this file may bear: a second after its process's exit event, which
/// lynshim writes among its last lines, or a week when there is none (a file cut short).
fn exit_bound(bytes: &[u8]) -> f64 {
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

/// The events of one trace file, as they are, and whether the file was cut short: for merging. Lines
/// numbered in `dropped` (the loader's [`ProcessTrace::dropped`]) are left out, and so are lines that
/// are not JSON.
pub fn read_events(path: &Path, max_bytes: u64, dropped: &[u32]) -> Result<(Vec<Value>, bool), String> {
    let mut bytes = Vec::new();
    read_limited(path, max_bytes, &mut bytes)?;
    let mut events = Vec::new();
    let framing = for_each_line(&bytes, &mut Dropped::default(), |number, line| {
        let value = serde_json::from_str::<Value>(line)?;
        if !u32::try_from(number).is_ok_and(|n| dropped.binary_search(&n).is_ok()) {
            events.push(value);
        }
        Ok(())
    })?;
    if !events.iter().any(|e| e.get("name").and_then(Value::as_str) == Some(event::PROCESS)) {
        return Err(format!("no `{}` event: not written by lynshim", event::PROCESS));
    }
    Ok((events, framing.truncated))
}

/// What [`for_each_line`] saw of a file's framing.
#[derive(Debug, Clone, Copy)]
struct Framing {
    /// No closing `]`: cut short.
    truncated: bool,
    /// Event lines, read or dropped (a last line cut in half is not counted).
    events: usize,
}

/// lynshim's framing: `[` alone on the first line, one event per line, `]` at the end unless cut short.
/// Each event line goes to `read` with its number, in order. A line `read` cannot parse, that is not
/// UTF-8 or that is longer than [`check::MAX_LINE`] is dropped and counted in `dropped` — unless it is
/// the last, which is a file cut short in the middle of a line.
fn for_each_line<'a>(
    bytes: &'a [u8],
    dropped: &mut Dropped,
    mut read: impl FnMut(usize, &'a str) -> Result<(), serde_json::Error>,
) -> Result<Framing, String> {
    // Nearly every file is UTF-8 throughout and is checked once; else line by line.
    let whole = std::str::from_utf8(bytes);
    // Lines found with the memchr crate's vectorised search: `str::lines` was a tenth of loading.
    let mut start = 0;
    let line_ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    let mut lines = line_ends
        .map(|end| {
            let line = match whole {
                Ok(text) => Ok(&text[start..end]),
                Err(_) => std::str::from_utf8(&bytes[start..end]),
            };
            start = end + 1;
            line.map(str::trim)
        })
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.is_empty()));
    match lines.next() {
        None => return Err("empty file".to_owned()),
        Some((_, Err(err))) => return Err(format!("not UTF-8 text ({err})")),
        Some((_, Ok("["))) => {}
        Some((_, Ok(line))) if line.starts_with('[') => {
            return Err("not a lynshim trace (JSON, but not one event per line)".to_owned());
        }
        Some(_) => return Err("not a lynshim trace (expected `[` on the first line)".to_owned()),
    }
    // A line that could not be read: dropped if any line follows it, else the file was cut in it.
    let mut unreadable: Option<(usize, Reason)> = None;
    let mut events = 0;
    for (number, line) in lines {
        if let Some((number, reason)) = unreadable.take() {
            dropped.add(reason, number);
        }
        let Ok(line) = line else {
            events += 1;
            unreadable = Some((number, Reason::NotUtf8));
            continue;
        };
        let line = line.trim_start_matches(',').trim_end_matches(',');
        if line == "]" {
            return Ok(Framing { truncated: false, events });
        }
        if line.is_empty() {
            continue;
        }
        events += 1;
        if line.len() > check::MAX_LINE {
            dropped.add(Reason::TooLong, number);
        } else if read(number, line).is_err() {
            unreadable = Some((number, Reason::Unreadable));
        }
    }
    Ok(Framing { truncated: true, events: events - usize::from(unreadable.is_some()) })
}

/// Nearly every line lynshim writes is the begin or end of an import, shaped exactly like
/// `{"cat":"import","name":"numpy","ph":"B","pid":7,"tid":7,"ts":210.5}` (serde_json writes keys in
/// sorted order), or, from newer sessions, like [`written_in_order`]'s. Such a line is read here without a general JSON parser — which was most of the
/// time spent loading a build — and any other line (args, escapes, another key order) gives `None`
/// and goes to serde_json. Numbers are read as serde_json reads them ([`PlainNumber`]), so both paths
/// give the same event to the bit (a test compares them on every recorded line).
fn plain_event(line: &str) -> Option<RawEvent<'_>> {
    let Some(rest) = line.strip_prefix(r#"{"cat":""#) else {
        return written_in_order(line);
    };
    let (cat, rest) = plain_string(rest)?;
    let (dur, rest) = match rest.strip_prefix(r#","dur":"#) {
        Some(rest) => number(rest)?,
        None => (0.0, rest),
    };
    let (name, rest) = plain_string(rest.strip_prefix(r#","name":""#)?)?;
    let (ph, rest) = plain_string(rest.strip_prefix(r#","ph":""#)?)?;
    let rest = skip_pid(rest.strip_prefix(r#","pid":"#)?)?;
    let (tid, rest) = number(rest.strip_prefix(r#","tid":"#)?)?;
    let (ts, rest) = number(rest.strip_prefix(r#","ts":"#)?)?;
    (rest == "}").then(|| RawEvent {
        ph: Cow::Borrowed(ph),
        name: Cow::Borrowed(name),
        cat: Cow::Borrowed(cat),
        ts,
        dur,
        tid,
        args: Map::new(),
        at: None,
    })
}

/// The same line as lynshim's session writes it since its keys follow the event's own order:
/// `{"ph":"B","name":"numpy","cat":"import","pid":7,"tid":7,"ts":210.5}` (no `dur`, no args).
fn written_in_order(line: &str) -> Option<RawEvent<'_>> {
    let (ph, rest) = plain_string(line.strip_prefix(r#"{"ph":""#)?)?;
    let (name, rest) = plain_string(rest.strip_prefix(r#","name":""#)?)?;
    let (cat, rest) = plain_string(rest.strip_prefix(r#","cat":""#)?)?;
    let rest = skip_pid(rest.strip_prefix(r#","pid":"#)?)?;
    let (tid, rest) = number(rest.strip_prefix(r#","tid":"#)?)?;
    let (ts, rest) = number(rest.strip_prefix(r#","ts":"#)?)?;
    (rest == "}").then(|| RawEvent {
        ph: Cow::Borrowed(ph),
        name: Cow::Borrowed(name),
        cat: Cow::Borrowed(cat),
        ts,
        dur: 0.0,
        tid,
        args: Map::new(),
        at: None,
    })
}

/// The text of a JSON string up to its closing quote (`text` starts after the opening one), and what
/// follows the quote; `None` if it holds an escape or a control character, which JSON forbids bare.
fn plain_string(text: &str) -> Option<(&str, &str)> {
    let end = string_end(text.as_bytes())?;
    (text.as_bytes()[end] == b'"').then(|| (&text[..end], &text[end + 1..]))
}

/// The index of the first `"`, `\` or control character in `bytes`, looking at eight bytes at a time:
/// byte by byte, this scan over span names was a third of reading a line.
///
/// For each of the three tests a mask flags the bytes that pass it; a mask can also flag bytes above
/// (later than) one it rightly flagged, never below, so the lowest flag of all is the first such byte.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Bytes below `n` (for n <= 0x80); with n = 1, the zero bytes.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let found = below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1) | below(x, 0x20);
        if found != 0 {
            return Some(offset + found.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).map(|i| offset + i)
}

/// Skip the pid (the file's own pid is in its `lynshim.process` event): a plain positive integer, or
/// `None` to leave the line to serde_json.
fn skip_pid(text: &str) -> Option<&str> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let plain = digits > 0 && (digits == 1 || !text.starts_with('0'));
    (plain && text.as_bytes().get(digits) == Some(&b',')).then(|| &text[digits..])
}

/// A JSON number up to the next `,` or `}`, and the text from that delimiter on.
fn number<T: PlainNumber>(text: &str) -> Option<(T, &str)> {
    let bytes = text.as_bytes();
    if let Some((decimal, len)) = ShortDecimal::prefix(bytes) {
        if matches!(bytes.get(len), Some(b',' | b'}')) {
            return Some((T::from_decimal(decimal)?, &text[len..]));
        }
    }
    let end = bytes.iter().position(|&b| b == b',' || b == b'}')?;
    Some((serde_json::from_str(&text[..end]).ok()?, &text[end..]))
}

/// A number read exactly as serde_json reads it. Short plain decimals — what lynshim writes — are
/// read here: with at most 15 digits the digits are exact in an f64, and so is a power of ten up to
/// 10^15, so the one division serde_json makes (and a correctly rounded parse) gives these same bits.
/// Anything else (exponents, long fractions) is read by serde_json itself.
trait PlainNumber: Sized + for<'de> Deserialize<'de> {
    fn from_decimal(decimal: ShortDecimal) -> Option<Self>;

    #[cfg(test)]
    fn read(text: &str) -> Option<Self> {
        match ShortDecimal::parse(text.as_bytes()) {
            Some(decimal) => Self::from_decimal(decimal),
            None => serde_json::from_str(text).ok(),
        }
    }
}

/// A number of JSON's form `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 15 digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShortDecimal {
    negative: bool,
    /// All the digits, as one integer.
    digits: u64,
    /// How many of them follow the point.
    fraction_digits: usize,
}

impl ShortDecimal {
    const MAX_DIGITS: usize = 15;

    /// The whole of `text` as a short decimal.
    #[cfg(test)]
    fn parse(text: &[u8]) -> Option<Self> {
        Self::prefix(text).and_then(|(decimal, len)| (len == text.len()).then_some(decimal))
    }

    /// A short decimal at the start of `text`, read up to the first byte that is neither a digit nor
    /// its point, and how many bytes it took; `None` if those bytes are no short decimal.
    fn prefix(text: &[u8]) -> Option<(Self, usize)> {
        let negative = text.first() == Some(&b'-');
        let start = usize::from(negative);
        let (mut digits, mut count, mut point, mut end) = (0_u64, 0_usize, None, text.len());
        for (i, &b) in text.iter().enumerate().skip(start) {
            match b {
                b'0'..=b'9' => {
                    digits = digits * 10 + u64::from(b - b'0');
                    count += 1;
                    if count > Self::MAX_DIGITS {
                        return None;
                    }
                }
                b'.' if point.is_none() && i > start => point = Some(i),
                _ => {
                    end = i;
                    break;
                }
            }
        }
        let body = &text[start..end];
        // JSON forbids leading zeros ("07") and a point with no digit after it ("1.").
        let leading_zero = body.len() > 1 && body[0] == b'0' && body[1] != b'.';
        let fraction_digits = point.map_or(0, |p| end - p - 1);
        if count == 0 || leading_zero || (point.is_some() && fraction_digits == 0) {
            return None;
        }
        Some((Self { negative, digits, fraction_digits }, end))
    }
}

impl PlainNumber for f64 {
    fn from_decimal(d: ShortDecimal) -> Option<Self> {
        const POWERS_OF_TEN: [f64; ShortDecimal::MAX_DIGITS + 1] =
            [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
        #[allow(clippy::cast_precision_loss)] // at most 15 digits: exact
        let magnitude = d.digits as f64 / POWERS_OF_TEN[d.fraction_digits];
        Some(if d.negative { -magnitude } else { magnitude })
    }
}

impl PlainNumber for i64 {
    fn from_decimal(d: ShortDecimal) -> Option<Self> {
        if d.fraction_digits > 0 {
            return None; // not an integer: serde_json says so for the whole line
        }
        let magnitude = i64::try_from(d.digits).ok()?;
        Some(if d.negative { -magnitude } else { magnitude })
    }
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
struct Builder<'n> {
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
    fn new(bytes: u64, names: &'n mut Names, bound_us: f64) -> Self {
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
    fn push(&mut self, ev: RawEvent<'_>, line: usize, len: usize) {
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

    fn finish(self, framing: Framing, unreadable: Dropped) -> Result<ProcessTrace, String> {
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

/// Is this span a call into lynguine or lamd (not an import, start-up or lynshim's own)?
pub fn is_call(cat: &str) -> bool {
    category::WORK.contains(&cat)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"[
{"args":{"pid":7,"run_id":"r","command":"mdfield title talk.md","lamd_command":"mdfield","wall_zero_ns":1000},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":7,"tid":7,"ts":0.0},
{"cat":"startup","dur":100.0,"name":"interpreter start-up","ph":"X","pid":7,"tid":7,"ts":0.0},
{"cat":"import","name":"pandas","ph":"B","pid":7,"tid":7,"ts":200.0},
{"cat":"import","name":"numpy","ph":"B","pid":7,"tid":7,"ts":210.0},
{"cat":"import","name":"numpy","ph":"E","pid":7,"tid":7,"ts":260.0},
{"cat":"import","name":"pandas","ph":"E","pid":7,"tid":7,"ts":300.0},
{"args":{"bytes":100},"cat":"memory","name":"rss","ph":"C","pid":7,"tid":7,"ts":301.0},
{"args":{"exit_status":0},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":7,"tid":7,"ts":400.0}
]"#;

    #[test]
    fn pairs_spans_with_depth_and_self_time() {
        let t = parse_trace(GOOD.as_bytes()).expect("parses");
        assert!(!t.truncated);
        assert_eq!(t.pid, 7);
        assert_eq!(t.exit_status, Some(0));
        let pandas = t.spans.iter().find(|s| &*s.name == "pandas").expect("pandas");
        assert_eq!((pandas.dur_us, pandas.self_us, pandas.depth), (100.0, 50.0, 0));
        let numpy = t.spans.iter().find(|s| &*s.name == "numpy").expect("numpy");
        assert_eq!(numpy.depth, 1);
        assert_eq!(numpy.parent.map(|i| &*t.spans[i as usize].name), Some("pandas"));
        assert_eq!(t.end_us, 400.0);
    }

    #[test]
    fn truncated_file_is_read_as_far_as_it_goes() {
        let cut = &GOOD[..GOOD.find(r#"{"cat":"import","name":"pandas","ph":"E""#).expect("found") + 20];
        let t = parse_trace(cut.as_bytes()).expect("parses");
        assert!(t.truncated);
        let pandas = t.spans.iter().find(|s| &*s.name == "pandas").expect("pandas");
        assert!(pandas.unfinished);
    }

    /// Event lines of the recorded fixture traces, and lines made to sit on either side of the fast
    /// path's edges.
    fn lines_to_compare() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/traces");
        let mut lines = Vec::new();
        for entry in fs::read_dir(dir).expect("fixture traces (tests/fixtures/record.sh)") {
            let path = entry.expect("entry").path();
            if path.to_string_lossy().ends_with(".lynshim.json") {
                let text = fs::read_to_string(&path).expect("read");
                lines.extend(text.lines().map(|l| l.trim().trim_matches(',').to_owned()).filter(|l| l.len() > 1));
            }
        }
        let plain = |cat: &str, name: &str, ph: &str, tid: &str, ts: &str| {
            format!(r#"{{"cat":"{cat}","name":"{name}","ph":"{ph}","pid":7,"tid":{tid},"ts":{ts}}}"#)
        };
        for ts in [
            "0",
            "0.0",
            "-0.0",
            "12.5",
            "1e3",
            "1.5E-2",
            "35670.198000000004",
            "123456789012345",
            "1234567890123456",
            "07",
            "1.",
            ".5",
            "-",
            "",
            "+1",
            "NaN",
            "1_0",
            "0.000000000000001",
            "99999999999999.9",
        ] {
            lines.push(plain("import", "numpy", "B", "7", ts));
        }
        for tid in ["-3", "0", "1.5", "9223372036854775807", "9223372036854775808", "01", "1e2"] {
            lines.push(plain("import", "numpy", "E", tid, "1.0"));
        }
        for name in [r#"a\"b"#, r"a\\b", "a\u{1}b", "émigré", "", r"\u00e9"] {
            lines.push(plain("import", name, "B", "7", "1.0"));
        }
        let in_order = |ph: &str, name: &str, tid: &str, ts: &str| {
            format!(r#"{{"ph":"{ph}","name":"{name}","cat":"import","pid":7,"tid":{tid},"ts":{ts}}}"#)
        };
        for (ts, tid, name) in [
            ("1.0", "7", "x"),
            ("07", "7", "x"),
            ("1e3", "7", "x"),
            ("NaN", "7", "x"),
            ("1.0", "1.5", "x"),
            ("1.0", "7", r#"a\"b"#),
            ("35670.198000000004", "-3", "émigré"),
            ("", "7", "x"),
        ] {
            lines.push(in_order("B", name, tid, ts));
        }
        lines.push(r#"{"ph":"B","name":"x","cat":"import","pid":7,"tid":7,"ts":1.0,"args":{"a":1}}"#.to_owned());
        lines.push(r#"{"ph":"B","name":"x","cat":"import","pid":7,"tid":7,"ts":1.0}}"#.to_owned());
        lines.push(r#"{"cat":"import","dur":12.5,"name":"x","ph":"X","pid":7,"tid":7,"ts":1.0}"#.to_owned());
        lines.push(r#"{"name":"x","cat":"import","ph":"B","pid":7,"tid":7,"ts":1.0}"#.to_owned());
        lines.push(r#"{"cat":"import","name":"x","ph":"B","pid":7,"tid":7,"ts":1.0}x"#.to_owned());
        lines.push(r#"{"cat":"import","name":"x","ph":"B","pid":7,"tid":7,"ts":1.0,"ts":2.0}"#.to_owned());
        lines
    }

    /// The fast path reads a line exactly as serde_json does, or leaves it to serde_json.
    #[test]
    fn plain_lines_read_as_serde_json_reads_them() {
        let lines = lines_to_compare();
        let mut read_fast = 0;
        for line in &lines {
            let Some(fast) = plain_event(line) else { continue };
            read_fast += 1;
            let slow = serde_json::from_str::<RawEvent<'_>>(line)
                .unwrap_or_else(|e| panic!("the fast path read a line serde_json rejects ({e}): {line}"));
            assert_eq!(
                (&*fast.ph, &*fast.name, &*fast.cat, fast.tid, fast.ts.to_bits(), fast.dur.to_bits()),
                (&*slow.ph, &*slow.name, &*slow.cat, slow.tid, slow.ts.to_bits(), slow.dur.to_bits()),
                "{line}"
            );
            assert!(slow.args.is_empty(), "{line}");
        }
        // Nearly every recorded line without args takes the fast path (those with args, GC spans and
        // calls, are left to serde_json).
        let plain = lines.iter().filter(|l| !l.contains(r#""args""#)).count();
        assert!(read_fast * 20 > plain * 19, "{read_fast} of {plain} lines without args");
    }

    /// A reproducible stream of pseudo-random numbers (xorshift64).
    fn random(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Short decimals give serde_json's bits, over many numbers of every length the fast path takes.
    #[test]
    fn short_decimals_match_serde_json() {
        let mut next = random(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let digits = 1 + (next() % 15) as usize;
            let value = next() % 10_u64.pow(u32::try_from(digits).expect("small"));
            let text = value.to_string();
            let point = (next() as usize) % (text.len() + 1);
            let text =
                if point == 0 || point == text.len() { text } else { format!("{}.{}", &text[..point], &text[point..]) };
            let text = if next() % 4 == 0 { format!("-{text}") } else { text };
            let expected: f64 = serde_json::from_str(&text).expect("a JSON number");
            let got = <f64 as PlainNumber>::read(&text).expect("read");
            assert_eq!(got.to_bits(), expected.to_bits(), "{text}");
            assert!(ShortDecimal::parse(text.as_bytes()).is_some(), "{text}");
        }
        for text in ["07", "1.", ".5", "-", "", "+1", "1e5", "1234567890123456", "1.2.3", "--1", "0x1"] {
            assert_eq!(ShortDecimal::parse(text.as_bytes()), None, "{text}");
        }
    }

    /// Eight bytes at a time finds what a byte-by-byte look finds, wherever it is and whatever surrounds it.
    #[test]
    fn string_end_matches_a_plain_scan() {
        let mut next = random(0x2545_f491_4f6c_dd1d);
        let alphabet =
            [b'a', b'z', b'.', b'_', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xa9, 0xff, b'!', b']'];
        for _ in 0..100_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| if next() % 6 == 0 { alphabet[(next() % 16) as usize] } else { b'a' + (next() % 26) as u8 })
                .collect();
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(string_end(&bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn names_are_held_once() {
        let mut names = Names::default();
        let (a, b) = (names.get("pandas"), names.get("pandas"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*names.get("numpy"), "numpy");
    }

    #[test]
    fn bad_files_get_reasons() {
        let reason = |bytes: &[u8]| parse_trace(bytes).err().unwrap_or_default();
        assert_eq!(reason(b""), "empty file");
        assert!(reason(b"\xff\xfe").starts_with("not UTF-8"));
        assert!(reason(b"hello").contains("expected `[`"));
        assert!(reason(b"[{\"a\":1}]").contains("one event per line"));
        assert!(reason(b"[\n{\"ph\":\"B\"}\ngarbage\n{\"ph\":\"E\"}\n]").contains("not written by lynshim"));
        assert!(reason(b"[\n{\"ph\":\"B\"}\n]").contains("not written by lynshim"));
        assert!(parse_trace(b"[\n[1,2]\n]").is_err());
        // Garbage in the process event itself: nothing in the file can be placed.
        assert!(reason(GOOD.replace(r#""pid":7,"run_id""#, r#""pid":0,"run_id""#).as_bytes()).contains("garbage"));
        assert!(reason(GOOD.replace(r#","wall_zero_ns":1000"#, "").as_bytes()).contains("wall_zero_ns"));
        assert!(reason(GOOD.replace(r#""wall_zero_ns":1000"#, r#""wall_zero_ns":18446744073709551615"#).as_bytes())
            .contains("garbage"));
    }

    /// A process with `n` imports one after another, 10 µs apart, then a lamd call, then its exit.
    fn many(n: usize) -> Vec<String> {
        let mut lines = vec![
            "[".to_owned(),
            r#"{"args":{"pid":7,"run_id":"r","command":"mdfield title talk.md","wall_zero_ns":1000},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":7,"tid":7,"ts":0.0},"#.to_owned(),
            r#"{"cat":"startup","dur":100.0,"name":"interpreter start-up","ph":"X","pid":7,"tid":7,"ts":0.0},"#.to_owned(),
            r#"{"cat":"program","name":"main program","ph":"B","pid":7,"tid":7,"ts":100.0},"#.to_owned(),
        ];
        for i in 0..n {
            let ts = 200 + 10 * i;
            lines.push(format!(r#"{{"cat":"import","name":"m{i}","ph":"B","pid":7,"tid":7,"ts":{ts}.0}},"#));
            lines.push(format!(r#"{{"cat":"import","name":"m{i}","ph":"E","pid":7,"tid":7,"ts":{}.0}},"#, ts + 5));
        }
        let end = 200 + 10 * n;
        lines.push(format!(r#"{{"cat":"lamd","name":"main","ph":"B","pid":7,"tid":7,"ts":{end}.0}},"#));
        lines.push(format!(r#"{{"cat":"lamd","name":"main","ph":"E","pid":7,"tid":7,"ts":{}.0}},"#, end + 50));
        lines.push(format!(
            r#"{{"cat":"program","name":"main program","ph":"E","pid":7,"tid":7,"ts":{}.0}},"#,
            end + 60
        ));
        lines.push(format!(r#"{{"args":{{"exit_status":0}},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":7,"tid":7,"ts":{}.0}}"#, end + 100));
        lines.push("]".to_owned());
        lines
    }

    fn parse_lines(lines: &[String]) -> Result<ProcessTrace, String> {
        parse_trace(lines.join("\n").as_bytes())
    }

    /// Per thread, the self times of its spans add up to no more than the process's life, and every
    /// span lies inside it.
    fn assert_within_life(t: &ProcessTrace) {
        let wall = t.end_us();
        assert!(wall.is_finite() && (0.0..=check::MAX_TS_US + check::SLACK_US).contains(&wall), "{wall}");
        let mut by_thread: HashMap<i64, f64> = HashMap::new();
        for s in &t.spans {
            assert!(s.start_us >= 0.0 && s.dur_us >= 0.0 && s.self_us >= 0.0 && s.self_us <= s.dur_us, "{s:?}");
            assert!(s.start_us + s.dur_us <= wall * (1.0 + 1e-12) + 1e-6, "{s:?} beyond {wall}");
            *by_thread.entry(s.tid).or_default() += s.self_us;
        }
        for (tid, total) in by_thread {
            assert!(total <= wall * (1.0 + 1e-9) + 1e-3, "thread {tid}: {total} µs of self time in {wall} µs");
        }
    }

    fn reasons(t: &ProcessTrace) -> Vec<Reason> {
        Reason::ALL.iter().copied().filter(|&r| t.dropped.counts[r as usize] > 0).collect()
    }

    #[test]
    fn a_clean_trace_drops_nothing() {
        let t = parse_lines(&many(100)).expect("parses");
        assert!(t.dropped.is_empty());
        assert_eq!(t.spans.len(), 103);
        assert_within_life(&t);
        let t = parse_trace(GOOD.as_bytes()).expect("parses");
        assert!(t.dropped.is_empty());
    }

    #[test]
    fn a_huge_timestamp_is_dropped_with_the_span_it_would_have_ended() {
        let mut lines = many(100);
        // The issue's case: one end at 1e308 (a disk error, a hostile writer).
        lines[11] = lines[11].replace(r#""ts":235.0"#, r#""ts":1e308"#);
        let t = parse_lines(&lines).expect("one bad line of 200 is not too much");
        assert_eq!(reasons(&t), vec![Reason::Timestamp, Reason::BeginWithoutEnd]);
        assert_eq!(t.dropped.lines, vec![11, 12]);
        assert_eq!(t.end_us, 1300.0);
        assert_eq!(t.spans.len(), 102);
        assert_within_life(&t);
        assert!(t.dropped.describe().starts_with("2 lines dropped (1 timestamp"), "{}", t.dropped.describe());
        // Just under a week, but after the exit: dropped too.
        let mut lines = many(100);
        lines[11] = lines[11].replace(r#""ts":235.0"#, r#""ts":600000000000.0"#);
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::AfterExit, Reason::BeginWithoutEnd]);
        assert_within_life(&t);
        for garbage in ["NaN", "-2e6", "\"12\""] {
            let mut lines = many(100);
            lines[11] = lines[11].replace(r#""ts":235.0"#, &format!(r#""ts":{garbage}"#));
            let t = parse_lines(&lines).expect("parses");
            assert_eq!(t.dropped.total(), 2, "{garbage}");
            assert_within_life(&t);
        }
    }

    #[test]
    fn a_begin_without_an_end_is_dropped_in_a_whole_file_and_kept_in_a_cut_one() {
        let mut lines = many(100);
        lines.remove(lines.len() - 4); // lamd main's end
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::BeginWithoutEnd]);
        assert!(t.spans.iter().all(|s| &*s.name != "main"), "the rest of the process is not work");
        assert_within_life(&t);
        // …and the main program that enclosed it still ends where it did.
        let program = t.spans.iter().find(|s| &*s.name == "main program").expect("kept");
        assert_eq!(program.dur_us, 1160.0);
        // The lamd span left open by a file cut short lasts until its last event, as before.
        let cut = &lines[..lines.len() - 3];
        let t = parse_lines(cut).expect("parses");
        assert!(t.truncated && t.dropped.is_empty());
        assert!(t.spans.iter().any(|s| &*s.name == "main" && s.unfinished));
        // Each unfinished span's time is its unfinished parent's child time (not counted twice).
        assert_within_life(&t);
        let program = t.spans.iter().find(|s| &*s.name == "main program").expect("kept");
        // Its own time: 100 µs before the first import and 5 µs after each of the 100 imports.
        assert_eq!(program.self_us, 600.0);
    }

    #[test]
    fn an_end_closes_its_own_begin_and_the_unended_ones_inside_are_dropped() {
        let mut lines = many(100);
        // m3's end is lost: m4 ends normally, then m3's parent (the main program) ends.
        lines.remove(11);
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::BeginWithoutEnd]);
        assert!(t.spans.iter().all(|s| &*s.name != "m3"));
        let program = t.spans.iter().position(|s| &*s.name == "main program").expect("kept");
        let m4 = t.spans.iter().find(|s| &*s.name == "m4").expect("kept");
        assert_eq!((m4.parent, m4.depth), (Some(u32::try_from(program).expect("small")), 1));
        assert_within_life(&t);
        // An end nothing began.
        let mut lines = many(100);
        lines.insert(12, r#"{"cat":"import","name":"ghost","ph":"E","pid":7,"tid":7,"ts":236.0},"#.to_owned());
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::EndWithoutBegin]);
        assert_eq!(t.spans.len(), 103);
    }

    #[test]
    fn time_running_backwards_negative_durations_and_unknown_phases_are_dropped() {
        let mut lines = many(100);
        lines[20] = lines[20].replace(r#""ts":280.0"#, r#""ts":100.0"#); // m8 begins before m7 ended
        lines.insert(30, r#"{"cat":"x","dur":-5.0,"name":"x","ph":"X","pid":7,"tid":7,"ts":330.0},"#.to_owned());
        lines.insert(40, r#"{"cat":"x","name":"x","ph":"Q","pid":7,"tid":7,"ts":330.0},"#.to_owned());
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(
            reasons(&t),
            vec![Reason::Duration, Reason::Backwards, Reason::EndWithoutBegin, Reason::UnknownPhase]
        );
        assert_within_life(&t);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_dropped_with_its_ends() {
        let mut lines = many(0)[..4].to_vec();
        let depth = check::MAX_DEPTH + 8;
        for i in 0..depth {
            lines.push(format!(r#"{{"cat":"import","name":"d{i}","ph":"B","pid":7,"tid":7,"ts":{}.0}},"#, 150 + i));
        }
        for i in (0..depth).rev() {
            lines.push(format!(
                r#"{{"cat":"import","name":"d{i}","ph":"E","pid":7,"tid":7,"ts":{}.0}},"#,
                150 + 2 * depth - i
            ));
        }
        lines.push(r#"{"cat":"program","name":"main program","ph":"E","pid":7,"tid":7,"ts":2000.0},"#.to_owned());
        lines.push(
            r#"{"args":{"exit_status":0},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":7,"tid":7,"ts":2100.0}"#
                .to_owned(),
        );
        lines.push("]".to_owned());
        let t = parse_lines(&lines).expect("parses");
        // The main program is depth 0: 511 imports fit under it.
        assert_eq!(t.dropped.counts[Reason::TooDeep as usize], 2 * 9);
        assert_eq!(t.spans.iter().map(|s| s.depth).max(), Some(u32::try_from(check::MAX_DEPTH - 1).expect("small")));
        assert_within_life(&t);
    }

    #[test]
    fn bad_bytes_and_oversized_lines_in_the_middle_are_dropped() {
        let mut text = many(100).join("\n").into_bytes();
        let at = text.windows(4).position(|w| w == b"m50\"").expect("m50");
        text[at] = 0xff;
        let t = parse_trace(&text).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::NotUtf8, Reason::EndWithoutBegin]);
        let mut lines = many(100);
        lines[30] = lines[30]
            .replace(r#""ph":"B""#, &format!(r#""args":{{"x":"{}"}},"ph":"B""#, "a".repeat(check::MAX_EVENT_LINE)));
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::TooLong, Reason::EndWithoutBegin]);
        // Not a JSON event at all.
        let mut lines = many(100);
        lines[30] = "{\"cat\":".to_owned();
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(reasons(&t), vec![Reason::Unreadable, Reason::EndWithoutBegin]);
        assert!(!t.truncated);
    }

    #[test]
    fn too_much_damage_skips_the_file_with_its_reasons() {
        let mut lines = many(100);
        for line in lines.iter_mut().skip(10).step_by(9) {
            *line = "garbage".to_owned();
        }
        let reason = parse_lines(&lines).expect_err("too damaged");
        assert!(reason.starts_with("too damaged to trust: ") && reason.contains("not a JSON event"), "{reason}");
    }

    #[test]
    fn an_x_inside_an_open_span_is_its_child() {
        let mut lines = many(1);
        lines.insert(5, r#"{"cat":"gc","dur":2.0,"name":"gc","ph":"X","pid":7,"tid":7,"ts":201.0},"#.to_owned());
        let t = parse_lines(&lines).expect("parses");
        assert!(t.dropped.is_empty());
        let m0 = t.spans.iter().find(|s| &*s.name == "m0").expect("m0");
        assert_eq!((m0.dur_us, m0.self_us), (5.0, 3.0));
        assert_eq!(t.spans.iter().find(|s| &*s.name == "gc").map(|s| s.depth), Some(2));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lynload-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn the_same_process_in_two_files_is_counted_once_and_both_are_named() {
        let dir = scratch("twice");
        let text = many(10).join("\n");
        fs::write(dir.join("7-1-a.lynshim.json"), &text).expect("write");
        fs::write(dir.join("7-1-copy.lynshim.json"), &text).expect("write");
        // Another process with the same pid (reused) and a later zero: not the same.
        fs::write(
            dir.join("7-2-b.lynshim.json"),
            text.replace(r#""wall_zero_ns":1000"#, r#""wall_zero_ns":5000000000"#),
        )
        .expect("write");
        let loaded = load(std::slice::from_ref(&dir), LoadOptions::default());
        assert_eq!(loaded.processes.len(), 2);
        assert_eq!(loaded.skipped.len(), 1);
        let message = loaded.skipped[0].to_string();
        assert!(
            message.contains("7-1-copy") && message.contains("7-1-a") && message.contains("counted once"),
            "{message}"
        );
        assert!(loaded.lost_anything());
        // A copy cut short sorts first, but the whole file is the one counted.
        fs::write(dir.join("0-cut.lynshim.json"), &text[..text.len() / 2]).expect("write");
        let loaded = load(std::slice::from_ref(&dir), LoadOptions::default());
        assert_eq!(loaded.processes.len(), 2);
        assert!(loaded.processes.iter().all(|p| !p.truncated));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert!(
            loaded.skipped.iter().any(|s| s.file.ends_with("0-cut.lynshim.json") && s.message.contains("7-1-a")),
            "{:?}",
            loaded.skipped
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_process_starting_outside_its_run_is_skipped_and_damage_is_reported() {
        let dir = scratch("run");
        let run = RunRecord {
            format_version: 1,
            run_id: "r".into(),
            label: None,
            command: vec!["make".into()],
            cwd: "/".into(),
            start_unix_ns: 1_000_000_000_000,
            end_unix_ns: 2_000_000_000_000,
            exit_status: Some(0),
            exit_signal: None,
            children_user_s: 0.0,
            children_sys_s: 0.0,
            traced_processes: 2,
        };
        fs::write(dir.join("run.json"), serde_json::to_vec(&run).expect("json")).expect("write");
        let inside = many(10).join("\n").replace(r#""wall_zero_ns":1000"#, r#""wall_zero_ns":1500000000000"#);
        fs::write(dir.join("7-1-a.lynshim.json"), inside).expect("write");
        let mut lines = many(100);
        lines[1] = lines[1]
            .replace(r#""wall_zero_ns":1000"#, r#""wall_zero_ns":1500000000000"#)
            .replace(r#""pid":7"#, r#""pid":8"#);
        lines[30] = "garbage".to_owned();
        fs::write(dir.join("8-1-b.lynshim.json"), lines.join("\n")).expect("write");
        // Its zero 999 s before the run began.
        let outside = many(10)
            .join("\n")
            .replace(r#""pid":7"#, r#""pid":9"#)
            .replace(r#""wall_zero_ns":1000"#, r#""wall_zero_ns":1000000000"#);
        fs::write(dir.join("9-1-c.lynshim.json"), outside).expect("write");
        let loaded = load(std::slice::from_ref(&dir), LoadOptions::default());
        assert_eq!(loaded.processes.len(), 2);
        assert_eq!(loaded.skipped.len(), 1);
        assert!(loaded.skipped[0].to_string().contains("before its run"), "{:?}", loaded.skipped);
        assert_eq!(loaded.damaged.len(), 1);
        assert!(loaded.damaged[0].message.starts_with("2 lines dropped"), "{:?}", loaded.damaged);
        let _ = fs::remove_dir_all(&dir);
    }
}
