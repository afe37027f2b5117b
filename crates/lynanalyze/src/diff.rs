//! `lynanalyze diff A B`: did the builds of B get faster or slower than those of A, by how much, and is
//! that more than the run-to-run noise?
//!
//! Each side is one or more run directories (each one build, one `run.json`), read with the same
//! accounting as `lynanalyze report`: [`metrics::build::attribute`] for the whole build's wall time
//! along its critical path, [`metrics::processes::compute`] for each Python process. The statistics are
//! over runs: every metric is one number per run — for the whole build, the run's wall time, CPU and
//! each phase; for a kind of process (its command with paths cut to their base names and numbers,
//! temporary names and pids stripped: [`kind_of`]), the **sum** over that run's processes of that kind
//! (the build's total cost of the kind; the number of processes is a row of its own) and, for memory,
//! the largest peak RSS. A's and B's medians over their runs, the difference, a percentile-bootstrap
//! 95 % interval of the difference of medians ([`stats`]) and a verdict: faster, slower, or no
//! difference beyond the noise when the interval holds zero; with fewer than 3 runs on a side there
//! is no interval and no verdict.

pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde_json::{json, Value};

use crate::frame;
use crate::load::{self, LoadOptions, Loaded, Problem, ProcessTrace};
use crate::metrics::{build, processes};
use crate::report::{mib, Section, Table};

/// How processes are matched between the sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The command with its arguments: paths cut to base names, pids and temporary names stripped.
    Command,
    /// The lamd command, or the command's first two words (coarser: `mdfield title` and `mdfield date`
    /// are one kind).
    Program,
}

/// What a metric counts, which decides its unit and the words of its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Micros,
    Count,
    Bytes,
}

impl Unit {
    fn of(metric: &str) -> Self {
        if metric == "processes"
            || metric == "calls"
            || metric == "Python processes"
            || metric == "other programs"
            || metric.starts_with("calls: ")
        {
            Self::Count
        } else if metric.starts_with("peak RSS") {
            Self::Bytes
        } else {
            Self::Micros
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Self::Micros => format!("{:.1} ms", v / 1000.0),
            Self::Count => {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            }
            Self::Bytes => format!("{} MiB", mib(v)),
        }
    }

    fn signed(self, v: f64) -> String {
        let s = self.show(v.abs());
        if v > 0.0 {
            format!("+{s}")
        } else if v < 0.0 {
            format!("−{s}")
        } else {
            s
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Micros => "us",
            Self::Count => "count",
            Self::Bytes => "bytes",
        }
    }
}

/// The plain verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// B's median is higher, beyond the noise.
    Higher,
    /// B's median is lower, beyond the noise.
    Lower,
    /// The interval holds zero.
    Noise,
    /// Every run on both sides gave the same value.
    Same,
    /// Fewer than [`stats::MIN_RUNS`] runs on a side.
    Unknown,
}

impl Verdict {
    pub fn words(self, unit: Unit) -> &'static str {
        match (self, unit) {
            (Self::Higher, Unit::Micros) => "slower",
            (Self::Lower, Unit::Micros) => "faster",
            (Self::Higher, Unit::Count) => "more",
            (Self::Lower, Unit::Count) => "fewer",
            (Self::Higher, Unit::Bytes) => "more memory",
            (Self::Lower, Unit::Bytes) => "less memory",
            (Self::Noise, _) => "no difference beyond the noise",
            (Self::Same, _) => "the same in every run",
            (Self::Unknown, _) => "cannot be estimated (fewer than 3 runs on a side)",
        }
    }
}

/// One metric compared.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: Unit,
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub a_median: f64,
    pub b_median: f64,
    pub interval: Option<(f64, f64)>,
    pub verdict: Verdict,
}

impl Row {
    /// Compare `a` and `b`, the per-run values of `metric`; `scope` (the process kind, or "build")
    /// seeds the bootstrap with the metric's name.
    pub fn new(scope: &str, metric: &str, a: Vec<f64>, b: Vec<f64>) -> Self {
        let unit = Unit::of(metric);
        let (a_median, b_median) = (stats::median(&a), stats::median(&b));
        let interval = stats::bootstrap_interval(&a, &b, stats::seed(&format!("{scope}\u{0}{metric}")));
        let verdict = match interval {
            None => Verdict::Unknown,
            Some((lo, hi)) if lo == 0.0 && hi == 0.0 && a.iter().chain(&b).all(|v| v.to_bits() == a[0].to_bits()) => {
                Verdict::Same
            }
            Some((lo, _)) if lo > 0.0 => Verdict::Higher,
            Some((_, hi)) if hi < 0.0 => Verdict::Lower,
            Some(_) => Verdict::Noise,
        };
        Self { metric: metric.to_owned(), unit, a, b, a_median, b_median, interval, verdict }
    }

