//! Loading lynshim trace files: one [`ProcessTrace`] per file, problems collected per file, never a panic.
//!
//! lynshim writes one event per line inside a JSON array (`[` on the first line). A file cut short by a
//! crash lacks the closing `]` and may end in half an event: it is read as far as it goes and reported
//! as truncated. Anything else that is not such a file — empty, not UTF-8, not JSON, JSON of another
//! shape, larger than the limit — is skipped with a one-line reason naming the file.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use lynschema::{arg, category, event, files, RunRecord};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::{Map, Value};

/// A span's category. lynshim's own are borrowed from the schema: a big build has a million spans, and
/// an allocation each for "import" was a good part of loading them.
pub type Category = Cow<'static, str>;

fn category_of(cat: Cow<'_, str>) -> Category {
    [category::IMPORT, category::STARTUP, category::TRACER]
        .iter()
        .chain(category::WORK)
        .find(|known| **known == cat)
        .map_or_else(|| Cow::Owned(cat.into_owned()), |known| Cow::Borrowed(*known))
}

/// One span of a process: a `B`/`E` pair, or an `X` event.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub cat: Category,
    pub tid: i64,
    pub start_us: f64,
    pub dur_us: f64,
    /// Duration minus the durations of the spans directly inside it.
    pub self_us: f64,
    pub depth: u32,
    /// Index in [`ProcessTrace::spans`] of the span directly enclosing this one.
    pub parent: Option<usize>,
    pub parent_cat: Option<Category>,
    pub args: Map<String, Value>,
    /// The file ended before this span did.
    pub unfinished: bool,
}

/// An RSS sample (counter event).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub ts_us: f64,
    pub bytes: f64,
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
}

impl ProcessTrace {
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
    pub processes: Vec<ProcessTrace>,
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
        .map(|path| {
            let result = read_trace(path, options.max_file_bytes);
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
    loaded.processes.sort_by(|a, b| a.wall_zero_ns.cmp(&b.wall_zero_ns).then(a.pid.cmp(&b.pid)));
    loaded.skipped = skipped;
    loaded
}

/// Read and parse one file; `Ok` carries a warning when the file was cut short.
pub fn read_trace(path: &Path, max_bytes: u64) -> Result<TraceAndWarning, String> {
    let bytes = read_limited(path, max_bytes)?;
    let mut trace = parse_trace(&bytes)?;
    trace.file = path.to_path_buf();
    let warning = trace.truncated.then(|| "cut short (no closing ]): read as far as it goes".to_owned());
    Ok((trace, warning))
}

/// A file's bytes, unless it is larger than `max_bytes`.
fn read_limited(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    let size = fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?.len();
    if size > max_bytes {
        return Err(format!("too large ({size} bytes, limit {max_bytes}; raise it with --max-file-size)"));
    }
    fs::read(path).map_err(|e| format!("cannot read it ({e})"))
}

/// Parse the bytes of one trace file.
pub fn parse_trace(bytes: &[u8]) -> Result<ProcessTrace, String> {
    let (events, truncated) = parse_lines::<RawEvent>(bytes)?;
    build(events, truncated, bytes.len() as u64)
}

/// The events of one trace file, as they are, and whether the file was cut short: for merging.
pub fn read_events(path: &Path, max_bytes: u64) -> Result<(Vec<Value>, bool), String> {
    let bytes = read_limited(path, max_bytes)?;
    let (events, truncated) = parse_lines::<Value>(&bytes)?;
    if !events.iter().any(|e| e.get("name").and_then(Value::as_str) == Some(event::PROCESS)) {
        return Err(format!("no `{}` event: not written by lynshim", event::PROCESS));
    }
    Ok((events, truncated))
}

/// lynshim's framing: `[` alone on the first line, one event per line, `]` at the end unless cut short.
fn parse_lines<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(Vec<T>, bool), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))?;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
    match lines.next() {
        None => return Err("empty file".to_owned()),
        Some((_, "[")) => {}
        Some((_, line)) if line.starts_with('[') => {
            return Err("not a lynshim trace (JSON, but not one event per line)".to_owned());
        }
        Some(_) => return Err("not a lynshim trace (expected `[` on the first line)".to_owned()),
    }
    let rest: Vec<(usize, &str)> = lines.collect();
    let mut events = Vec::with_capacity(rest.len());
    let mut closed = false;
    let mut cut = false;
    for (index, (number, line)) in rest.iter().enumerate() {
        let line = line.trim_start_matches(',').trim_end_matches(',');
        if line == "]" {
            closed = true;
            break;
        }
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(ev) => events.push(ev),
            Err(_) if index + 1 == rest.len() => cut = true,
            Err(err) => return Err(format!("line {number}: not a trace event ({err})")),
        }
    }
    Ok((events, !closed || cut))
}

