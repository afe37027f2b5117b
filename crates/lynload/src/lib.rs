//! Loading lynshim trace files: one [`ProcessTrace`] per file, problems collected per file, never a panic.
//!
//! lynshim writes one event per line inside a JSON array (`[` on the first line). A file cut short by a
//! crash lacks the closing `]` and may end in half an event: it is read as far as it goes and reported
//! as truncated. Anything else that is not such a file — empty, not UTF-8, not JSON, JSON of another
//! shape, larger than the limit — is skipped with a one-line reason naming the file.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use lynschema::{arg, category, event, files, RunRecord};

pub mod link;
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
    /// Files read in part (cut short).
    pub warnings: Vec<Problem>,
    pub bytes: u64,
}

impl Loaded {
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

/// Trace files and run records under `inputs` (files, or directories searched recursively).
pub fn collect_files(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<Problem>) {
    let mut traces = Vec::new();
    let mut runs = Vec::new();
    let mut problems = Vec::new();
    let mut stack: Vec<PathBuf> = inputs.to_vec();
    while let Some(path) = stack.pop() {
        match fs::metadata(&path) {
            Err(err) => problems.push(Problem { file: path, message: format!("cannot read it ({err})") }),
            Ok(meta) if meta.is_dir() => match fs::read_dir(&path) {
                Ok(entries) => stack.extend(entries.filter_map(Result::ok).map(|e| e.path())),
                Err(err) => problems.push(Problem { file: path, message: format!("cannot list it ({err})") }),
            },
            Ok(_) => {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name == files::RUN_RECORD {
                    runs.push(path);
                } else if files::is_trace_file_name(name) || inputs.contains(&path) {
                    traces.push(path);
                }
            }
        }
    }
    traces.sort();
    runs.sort();
    (traces, runs, problems)
}

/// A trace, and a warning when its file was cut short.
type TraceAndWarning = (ProcessTrace, Option<String>);

/// Load every trace and run record under `inputs`, in parallel.
pub fn load(inputs: &[PathBuf], options: LoadOptions) -> Loaded {
    let (traces, run_files, mut skipped) = collect_files(inputs);
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

    let mut loaded = Loaded::default();
    for (file, result) in results {
        match result {
            Ok((trace, warning)) => {
                loaded.bytes += trace.bytes;
                if let Some(message) = warning {
                    loaded.warnings.push(Problem { file: file.clone(), message });
                }
                loaded.processes.push(trace);
            }
            Err(message) => skipped.push(Problem { file, message }),
        }
    }
    for file in run_files {
        match fs::read(&file).map_err(|e| e.to_string()).and_then(|b| {
            serde_json::from_slice::<RunRecord>(&b).map_err(|e| format!("not a lynshim run record ({e})"))
        }) {
            Ok(run) => loaded.runs.push(run),
            Err(message) => skipped.push(Problem { file, message }),
        }
    }
    loaded.skipped = skipped;
    link::link(&mut loaded);
    loaded
}

/// Read and parse one file; `Ok` carries a warning when the file was cut short.
pub fn read_trace(path: &Path, max_bytes: u64) -> Result<TraceAndWarning, String> {
    read_trace_with(path, max_bytes, &mut Vec::new(), &mut Names::default())
}

/// [`read_trace`] into a buffer and with names kept between files: a thread loading hundreds of files
/// reuses one allocation instead of faulting in fresh pages for each, and holds each name once.
fn read_trace_with(path: &Path, max_bytes: u64, buffer: &mut Vec<u8>, names: &mut Names) -> Result<TraceAndWarning, String> {
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
    file.take(max_bytes.saturating_add(1))
        .read_to_end(buffer)
        .map_err(|e| format!("cannot read it ({e})"))?;
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
    let mut builder = Builder::new(bytes.len() as u64, names);
    let truncated = for_each_line(bytes, |line| {
        builder.push(match plain_event(line) {
            Some(event) => event,
            None => serde_json::from_str::<RawEvent<'_>>(line)?,
        });
        Ok(())
    })?;
    builder.finish(truncated)
}

/// The events of one trace file, as they are, and whether the file was cut short: for merging.
pub fn read_events(path: &Path, max_bytes: u64) -> Result<(Vec<Value>, bool), String> {
    let mut bytes = Vec::new();
    read_limited(path, max_bytes, &mut bytes)?;
    let mut events = Vec::new();
    let truncated = for_each_line(&bytes, |line| {
        events.push(serde_json::from_str::<Value>(line)?);
        Ok(())
    })?;
    if !events.iter().any(|e| e.get("name").and_then(Value::as_str) == Some(event::PROCESS)) {
        return Err(format!("no `{}` event: not written by lynshim", event::PROCESS));
    }
    Ok((events, truncated))
}

/// lynshim's framing: `[` alone on the first line, one event per line, `]` at the end unless cut short.
/// Each event line goes to `read`, in order; a line it cannot read is an error unless it is the last
/// (a file cut short in the middle of a line). `Ok` says whether the file was cut short.
fn for_each_line<'a>(
    bytes: &'a [u8],
    mut read: impl FnMut(&'a str) -> Result<(), serde_json::Error>,
) -> Result<bool, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))?;
    // Lines found with the memchr crate's vectorised search: `str::lines` was a tenth of loading.
    let mut start = 0;
    let line_ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
    let mut lines = line_ends
        .map(|end| {
            let line = &text[start..end];
            start = end + 1;
            line
        })
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty());
    match lines.next() {
        None => return Err("empty file".to_owned()),
        Some((_, "[")) => {}
        Some((_, line)) if line.starts_with('[') => {
            return Err("not a lynshim trace (JSON, but not one event per line)".to_owned());
        }
        Some(_) => return Err("not a lynshim trace (expected `[` on the first line)".to_owned()),
    }
    // A line that could not be read: an error if any line follows it.
    let mut unreadable: Option<(usize, serde_json::Error)> = None;
    for (number, line) in lines {
        if let Some((number, err)) = unreadable {
            return Err(format!("line {number}: not a trace event ({err})"));
        }
        let line = line.trim_start_matches(',').trim_end_matches(',');
        if line == "]" {
            return Ok(false);
        }
        if line.is_empty() {
            continue;
        }
        if let Err(err) = read(line) {
            unreadable = Some((number, err));
        }
    }
    Ok(true)
}