    pub fn diff(&self) -> f64 {
        self.b_median - self.a_median
    }

    /// The difference as a percentage of A's median.
    pub fn diff_pct(&self) -> Option<f64> {
        (self.a_median.abs() > 0.0).then(|| 100.0 * self.diff() / self.a_median)
    }

    fn cells(&self) -> Vec<String> {
        let unit = self.unit;
        vec![
            self.metric.clone(),
            unit.show(self.a_median),
            unit.show(self.b_median),
            unit.signed(self.diff()),
            self.diff_pct().map_or("–".into(), signed_pct),
            self.interval.map_or("–".into(), |(lo, hi)| format!("{} … {}", unit.signed(lo), unit.signed(hi))),
            self.verdict.words(unit).to_owned(),
        ]
    }

    pub fn to_json(&self) -> Value {
        json!({
            "metric": self.metric, "unit": self.unit.name(), "a_runs": self.a, "b_runs": self.b,
            "a_median": self.a_median, "b_median": self.b_median, "diff": self.diff(), "diff_pct": self.diff_pct(),
            "ci95_low": self.interval.map(|i| i.0), "ci95_high": self.interval.map(|i| i.1),
            "verdict": self.verdict.words(self.unit),
        })
    }
}

/// A percentage with its sign (a minus sign, as the other figures have).
fn signed_pct(p: f64) -> String {
    if p < 0.0 {
        format!("−{:.1}%", -p)
    } else {
        format!("+{p:.1}%")
    }
}

const HEADERS: [&str; 7] = ["metric", "A median", "B median", "B − A", "change", "95 % interval of B − A", "verdict"];

/// The process kind of a command: its words with paths cut to their base names, runs of four digits or
/// more (pids, times) as `#`, and temporary names (`tmpab12cd34`) as `tmp*`.
pub fn kind_of(command: &str) -> String {
    command.split_whitespace().map(normalise_word).collect::<Vec<_>>().join(" ")
}

