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
//!
//! This file holds the trace model and [`load`], which puts the steps together; each step has a module:
//! finding the files ([`discover`]), telling whoever shows progress ([`progress`]), reading a file
//! within its size limit (`limits`), its framing into lines (`framing`), the fast path for plain lines
//! (`plain`), building spans from events (`build`), linking Python traces to exec records ([`link`]),
//! and a process's time by phase ([`phases`]).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lynschema::{event, RunRecord};
use rayon::prelude::*;
use serde_json::{Map, Value};

mod build;
pub mod check;
pub mod discover;
mod framing;
mod limits;
pub mod link;
pub mod phases;
mod plain;
pub mod progress;

use build::{Builder, Names, RawEvent};
use check::Dropped;
use framing::for_each_line;
use limits::read_limited;
pub use lynschema::category::is_call;
use plain::plain_event;
pub use progress::Progress;

/// One span of a process: a `B`/`E` pair, or an `X` event.
#[derive(Debug, Clone)]
pub struct Span {
    /// Shared by every span of that name loaded on the same thread (see `build::Names`), as is `cat`.
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
#[derive(Clone, Copy)]
pub struct LoadOptions<'p> {
    pub max_file_bytes: u64,
    /// Told of each file read, for a progress bar.
    pub progress: Option<&'p dyn Progress>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self { max_file_bytes: 1 << 30, progress: None }
    }
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("max_file_bytes", &self.max_file_bytes)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A trace, and a warning when its file was cut short.
type TraceAndWarning = (ProcessTrace, Option<String>);

/// Load every trace and run record under `inputs`, in parallel.
pub fn load(inputs: &[PathBuf], options: LoadOptions<'_>) -> Loaded {
    let discover::Found { traces, runs: run_files, mut skipped, notes } = discover::collect(inputs);
    if let Some(progress) = options.progress {
        progress.begin(traces.len());
    }
    let results: Vec<(PathBuf, Result<TraceAndWarning, String>)> = traces
        .par_iter()
        .map_init(<(Vec<u8>, Names)>::default, |(buffer, names), path| {
            let result = read_trace_with(path, options.max_file_bytes, buffer, names);
            if let Some(progress) = options.progress {
                progress.advance();
            }
            (path.clone(), result)
        })
        .collect();
    if let Some(progress) = options.progress {
        progress.end();
    }

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

/// Parse the bytes of one trace file.
pub fn parse_trace(bytes: &[u8]) -> Result<ProcessTrace, String> {
    parse_trace_with(bytes, &mut Names::default())
}

fn parse_trace_with(bytes: &[u8], names: &mut Names) -> Result<ProcessTrace, String> {
    let mut builder = Builder::new(bytes.len() as u64, names, build::exit_bound(bytes));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Reason;

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

    /// A trace whose main program holds `depth` nested imports, the innermost holding a leaf written
    /// whole (`X`, as lynshim writes one).
    fn nested_with_a_leaf(depth: usize) -> Vec<String> {
        let mut lines = many(0)[..4].to_vec();
        for i in 0..depth {
            lines.push(format!(r#"{{"cat":"import","name":"d{i}","ph":"B","pid":7,"tid":7,"ts":{}.0}},"#, 150 + i));
        }
        lines.push(format!(
            r#"{{"ph":"X","name":"leaf","cat":"import","pid":7,"tid":7,"ts":{}.0,"dur":0.5}},"#,
            150 + depth
        ));
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
        lines
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_dropped_with_its_ends() {
        // The innermost span, a leaf written whole, is dropped with the spans around it.
        let t = parse_lines(&nested_with_a_leaf(check::MAX_DEPTH + 8)).expect("parses");
        // The main program is depth 0: 511 imports fit under it; nine begins and ends and the leaf do not.
        assert_eq!(t.dropped.counts[Reason::TooDeep as usize], 2 * 9 + 1);
        assert_eq!(t.spans.iter().map(|s| s.depth).max(), Some(u32::try_from(check::MAX_DEPTH - 1).expect("small")));
        assert_within_life(&t);
    }

    #[test]
    fn a_whole_span_one_level_too_deep_is_dropped() {
        // The main program and 511 imports: the limit, reached.
        let depth = check::MAX_DEPTH - 1;
        let lines = nested_with_a_leaf(depth);
        let t = parse_lines(&lines).expect("parses");
        assert_eq!(t.dropped.counts[Reason::TooDeep as usize], 1);
        assert!(t.spans.iter().all(|s| &*s.name != "leaf"));
        // Its parent's self time is its own: nothing of the dropped leaf was counted as a child.
        let deepest_name = format!("d{}", depth - 1);
        let deepest = t.spans.iter().find(|s| *s.name == *deepest_name).expect("kept");
        assert_eq!(deepest.self_us, deepest.dur_us);
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