/// Nearly every line lynshim writes is the begin or end of an import, shaped exactly like
/// `{"cat":"import","name":"numpy","ph":"B","pid":7,"tid":7,"ts":210.5}` (serde_json writes keys in
/// sorted order). Such a line is read here without a general JSON parser — which was most of the
/// time spent loading a build — and any other line (args, escapes, another key order) gives `None`
/// and goes to serde_json. Numbers are read as serde_json reads them ([`PlainNumber`]), so both paths
/// give the same event to the bit (a test compares them on every recorded line).
fn plain_event(line: &str) -> Option<RawEvent<'_>> {
    let rest = line.strip_prefix(r#"{"cat":""#)?;
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

/// The spans open on each thread: index into the trace's spans, and the time of their closed
/// children. A process has a few threads, so they are found by looking, not hashing.
#[derive(Default)]
struct OpenSpans(Vec<(i64, Vec<(usize, f64)>)>);

impl OpenSpans {
    fn of(&mut self, tid: i64) -> &mut Vec<(usize, f64)> {
        let index = match self.0.iter().position(|(t, _)| *t == tid) {
            Some(index) => index,
            None => {
                self.0.push((tid, Vec::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[index].1
    }
}

/// Builds a [`ProcessTrace`] from a file's events, one at a time.
struct Builder<'n> {
    names: &'n mut Names,
    trace: ProcessTrace,
    /// Whether the `lynshim.process` event has been seen.
    described: bool,
    /// Open spans per thread: index into `trace.spans`, and the time of their closed children.
    open: OpenSpans,
    last_ts: f64,
}

impl<'n> Builder<'n> {
    fn new(bytes: u64, names: &'n mut Names) -> Self {
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
            },
            described: false,
            open: OpenSpans::default(),
            last_ts: 0.0,
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
        trace.wall_zero_ns = meta.get(arg::WALL_ZERO_NS).and_then(Value::as_u64).unwrap_or(0);
        trace.parent_trace = as_str(meta, arg::PARENT_TRACE);
        trace.start_ticks = meta.get(arg::START_TICKS).and_then(Value::as_u64);
        if meta.get(arg::SOURCE).and_then(Value::as_str) == Some(arg::SOURCE_EXEC) {
            trace.source = Source::Exec;
        }
        self.described = true;
    }

    fn push(&mut self, ev: RawEvent<'_>) {
        self.last_ts = self.last_ts.max(ev.ts + ev.dur.max(0.0));
        let trace = &mut self.trace;
        match ev.ph.as_bytes() {
            b"B" => {
                let stack = self.open.of(ev.tid);
                let parent = stack.last().map(|(i, _)| u32::try_from(*i).unwrap_or(u32::MAX));
                stack.push((trace.spans.len(), 0.0));
                trace.spans.push(Span {
                    name: self.names.get(&ev.name),
                    cat: self.names.get(&ev.cat),
                    tid: ev.tid,
                    start_us: ev.ts,
                    dur_us: 0.0,
                    self_us: 0.0,
                    depth: u32::try_from(stack.len() - 1).unwrap_or(u32::MAX),
                    parent,
                    args: boxed(ev.args),
                    unfinished: false,
                });
            }
            b"E" => {
                let stack = self.open.of(ev.tid);
                if let Some((index, children)) = stack.pop() {
                    let span = &mut trace.spans[index];
                    span.dur_us = (ev.ts - span.start_us).max(0.0);
                    span.self_us = (span.dur_us - children).max(0.0);
                    if !ev.args.is_empty() {
                        span.args.get_or_insert_with(Box::default).extend(ev.args);
                    }
                    let dur = span.dur_us;
                    if let Some(parent) = stack.last_mut() {
                        parent.1 += dur;
                    }
                }
            }
            b"X" => trace.spans.push(Span {
                name: self.names.get(&ev.name),
                cat: self.names.get(&ev.cat),
                tid: ev.tid,
                start_us: ev.ts,
                dur_us: ev.dur.max(0.0),
                self_us: ev.dur.max(0.0),
                depth: 0,
                parent: None,
                args: boxed(ev.args),
                unfinished: false,
            }),
            b"C" => {
                let bytes = ev.args.get(arg::BYTES).and_then(Value::as_f64).unwrap_or(0.0);
                if ev.name == event::PEAK_RSS {
                    trace.peak_rss = Some(bytes);
                } else if ev.name == event::RSS {
                    let at = ev.at.as_deref().map(|at| self.names.get(at));
                    trace.rss.push(Sample { ts_us: ev.ts, bytes, at });
                }
            }
            b"i" if ev.name == event::PROCESS && !self.described => self.describe(&ev.args),
            b"i" if ev.name == event::EXIT => {
                trace.exit_us = Some(ev.ts);
                let cpu = [arg::CPU_USER_US, arg::CPU_SYS_US].map(|key| ev.args.get(key).and_then(Value::as_f64));
                if let [Some(user), Some(sys)] = cpu {
                    trace.cpu_us = Some(user + sys);
                }
                trace.exit_status = ev.args.get(arg::EXIT_STATUS).and_then(Value::as_i64);
                trace.exit_signal = ev.args.get(arg::EXIT_SIGNAL).and_then(Value::as_i64);
                trace.lynguine_version = as_str(&ev.args, arg::LYNGUINE_VERSION);
                if trace.peak_rss.is_none() {
                    trace.peak_rss = ev.args.get(arg::PEAK_RSS_BYTES).and_then(Value::as_f64);
                }
            }
            _ => {}
        }
    }

    fn finish(self, truncated: bool) -> Result<ProcessTrace, String> {
        if !self.described {
            return Err(format!("no `{}` event: not written by lynshim", event::PROCESS));
        }
        let Self { mut trace, open, last_ts, .. } = self;
        trace.truncated = truncated;
        trace.end_us = last_ts;
        // Spans the file ended inside: they last until its last event.
        for (_, stack) in open.0 {
            for (index, children) in stack.into_iter().rev() {
                let span = &mut trace.spans[index];
                span.dur_us = (last_ts - span.start_us).max(0.0);
                span.self_us = (span.dur_us - children).max(0.0);
                span.unfinished = true;
            }
        }
        Ok(trace)
    }
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
        for ts in ["0", "0.0", "-0.0", "12.5", "1e3", "1.5E-2", "35670.198000000004", "123456789012345", "1234567890123456",
                   "07", "1.", ".5", "-", "", "+1", "NaN", "1_0", "0.000000000000001", "99999999999999.9"] {
            lines.push(plain("import", "numpy", "B", "7", ts));
        }
        for tid in ["-3", "0", "1.5", "9223372036854775807", "9223372036854775808", "01", "1e2"] {
            lines.push(plain("import", "numpy", "E", tid, "1.0"));
        }
        for name in [r#"a\"b"#, r"a\\b", "a\u{1}b", "émigré", "", r"\u00e9"] {
            lines.push(plain("import", name, "B", "7", "1.0"));
        }
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
        // Nearly every recorded line takes the fast path.
        assert!(read_fast * 10 > lines.len() * 9, "{read_fast} of {} lines", lines.len());
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
            let text = if point == 0 || point == text.len() { text } else { format!("{}.{}", &text[..point], &text[point..]) };
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
        let alphabet = [b'a', b'z', b'.', b'_', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xa9, 0xff, b'!', b']'];
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
        assert!(reason(b"[\n{\"ph\":\"B\"}\ngarbage\n{\"ph\":\"E\"}\n]").starts_with("line 3"));
        assert!(reason(b"[\n{\"ph\":\"B\"}\n]").contains("not written by lynshim"));
        assert!(parse_trace(b"[\n[1,2]\n]").is_err());
    }
}