fn normalise_word(word: &str) -> String {
    // `--out=/tmp/x/y.html`: the value as a word of its own.
    if let Some((key, value)) = word.split_once('=') {
        if key.starts_with('-') && !value.is_empty() {
            return format!("{key}={}", normalise_word(value));
        }
    }
    // `-I/tmp/x`: the option, then the path's base name.
    let (option, word) = match word.find('/') {
        Some(slash) if word.starts_with('-') => word.split_at(slash),
        _ => ("", word),
    };
    let base = if word.len() > 1 && word.contains('/') {
        word.trim_end_matches('/').rsplit('/').next().unwrap_or(word)
    } else {
        word
    };
    let mut out = String::from(option);
    let chars: Vec<char> = base.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // Python's tempfile names: `tmp` and eight letters, digits or underscores.
        if chars[i..].starts_with(&['t', 'm', 'p']) && (i == 0 || !chars[i - 1].is_alphanumeric()) {
            let run = chars[i + 3..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').count();
            if run >= 6 {
                out.push_str("tmp*");
                i += 3 + run;
                continue;
            }
        }
        if chars[i].is_ascii_digit() {
            let run = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if run >= 4 {
                out.push('#');
            } else {
                out.extend(&chars[i..i + run]);
            }
            i += run;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// One run's figures: metric → value, for the whole build and per process kind.
#[derive(Debug, Default, Clone)]
pub struct RunFigures {
    pub run_id: String,
    pub command: String,
    pub dir: Option<PathBuf>,
    pub wall_us: Option<f64>,
    pub build: BTreeMap<String, f64>,
    pub kinds: BTreeMap<String, BTreeMap<String, f64>>,
    /// Calls per entry point.
    pub calls: BTreeMap<String, f64>,
}

/// One side of the comparison, read.
#[derive(Debug)]
pub struct Side {
    pub name: String,
    pub inputs: Vec<PathBuf>,
    pub runs: Vec<RunFigures>,
    pub skipped: Vec<Problem>,
    pub cut_short: Vec<Problem>,
}

/// Metric names, in report order.
mod metric {
    pub const WALL: &str = "wall";
    pub const CPU: &str = "CPU (all processes)";
    pub const STARTUP: &str = "start-up";
    pub const IMPORTS: &str = "imports";
    pub const WORK: &str = "work";
    pub const PROGRAM: &str = "main program";
    pub const GC: &str = "gc";
    pub const EXIT: &str = "exit (atexit, teardown)";
    pub const UNATTRIBUTED: &str = "unattributed";
    pub const CALLS: &str = "calls";
    pub const PROCESSES: &str = "processes";
    pub const PEAK_RSS: &str = "peak RSS (largest process)";
    pub const PHASE: &str = "phase: ";
    pub const IMPORTS_OF: &str = "imports: ";
    pub const WORK_OF: &str = "work: ";
}

/// Report order of a metric: the fixed ones, then phases, imports by package and work by category.
fn order(name: &str) -> (usize, &str) {
    use metric::*;
    let fixed = [WALL, CPU, "Python processes", "other programs", PROCESSES, CALLS, PEAK_RSS, STARTUP, IMPORTS];
    if let Some(i) = fixed.iter().position(|m| *m == name) {
        return (i, "");
    }
    if let Some(phase) = name.strip_prefix(PHASE) {
        // The report's order: fixed phases, other programs by name, then idle and unattributed.
        let known = build::phase::ORDER.len();
        return match build::phase::ORDER.iter().position(|p| *p == phase) {
            Some(i) => (100 + i, ""),
            None if phase == build::phase::IDLE => (100 + known + 1, ""),
            None if phase == build::phase::UNATTRIBUTED => (100 + known + 2, ""),
            None => (100 + known, phase),
        };
    }
    if name.starts_with(IMPORTS_OF) {
        return (200, name);
    }
    match name {
        WORK => (300, ""),
        _ if name.starts_with(WORK_OF) => (301, name),
        PROGRAM => (400, ""),
        GC => (401, ""),
        EXIT => (402, ""),
        UNATTRIBUTED => (403, ""),
        _ => (500, name),
    }
}

#[allow(clippy::cast_precision_loss)]
fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The directory a run's files are in (from its first trace).
fn run_dir(loaded: &Loaded, run_id: &str) -> Option<PathBuf> {
    loaded
        .processes
        .iter()
        .chain(&loaded.programs)
        .find(|p| p.run_id == run_id)
        .and_then(|p| p.file.parent().map(Path::to_path_buf))
}

/// Read one side: load its inputs and compute every run's figures with the report's accounting.
pub fn read_side(name: &str, inputs: &[PathBuf], options: LoadOptions<'_>, group_by: GroupBy) -> anyhow::Result<Side> {
    for input in inputs {
        if !input.exists() {
            bail!("{name}: {} does not exist", input.display());
        }
    }
    let loaded = load::load(inputs, options);
    let listed = inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    if loaded.processes.is_empty() && loaded.programs.is_empty() && loaded.runs.is_empty() {
        let why: Vec<String> = loaded.skipped.iter().map(|p| format!("\n  skipped {p}")).collect();
        bail!(
            "{name}: no lynshim run under {listed} (each side is one or more directories written by `lynshim run`){}",
            why.concat()
        );
    }
    let mut run_ids: BTreeSet<String> = loaded.runs.iter().map(|r| r.run_id.clone()).collect();
    run_ids.extend(loaded.processes.iter().chain(&loaded.programs).map(|p| p.run_id.clone()));
    let (spans, dictionary) = frame::spans(&loaded.processes)?;
    let columns = frame::SpanColumns::new(&spans, &loaded.processes, &dictionary)?;
    let per_process = processes::compute(&loaded, &columns, &dictionary);
    let mut runs: BTreeMap<String, RunFigures> = run_ids
        .iter()
        .map(|id| (id.clone(), RunFigures { run_id: id.clone(), dir: run_dir(&loaded, id), ..RunFigures::default() }))
        .collect();
    for run in &loaded.runs {
        let figures = runs.entry(run.run_id.clone()).or_default();
        let a = build::attribute(run, &loaded);
        figures.command = run.command.join(" ");
        figures.wall_us = Some(ns_to_us(run.end_unix_ns.saturating_sub(run.start_unix_ns)));
        figures.build.insert(metric::WALL.into(), a.wall_us);
        figures.build.insert(metric::CPU.into(), (run.children_user_s + run.children_sys_s) * 1e6);
        #[allow(clippy::cast_precision_loss)]
        {
            figures.build.insert("Python processes".into(), a.python_processes as f64);
            figures.build.insert("other programs".into(), a.other_processes as f64);
        }
        for (phase, us) in a.phases {
            figures.build.insert(format!("{}{phase}", metric::PHASE), us);
        }
    }
    let key = |p: &ProcessTrace| match group_by {
        GroupBy::Command => kind_of(&p.command),
        GroupBy::Program => p.group(),
    };
    for (trace, times) in loaded.processes.iter().zip(&per_process) {
        let Some(figures) = runs.get_mut(&trace.run_id) else { continue };
        let kind = figures.kinds.entry(key(trace)).or_default();
        let mut add = |m: &str, v: f64| *kind.entry(m.to_owned()).or_default() += v;
        add(metric::PROCESSES, 1.0);
        add(metric::WALL, times.wall_us);
        add(metric::STARTUP, times.startup_us + times.activation_us);
        add(metric::IMPORTS, times.import_us);
        add(metric::WORK, times.work_us);
        add(metric::PROGRAM, times.program_us);
        add(metric::GC, times.gc_us);
        add(metric::EXIT, times.exit_us());
        add(metric::UNATTRIBUTED, times.unattributed_us);
        #[allow(clippy::cast_precision_loss)]
        add(metric::CALLS, times.calls as f64);
        for (category, us) in &times.work_by_category {
            add(&format!("{}{category}", metric::WORK_OF), *us);
        }
        for (package, us) in &times.imports_by_package {
            add(&format!("{}{}", metric::IMPORTS_OF, dictionary.packages[*package as usize]), *us);
        }
        if let Some(rss) = times.peak_rss {
            let peak = kind.entry(metric::PEAK_RSS.to_owned()).or_insert(0.0);
            *peak = peak.max(rss);
            let build_peak = figures.build.entry(metric::PEAK_RSS.to_owned()).or_insert(0.0);
            *build_peak = build_peak.max(rss);
        }
        *figures.build.entry(metric::CALLS.into()).or_default() += times.calls as f64;
        for span in &trace.spans {
            if load::is_call(&span.cat) {
                *figures.calls.entry(span.name.to_string()).or_default() += 1.0;
            }
        }
    }
    for program in &loaded.programs {
        let Some(figures) = runs.get_mut(&program.run_id) else { continue };
        // Other programs by name: a build runs a hundred `sed` and `sh -c …`, each a few milliseconds.
        let kind = figures.kinds.entry(format!("[other] {}", kind_of(program.program()))).or_default();
        *kind.entry(metric::PROCESSES.to_owned()).or_default() += 1.0;
        *kind.entry(metric::WALL.to_owned()).or_default() += program.end_us();
    }
    let runs: Vec<RunFigures> = runs.into_values().collect();
    Ok(Side {
        name: name.to_owned(),
        inputs: inputs.to_vec(),
        runs,
        skipped: loaded.skipped,
        // Files read in part: cut short, or with lines dropped as untrustworthy; each is warned about.
        cut_short: loaded.warnings.into_iter().chain(loaded.damaged).collect(),
    })
}

/// The comparison.
#[derive(Debug)]
pub struct Diff {
    pub a: Side,
    pub b: Side,
    pub build: Vec<Row>,
    /// Kinds on both sides: (kind, rows).
    pub kinds: Vec<(String, Vec<Row>)>,
    /// Call counts per entry point, for entry points on both sides.
    pub calls: Vec<Row>,
    pub only_a: Only,
    pub only_b: Only,
    /// Problems with the inputs that do not stop the comparison.
    pub warnings: Vec<String>,
    /// Kinds of Python process whose every metric the tables show (the longest).
    pub detail: usize,
}

/// What one side has that the other has not.
#[derive(Debug, Default)]
pub struct Only {
    /// Kinds, with their processes per run (median).
    pub kinds: Vec<(String, f64)>,
    /// Entry points, with their calls per run (median).
    pub calls: Vec<(String, f64)>,
}

/// Per-run values of `metric` over `runs`, reading it with `get`; a run without it counts 0, except
/// for peak RSS (a maximum: a run without the kind has none).
fn values(runs: &[RunFigures], metric: &str, get: impl Fn(&RunFigures) -> Option<f64>) -> Vec<f64> {
    if metric.starts_with("peak RSS") {
        runs.iter().filter_map(get).collect()
    } else {
        runs.iter().map(|r| get(r).unwrap_or(0.0)).collect()
    }
}

/// Keep a metric's row: it is not zero on both sides.
fn shows(row: &Row) -> bool {
    row.a.iter().chain(&row.b).any(|v| *v != 0.0)
}

/// Compare the sides; `top` packages of imports per kind (largest median on either side).
pub fn compare(a: Side, b: Side, top: usize, detail: usize) -> Diff {
    let mut warnings = Vec::new();
    for side in [&a, &b] {
        let commands: BTreeSet<String> =
            side.runs.iter().map(|r| kind_of(&r.command)).filter(|c| !c.is_empty()).collect();
        if commands.len() > 1 {
            warnings.push(format!(
                "{}: its runs are of different commands ({}); repeated runs of one build are what a side should hold",
                side.name,
                commands.into_iter().collect::<Vec<_>>().join(" | ")
            ));
        }
        let without = side.runs.iter().filter(|r| r.wall_us.is_none()).count();
        if without > 0 {
            warnings.push(format!(
                "{}: {without} run(s) without a run record (run.json): the whole build's figures leave them out",
                side.name
            ));
        }
        if side.runs.len() < stats::MIN_RUNS {
            warnings.push(format!(
                "{}: {} run(s); with fewer than {} runs on a side the interval cannot be estimated and no verdict is given",
                side.name,
                side.runs.len(),
                stats::MIN_RUNS
            ));
        }
    }
    // Build rows over the runs that have a run record.
    let with_record = |s: &Side| s.runs.iter().filter(|r| r.wall_us.is_some()).cloned().collect::<Vec<_>>();
    let (ra, rb) = (with_record(&a), with_record(&b));
    let mut build_metrics: Vec<String> =
        ra.iter().chain(&rb).flat_map(|r| r.build.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    build_metrics.sort_by(|x, y| order(x).cmp(&order(y)).then(x.cmp(y)));
    let build: Vec<Row> = if ra.is_empty() || rb.is_empty() {
        Vec::new()
    } else {
        build_metrics
            .iter()
            .map(|m| {
                let get = |r: &RunFigures| r.build.get(m).copied();
                Row::new("build", m, values(&ra, m, get), values(&rb, m, get))
            })
            .filter(shows)
            .collect()
    };
    // Process kinds.
    let kinds_of = |s: &Side| s.runs.iter().flat_map(|r| r.kinds.keys().cloned()).collect::<BTreeSet<_>>();
    let (ka, kb) = (kinds_of(&a), kinds_of(&b));
    let median_of = |s: &Side, kind: &str| {
        stats::median(&values(&s.runs, metric::PROCESSES, |r| {
            r.kinds.get(kind).and_then(|k| k.get(metric::PROCESSES)).copied()
        }))
    };
    let mut kinds = Vec::new();
    for kind in ka.intersection(&kb) {
        let mut metrics: Vec<String> = a
            .runs
            .iter()
            .chain(&b.runs)
            .filter_map(|r| r.kinds.get(kind))
            .flat_map(|k| k.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        metrics.sort_by(|x, y| order(x).cmp(&order(y)).then(x.cmp(y)));
        let rows: Vec<Row> = metrics
            .iter()
            .map(|m| {
                let get = |r: &RunFigures| r.kinds.get(kind).and_then(|k| k.get(m)).copied();
                Row::new(kind, m, values(&a.runs, m, get), values(&b.runs, m, get))
            })
            .filter(shows)
            .collect();
        // Imports by package: the `top` largest on either side.
        let mut packages: Vec<&Row> = rows.iter().filter(|r| r.metric.starts_with(metric::IMPORTS_OF)).collect();
        packages.sort_by(|x, y| y.a_median.max(y.b_median).total_cmp(&x.a_median.max(x.b_median)));
        let kept: BTreeSet<String> = packages.iter().take(top).map(|r| r.metric.clone()).collect();
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|r| !r.metric.starts_with(metric::IMPORTS_OF) || kept.contains(&r.metric))
            .collect();
        kinds.push((kind.clone(), rows));
    }
    // The biggest kinds first: by wall time on either side.
    let wall =
        |rows: &[Row]| rows.iter().find(|r| r.metric == metric::WALL).map_or(0.0, |r| r.a_median.max(r.b_median));
    kinds.sort_by(|x, y| wall(&y.1).total_cmp(&wall(&x.1)).then(x.0.cmp(&y.0)));
    let only = |mine: &BTreeSet<String>, theirs: &BTreeSet<String>, s: &Side| {
        mine.difference(theirs).map(|k| (k.clone(), median_of(s, k))).collect::<Vec<_>>()
    };
    let (only_a_kinds, only_b_kinds) = (only(&ka, &kb, &a), only(&kb, &ka, &b));
    if ka.intersection(&kb).next().is_none() && !(ka.is_empty() && kb.is_empty()) {
        warnings.push("A and B have no kind of process in common: only the whole builds are compared".into());
    }
    // Calls per entry point.
    let calls_of = |s: &Side| s.runs.iter().flat_map(|r| r.calls.keys().cloned()).collect::<BTreeSet<_>>();
    let (ca, cb) = (calls_of(&a), calls_of(&b));
    let call_median = |s: &Side, name: &str| stats::median(&values(&s.runs, "calls", |r| r.calls.get(name).copied()));
    let calls: Vec<Row> = ca
        .intersection(&cb)
        .map(|name| {
            let get = |r: &RunFigures| r.calls.get(name).copied();
            Row::new("calls", &format!("calls: {name}"), values(&a.runs, "calls", get), values(&b.runs, "calls", get))
        })
        .collect();
    let only_a =
        Only { kinds: only_a_kinds, calls: ca.difference(&cb).map(|n| (n.clone(), call_median(&a, n))).collect() };
    let only_b =
        Only { kinds: only_b_kinds, calls: cb.difference(&ca).map(|n| (n.clone(), call_median(&b, n))).collect() };
    Diff { a, b, build, kinds, calls, only_a, only_b, warnings, detail }
}

impl Diff {
    /// The whole build's wall time compared, when both sides have run records.
    pub fn wall(&self) -> Option<&Row> {
        self.build.iter().find(|r| r.metric == metric::WALL)
    }

    /// One sentence: what happened to the build's wall time.
    pub fn headline(&self) -> String {
        let Some(row) = self.wall() else {
            return "the whole build's wall time cannot be compared: a side has no run record (run.json)".into();
        };
        let (a, b) = (&self.a.name, &self.b.name);
        let medians = format!(
            "median wall time {} → {} ({}, {}) over {} and {} runs",
            row.unit.show(row.a_median),
            row.unit.show(row.b_median),
            row.unit.signed(row.diff()),
            row.diff_pct().map_or("–".into(), signed_pct),
            row.a.len(),
            row.b.len()
        );
        let interval = row.interval.map_or(String::new(), |(lo, hi)| {
            format!("; 95 % interval of the difference {} … {}", row.unit.signed(lo), row.unit.signed(hi))
        });
        match row.verdict {
            Verdict::Higher => format!("{b} is slower than {a}: {medians}{interval}"),
            Verdict::Lower => format!("{b} is faster than {a}: {medians}{interval}"),
            Verdict::Noise | Verdict::Same => format!("{b} against {a}: no difference beyond the noise: {medians}{interval}"),
            Verdict::Unknown => format!(
                "{b} against {a}: {medians}; the interval cannot be estimated with fewer than {} runs on a side, so no verdict",
                stats::MIN_RUNS
            ),
        }
    }

    /// The comparison as report sections (rendered by the report's renderers).
    pub fn sections(&self) -> Vec<Section> {
        let mut out = Vec::new();
        let mut summary = Section::new("summary", "Summary");
        summary.notes.push(self.headline());
        let mut runs = Table::new("runs compared", &["side", "run", "command", "wall ms", "directory"]);
        for side in [&self.a, &self.b] {
            for r in &side.runs {
                runs.row(vec![
                    side.name.clone(),
                    r.run_id.clone(),
                    r.command.clone(),
                    r.wall_us.map_or("no run.json".into(), |w| format!("{:.1}", w / 1000.0)),
                    r.dir.as_ref().map_or(String::new(), |d| d.display().to_string()),
                ]);
            }
        }
        summary.tables.push(runs);
        summary.notes.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        summary.data = json!({
            "headline": self.headline(),
            "a": side_json(&self.a), "b": side_json(&self.b),
            "warnings": self.warnings,
            "method": {
                "statistic": "difference of medians over runs, B - A",
                "interval": format!("percentile bootstrap, {} resamples, {:.0} %, seeded per metric (xorshift64*)", stats::RESAMPLES, stats::LEVEL * 100.0),
                "min_runs": stats::MIN_RUNS,
                "per_kind": "sum over the run's processes of that kind; peak RSS: the largest",
            },
        });
        out.push(summary);

        let mut whole = Section::new("build", "Whole build: wall time, CPU and its phases along the critical path");
        if self.build.is_empty() {
            whole.notes.push("no run record (run.json) on one side: the whole builds cannot be compared".into());
        } else {
            let mut table = Table::new("", &HEADERS);
            for row in &self.build {
                table.row(row.cells());
            }
            whole.tables.push(table);
        }
        whole.notes.push(
            "each value is one number per run (wall time and CPU from run.json, phases from the build attribution); \
             A and B are the medians over each side's runs; the interval is a percentile bootstrap of the difference \
             of medians; a verdict is given only when it excludes 0"
                .into(),
        );
        whole.data = json!({"rows": self.build.iter().map(Row::to_json).collect::<Vec<_>>()});
        out.push(whole);

        let mut kinds = Section::new("kinds", "Per kind of process (matched by normalised command)");
        let mut data = Vec::new();
        let mut overview = Table::new("wall time of each kind (the sum over a run's processes of that kind)", &HEADERS);
        for (kind, rows) in &self.kinds {
            if let Some(wall) = rows.iter().find(|r| r.metric == metric::WALL) {
                let mut cells = wall.cells();
                cells[0] = kind.clone();
                overview.row(cells);
            }
            data.push(json!({"kind": kind, "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>()}));
        }
        if !overview.rows.is_empty() {
            kinds.tables.push(overview);
        }
        let detailed: Vec<&(String, Vec<Row>)> =
            self.kinds.iter().filter(|(k, _)| !k.starts_with("[other] ")).take(self.detail).collect();
        for (kind, rows) in &detailed {
            let mut table = Table::new(&format!("`{kind}`"), &HEADERS);
            for row in rows {
                table.row(row.cells());
            }
            kinds.tables.push(table);
        }
        let python_kinds = self.kinds.iter().filter(|(k, _)| !k.starts_with("[other] ")).count();
        if python_kinds > detailed.len() {
            kinds.notes.push(format!(
                "every metric of the {} longest kinds of Python process is shown (`--kinds N` for more); the JSON has all {python_kinds}",
                detailed.len()
            ));
        }
        kinds.notes.push(
            "per run, the sum over that run's processes of the kind (the build's total cost of it; `processes` is how \
             many there were), and for peak RSS the largest; imports by package are the largest few on either side; \
             `[other]` kinds are programs seen by their exec records (make, sh, pandoc…), grouped by program, wall time only"
                .into(),
        );
        kinds.data = Value::Array(data);
        out.push(kinds);

        let mut calls = Section::new("calls", "Calls per entry point");
        let (different, same): (Vec<&Row>, Vec<&Row>) = self.calls.iter().partition(|r| r.verdict != Verdict::Same);
        if !different.is_empty() {
            let mut table = Table::new("entry points not called the same number of times in every run", &HEADERS);
            for row in &different {
                table.row(row.cells());
            }
            calls.tables.push(table);
        }
        calls.notes.push(format!(
            "{} entry point(s) called on both sides, {} as often on both",
            self.calls.len(),
            same.len()
        ));
        let mut only = Table::new("present on one side only", &["side", "what", "name", "per run (median)"]);
        for (side, o) in [(&self.a.name, &self.only_a), (&self.b.name, &self.only_b)] {
            for (name, n) in &o.calls {
                only.row(vec![side.clone(), "entry point (calls)".into(), name.clone(), Unit::Count.show(*n)]);
            }
            for (name, n) in &o.kinds {
                only.row(vec![side.clone(), "kind of process (processes)".into(), name.clone(), Unit::Count.show(*n)]);
            }
        }
        if only.rows.is_empty() {
            calls.notes.push("every entry point and every kind of process is on both sides".into());
        } else {
            calls.tables.push(only);
        }
        let only_json = |o: &Only| {
            json!({"calls": o.calls.iter().map(|(n, c)| json!({"name": n, "per_run_median": c})).collect::<Vec<_>>(),
                   "kinds": o.kinds.iter().map(|(n, c)| json!({"kind": n, "processes_per_run_median": c})).collect::<Vec<_>>()})
        };
        calls.data = json!({"rows": self.calls.iter().map(Row::to_json).collect::<Vec<_>>(),
                            "only_in_a": only_json(&self.only_a), "only_in_b": only_json(&self.only_b)});
        out.push(calls);
        out
    }

    /// A line naming the sides.
    pub fn header(&self) -> String {
        let describe = |s: &Side| {
            format!(
                "{} = {} run(s) from {}",
                s.name,
                s.runs.len(),
                s.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        };
        format!("lynanalyze diff: {}; {}", describe(&self.a), describe(&self.b))
    }

    /// The summary of the JSON rendering.
    pub fn summary_json(&self) -> Value {
        json!({"headline": self.headline(), "a": side_json(&self.a), "b": side_json(&self.b),
               "verdict": self.wall().map(|r| r.verdict.words(r.unit)),
               "wall_diff_pct": self.wall().and_then(Row::diff_pct)})
    }
}

fn side_json(side: &Side) -> Value {
    json!({
        "name": side.name,
        "inputs": side.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "runs": side.runs.iter().map(|r| json!({"run_id": r.run_id, "command": r.command, "wall_us": r.wall_us,
            "dir": r.dir.as_ref().map(|d| d.display().to_string())})).collect::<Vec<_>>(),
        "skipped": side.skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "cut_short": side.cut_short.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Refuse inputs that cannot be compared: the same run on both sides.
pub fn check(a: &Side, b: &Side) -> anyhow::Result<()> {
    let ids: BTreeSet<&str> = a.runs.iter().map(|r| r.run_id.as_str()).collect();
    let shared: Vec<&str> = b.runs.iter().map(|r| r.run_id.as_str()).filter(|id| ids.contains(id)).collect();
    if !shared.is_empty() {
        bail!(
            "run(s) {} are on both sides: A and B must be different runs (give each side its own run directories)",
            shared.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_ignore_paths_pids_and_temporary_names() {
        assert_eq!(kind_of("/work/.venv/bin/python -c import yaml"), "python -c import yaml");
        assert_eq!(
            kind_of("lamd_calls.py mdfield title /tmp/tmpab12_x9z/talk.md --out=/tmp/tmpq1w2e3r4/x-12345.html"),
            "lamd_calls.py mdfield title talk.md --out=x-#.html"
        );
        assert_eq!(kind_of("gpp -I/tmp/build-98765 talk.md"), "gpp -Ibuild-# talk.md");
        assert_eq!(kind_of("python3.11 -m x 12"), "python3.11 -m x 12");
    }

    fn side(name: &str, walls: &[f64], kinds: &[(&str, f64)], calls: &[(&str, f64)]) -> Side {
        let runs = walls
            .iter()
            .enumerate()
            .map(|(i, &wall)| RunFigures {
                run_id: format!("{name}{i}"),
                command: "/x/bin/maketalk talk.md".into(),
                wall_us: Some(wall),
                build: BTreeMap::from([(metric::WALL.to_owned(), wall)]),
                kinds: kinds
                    .iter()
                    .map(|(k, w)| {
                        (
                            (*k).to_owned(),
                            BTreeMap::from([
                                (metric::WALL.to_owned(), w + i as f64),
                                (metric::PROCESSES.to_owned(), 2.0),
                            ]),
                        )
                    })
                    .collect(),
                calls: calls.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect(),
                dir: None,
            })
            .collect();
        Side { name: name.into(), inputs: Vec::new(), runs, skipped: Vec::new(), cut_short: Vec::new() }
    }

    #[test]
    fn compare_matches_kinds_and_lists_what_one_side_has() {
        let a = side(
            "A",
            &[100.0, 110.0, 105.0],
            &[("mdfield title talk.md", 50.0), ("flags talk.md", 5.0)],
            &[("read", 3.0), ("gone", 1.0)],
        );
        let b = side(
            "B",
            &[200.0, 210.0, 205.0],
            &[("mdfield title talk.md", 150.0), ("server", 9.0)],
            &[("read", 3.0), ("new", 2.0)],
        );
        check(&a, &b).expect("different runs");
        let d = compare(a, b, 5, 10);
        let wall = d.wall().expect("wall compared");
        assert_eq!((wall.a_median, wall.b_median, wall.verdict), (105.0, 205.0, Verdict::Higher));
        assert!(d.headline().starts_with("B is slower than A"), "{}", d.headline());
        assert_eq!(d.kinds.len(), 1);
        let (kind, rows) = &d.kinds[0];
        assert_eq!(kind, "mdfield title talk.md");
        assert_eq!(rows.iter().find(|r| r.metric == metric::PROCESSES).map(|r| r.verdict), Some(Verdict::Same));
        assert_eq!(d.only_a.kinds, vec![("flags talk.md".to_owned(), 2.0)]);
        assert_eq!(d.only_b.kinds, vec![("server".to_owned(), 2.0)]);
        assert_eq!(d.only_a.calls, vec![("gone".to_owned(), 1.0)]);
        assert_eq!(d.only_b.calls, vec![("new".to_owned(), 2.0)]);
        assert_eq!(d.calls.len(), 1);
        assert_eq!(d.calls[0].verdict, Verdict::Same);
        let same = side("A", &[1.0], &[], &[]);
        assert!(check(&same, &side("A", &[1.0], &[], &[])).is_err());
    }

    #[test]
    fn verdicts() {
        let a = vec![100.0, 101.0, 99.0];
        assert_eq!(Row::new("s", "wall", a.clone(), vec![200.0, 201.0, 199.0]).verdict, Verdict::Higher);
        assert_eq!(Row::new("s", "wall", a.clone(), vec![50.0, 51.0, 49.0]).verdict, Verdict::Lower);
        assert_eq!(Row::new("s", "wall", a.clone(), vec![100.5, 99.5, 101.5]).verdict, Verdict::Noise);
        assert_eq!(Row::new("s", "wall", a, vec![200.0, 201.0]).verdict, Verdict::Unknown);
        assert_eq!(Row::new("s", "calls", vec![2.0; 3], vec![2.0; 4]).verdict, Verdict::Same);
        assert_eq!(Row::new("s", "calls", vec![2.0; 3], vec![3.0; 4]).verdict, Verdict::Higher);
        assert_eq!(Verdict::Higher.words(Unit::of("calls: read")), "more");
    }
}