fn as_str(args: &Map<String, Value>, key: &str) -> Option<String> {
    args.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn build(events: Vec<RawEvent<'_>>, truncated: bool, bytes: u64) -> Result<ProcessTrace, String> {
    let meta = events
        .iter()
        .find(|e| e.ph == "i" && e.name == event::PROCESS)
        .map(|e| e.args.clone())
        .ok_or_else(|| format!("no `{}` event: not written by lynshim", event::PROCESS))?;
    let mut trace = ProcessTrace {
        file: PathBuf::new(),
        pid: meta.get(arg::PID).and_then(Value::as_i64).unwrap_or(0),
        ppid: meta.get(arg::PPID).and_then(Value::as_i64).unwrap_or(0),
        run_id: as_str(&meta, arg::RUN_ID).unwrap_or_default(),
        label: as_str(&meta, arg::LABEL).unwrap_or_default(),
        command: as_str(&meta, arg::COMMAND).unwrap_or_default(),
        lamd_command: as_str(&meta, arg::LAMD_COMMAND),
        wall_zero_ns: meta.get(arg::WALL_ZERO_NS).and_then(Value::as_u64).unwrap_or(0),
        end_us: 0.0,
        exit_status: None,
        exit_signal: None,
        peak_rss: None,
        rss: Vec::new(),
        spans: Vec::new(),
        truncated,
        parent_trace: as_str(&meta, arg::PARENT_TRACE),
        lynguine_version: None,
        bytes,
    };
    // Open spans per thread: index into trace.spans, and the time of their closed children.
    let mut open: FxHashMap<i64, Vec<(usize, f64)>> = FxHashMap::default();
    // Every span is a `B`/`E` pair or an `X`: at most half the events but one.
    trace.spans.reserve(events.len() / 2 + 1);
    let mut last_ts = 0.0_f64;
    for ev in events {
        last_ts = last_ts.max(ev.ts + ev.dur.max(0.0));
        match &*ev.ph {
            "B" => {
                let stack = open.entry(ev.tid).or_default();
                let parent = stack.last().map(|(i, _)| *i);
                let parent_cat = stack.last().map(|(i, _)| trace.spans[*i].cat.clone());
                stack.push((trace.spans.len(), 0.0));
                trace.spans.push(Span {
                    name: ev.name.into_owned(),
                    cat: category_of(ev.cat),
                    tid: ev.tid,
                    start_us: ev.ts,
                    dur_us: 0.0,
                    self_us: 0.0,
                    depth: u32::try_from(stack.len() - 1).unwrap_or(u32::MAX),
                    parent,
                    parent_cat,
                    args: ev.args,
                    unfinished: false,
                });
            }
            "E" => {
                let stack = open.entry(ev.tid).or_default();
                if let Some((index, children)) = stack.pop() {
                    let span = &mut trace.spans[index];
                    span.dur_us = (ev.ts - span.start_us).max(0.0);
                    span.self_us = (span.dur_us - children).max(0.0);
                    span.args.extend(ev.args);
                    let dur = span.dur_us;
                    if let Some(parent) = stack.last_mut() {
                        parent.1 += dur;
                    }
                }
            }
            "X" => trace.spans.push(Span {
                name: ev.name.into_owned(),
                cat: category_of(ev.cat),
                tid: ev.tid,
                start_us: ev.ts,
                dur_us: ev.dur.max(0.0),
                self_us: ev.dur.max(0.0),
                depth: 0,
                parent: None,
                parent_cat: None,
                args: ev.args,
                unfinished: false,
            }),
            "C" => {
                let bytes = ev.args.get(arg::BYTES).and_then(Value::as_f64).unwrap_or(0.0);
                if ev.name == event::PEAK_RSS {
                    trace.peak_rss = Some(bytes);
                } else if ev.name == event::RSS {
                    trace.rss.push(Sample { ts_us: ev.ts, bytes });
                }
            }
            "i" if ev.name == event::EXIT => {
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
    trace.end_us = last_ts;
    // Spans the file ended inside: they last until its last event.
    for stack in open.into_values() {
        for (index, children) in stack.into_iter().rev() {
            let span = &mut trace.spans[index];
            span.dur_us = (last_ts - span.start_us).max(0.0);
            span.self_us = (span.dur_us - children).max(0.0);
            span.unfinished = true;
        }
    }
    Ok(trace)
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
        let pandas = t.spans.iter().find(|s| s.name == "pandas").expect("pandas");
        assert_eq!((pandas.dur_us, pandas.self_us, pandas.depth), (100.0, 50.0, 0));
        let numpy = t.spans.iter().find(|s| s.name == "numpy").expect("numpy");
        assert_eq!(numpy.depth, 1);
        assert_eq!(numpy.parent.map(|i| t.spans[i].name.as_str()), Some("pandas"));
        assert_eq!(t.end_us, 400.0);
    }

    #[test]
    fn truncated_file_is_read_as_far_as_it_goes() {
        let cut = &GOOD[..GOOD.find(r#"{"cat":"import","name":"pandas","ph":"E""#).expect("found") + 20];
        let t = parse_trace(cut.as_bytes()).expect("parses");
        assert!(t.truncated);
        let pandas = t.spans.iter().find(|s| s.name == "pandas").expect("pandas");
        assert!(pandas.unfinished);
    }

    #[test]
    fn bad_files_get_reasons() {
        assert_eq!(parse_trace(b"").unwrap_err(), "empty file");
        assert!(parse_trace(b"\xff\xfe").unwrap_err().starts_with("not UTF-8"));
        assert!(parse_trace(b"hello").unwrap_err().contains("expected `[`"));
        assert!(parse_trace(b"[{\"a\":1}]").unwrap_err().contains("one event per line"));
        assert!(parse_trace(b"[\n{\"ph\":\"B\"}\ngarbage\n{\"ph\":\"E\"}\n]").unwrap_err().starts_with("line 3"));
        assert!(parse_trace(b"[\n{\"ph\":\"B\"}\n]").unwrap_err().contains("not written by lynshim"));
        assert!(parse_trace(b"[\n[1,2]\n]").is_err());
    }
}
