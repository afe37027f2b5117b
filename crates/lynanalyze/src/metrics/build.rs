//! The build's wall time, accounted: what the user waited for, phase by phase, along the critical path.
//!
//! A run's wall time (from `run.json`) is split by walking the process tree from the end of the run
//! backwards: at each moment the time belongs to the process the build was waiting on. Starting from
//! the command lynshim ran, a process's time goes to the child that ended last before the current
//! moment (the one it was waiting for), recursively, back to that child's start; what no child covers
//! is the process's own time. Children that ran beside the one waited on (`make -j`) are off the path.
//! A Python process's own time is split by the innermost span of its main thread at each moment
//! (start-up, imports, main program, lamd and lynguine work, GC, atexit, teardown…); another program's
//! own time goes to its name (`other: make`). Time outside every traced process — before the command
//! started, after it ended, or between processes — is `idle / untraced`. So the phases add up to the
//! run's wall time exactly, and nothing is counted twice: `maketalk` waiting ten seconds for `make`
//! is make's time (and its children's), not lamd's work.
//!
//! The tree comes from the exec records (every process, Python or not) and lynshim's traces; a program
//! that escapes the preload library (statically linked, setuid) is invisible, and the time its parent
//! waited for it counts as the parent's own.

use std::collections::BTreeMap;

use lynschema::{category, RunRecord};
use serde_json::{json, Value};

use crate::load::{Loaded, ProcessTrace};
use crate::report::{ms, pct, Section, Table};

/// A child may be seen to end a little after its parent stopped waiting for it (the two clocks are read
/// by two processes): up to this much, it still counts as waited for.
const END_SLACK_US: f64 = 2_000.0;

/// Phase names, in report order; `other: <program>` phases follow them.
pub mod phase {
    pub const STARTUP: &str = "python start-up";
    pub const SHIM: &str = "lynshim";
    pub const IMPORTS: &str = "imports";
    pub const PROGRAM: &str = "main program";
    pub const LAMD: &str = "lamd work";
    pub const LYNGUINE: &str = "lynguine work";
    pub const VIA_SERVER: &str = "lynguine via server";
    pub const USER: &str = "user spans";
    pub const GC: &str = "gc";
    pub const ATEXIT: &str = "atexit";
    pub const TEARDOWN: &str = "teardown";
    pub const UNATTRIBUTED: &str = "unattributed";
    pub const IDLE: &str = "idle / untraced";
    /// Prefix of a non-Python program's own time.
    pub const OTHER: &str = "other: ";
    pub const ORDER: &[&str] =
        &[STARTUP, SHIM, IMPORTS, PROGRAM, LAMD, LYNGUINE, VIA_SERVER, USER, GC, ATEXIT, TEARDOWN];
}

/// The phase a span of category `cat` stands for in a Python process's own time.
fn phase_of(cat: &str) -> &'static str {
    match cat {
        category::STARTUP => phase::STARTUP,
        category::TRACER => phase::SHIM,
        category::IMPORT => phase::IMPORTS,
        category::PROGRAM => phase::PROGRAM,
        category::LAMD => phase::LAMD,
        category::SERVER_CLIENT => phase::VIA_SERVER,
        category::USER => phase::USER,
        category::GC => phase::GC,
        category::ATEXIT => phase::ATEXIT,
        category::TEARDOWN => phase::TEARDOWN,
        c if category::OPERATIONS.contains(&c) => phase::LYNGUINE,
        _ => phase::UNATTRIBUTED,
    }
}

/// One program image of the run, on the run's clock (microseconds since the Unix epoch).
struct Node<'a> {
    trace: &'a ProcessTrace,
    start: f64,
    end: f64,
    /// For a Python process: its main thread's innermost spans, `(start, end, category)`, in order.
    timeline: Option<Vec<(f64, f64, &'a str)>>,
    children: Vec<usize>,
}

#[allow(clippy::cast_precision_loss)]
fn wall_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The innermost span at each moment of a Python process's main thread, as pieces `(start, end,
/// category)` in order, on a clock whose zero is `origin` microseconds before the trace's.
pub fn timeline(trace: &ProcessTrace, origin: f64) -> Vec<(f64, f64, &str)> {
    let main_tid = trace.pid;
    let spans = &trace.spans;
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        if s.tid != main_tid {
            continue;
        }
        match s.parent {
            Some(parent) => children[parent as usize].push(i),
            None => roots.push(i),
        }
    }
    roots.sort_by(|&a, &b| spans[a].start_us.total_cmp(&spans[b].start_us));
    let mut out = Vec::new();
    // Depth-first, with an explicit stack: (span, next child to visit, time covered so far).
    for root in roots {
        let mut stack = vec![(root, 0_usize, spans[root].start_us)];
        while let Some((span, next, cursor)) = stack.pop() {
            let s = &spans[span];
            let here: &str = &s.cat;
            if let Some(&child) = children[span].get(next) {
                let c = &spans[child];
                if c.start_us > cursor {
                    out.push((origin + cursor, origin + c.start_us, here));
                }
                stack.push((span, next + 1, cursor.max(c.start_us + c.dur_us)));
                stack.push((child, 0, c.start_us));
            } else if s.start_us + s.dur_us > cursor {
                out.push((origin + cursor, origin + s.start_us + s.dur_us, here));
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The attribution of one run.
#[derive(Debug, Default)]
pub struct RunAttribution {
    pub wall_us: f64,
    pub phases: BTreeMap<String, f64>,
    /// Processes on the critical path: (pid, command, start, end, own time), times from the run's start.
    pub path: Vec<(i64, String, f64, f64, f64)>,
    pub python_processes: usize,
    pub other_processes: usize,
}

struct Walk<'a, 'n> {
    nodes: &'n [Node<'a>],
    /// Processes whose parent is not in the run: the children of "outside every process".
    roots: Vec<usize>,
    phases: BTreeMap<String, f64>,
    own: Vec<f64>,
}

impl Walk<'_, '_> {
    /// Give `[from, to]` of `node` (None: outside every process) to the children it waited on and
    /// to itself.
    fn walk(&mut self, node: Option<usize>, from: f64, to: f64) {
        let nodes = self.nodes;
        let mut kids: Vec<usize> = node.map_or(&self.roots, |n| &nodes[n].children).clone();
        kids.sort_by(|&a, &b| self.nodes[b].end.total_cmp(&self.nodes[a].end));
        let mut t = to;
        for k in kids {
            let (start, end) = (self.nodes[k].start, self.nodes[k].end);
            if end > t + END_SLACK_US || start >= t {
                continue; // ran beside the one waited for, or after this moment
            }
            if end <= from {
                break; // sorted by end: every one left ended before the window
            }
            let end = end.min(t);
            self.own(node, end, t);
            let start = start.max(from);
            self.walk(Some(k), start, end);
            t = start;
        }
        self.own(node, from, t);
    }

    fn add(&mut self, phase: &str, us: f64) {
        if us > 0.0 {
            *self.phases.entry(phase.to_owned()).or_default() += us;
        }
    }

    /// `[from, to]` is `node`'s own time.
    fn own(&mut self, node: Option<usize>, from: f64, to: f64) {
        if to <= from {
            return;
        }
        let Some(n) = node else {
            self.add(phase::IDLE, to - from);
            return;
        };
        self.own[n] += to - from;
        let nodes = self.nodes;
        let Some(pieces) = nodes[n].timeline.as_deref() else {
            let program = format!("{}{}", phase::OTHER, nodes[n].trace.program());
            self.add(&program, to - from);
            return;
        };
        let first = pieces.partition_point(|p| p.1 <= from);
        let mut cursor = from;
        let last_end = pieces.last().map_or(nodes[n].start, |p| p.1);
        for &(start, end, phase) in &pieces[first..] {
            if start >= to {
                break;
            }
            let (start, end) = (start.max(cursor), end.min(to));
            if end <= start {
                continue;
            }
            self.add(phase::UNATTRIBUTED, start - cursor);
            self.add(phase_of(phase), end - start);
            cursor = end;
        }
        // After the last span the process is exiting (lynshim's exit handler, the C runtime, unmapping).
        let tail_from = cursor.max(last_end.min(to));
        self.add(phase::UNATTRIBUTED, tail_from - cursor);
        self.add(phase::TEARDOWN, to - tail_from);
    }
}

/// The attribution of `run`, from the processes and programs that belong to it.
pub fn attribute(run: &RunRecord, loaded: &Loaded) -> RunAttribution {
    let (run_start, run_end) = (wall_us(run.start_unix_ns), wall_us(run.end_unix_ns));
    let mut nodes: Vec<Node<'_>> = Vec::new();
    for trace in loaded.processes.iter().filter(|p| p.run_id == run.run_id) {
        let start = wall_us(trace.wall_zero_ns);
        nodes.push(Node {
            trace,
            start,
            end: start + trace.end_us(),
            timeline: Some(timeline(trace, start)),
            children: Vec::new(),
        });
    }
    let python_processes = nodes.len();
    for trace in loaded.programs.iter().filter(|p| p.run_id == run.run_id) {
        let start = wall_us(trace.wall_zero_ns);
        nodes.push(Node { trace, start, end: start + trace.end_us(), timeline: None, children: Vec::new() });
    }
    let other_processes = nodes.len() - python_processes;
    // Parents: the image of the parent pid alive when the child began (pids are reused; a process
    // that exec'd has one image after another).
    let mut roots = Vec::new();
    for child in 0..nodes.len() {
        let (ppid, at) = (nodes[child].trace.ppid, nodes[child].start);
        let parent = (0..nodes.len())
            .filter(|&p| p != child && nodes[p].trace.pid == ppid && nodes[p].start <= at)
            .max_by(|&a, &b| {
                let alive = |p: usize| nodes[p].end + END_SLACK_US >= at;
                alive(a).cmp(&alive(b)).then(nodes[a].start.total_cmp(&nodes[b].start))
            });
        match parent {
            Some(p) => nodes[p].children.push(child),
            None => roots.push(child),
        }
    }
    let mut walk = Walk { nodes: &nodes, roots, phases: BTreeMap::new(), own: vec![0.0; nodes.len()] };
    walk.walk(None, run_start, run_end.max(run_start));
    let mut path: Vec<(i64, String, f64, f64, f64)> = nodes
        .iter()
        .zip(&walk.own)
        .filter(|(_, &own)| own > 0.0)
        .map(|(n, &own)| (n.trace.pid, n.trace.command.clone(), n.start - run_start, n.end - run_start, own))
        .collect();
    path.sort_by(|a, b| a.2.total_cmp(&b.2));
    RunAttribution { wall_us: run_end - run_start, phases: walk.phases, path, python_processes, other_processes }
}

/// Phases in report order: the fixed ones, other programs by time, then idle and unattributed.
fn ordered(phases: &BTreeMap<String, f64>) -> Vec<(&str, f64)> {
    let mut out: Vec<(&str, f64)> = phase::ORDER.iter().filter_map(|&p| phases.get(p).map(|&us| (p, us))).collect();
    let mut others: Vec<(&str, f64)> =
        phases.iter().filter(|(k, _)| k.starts_with(phase::OTHER)).map(|(k, &v)| (k.as_str(), v)).collect();
    others.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    out.extend(others);
    for p in [phase::IDLE, phase::UNATTRIBUTED] {
        if let Some(&us) = phases.get(p) {
            out.push((p, us));
        }
    }
    out
}

pub fn section(loaded: &Loaded) -> Section {
    let mut section = Section::new("build", "The build's wall time, along its critical path");
    let mut runs = Vec::new();
    for run in &loaded.runs {
        let a = attribute(run, loaded);
        let mut table = Table::new(
            &format!("run {} ({}), {} ms wall", run.run_id, run.command.join(" "), ms(a.wall_us)),
            &["phase", "ms", "share of wall time"],
        );
        for (phase, us) in ordered(&a.phases) {
            table.row(vec![phase.to_owned(), ms(us), pct(us, a.wall_us)]);
        }
        section.tables.push(table);
        let unattributed = a.phases.get(phase::UNATTRIBUTED).copied().unwrap_or(0.0);
        #[allow(clippy::cast_precision_loss)]
        let share = if a.wall_us > 0.0 { unattributed / a.wall_us } else { 0.0 };
        let path: Vec<Value> = a
            .path
            .iter()
            .map(|(pid, command, start, end, own)| {
                json!({"pid": pid, "command": command, "start_us": start, "end_us": end, "own_us": own})
            })
            .collect();
        let attribution: serde_json::Map<String, Value> =
            ordered(&a.phases).into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
        runs.push(json!({"run_id": run.run_id, "label": run.label, "command": run.command, "wall_us": a.wall_us,
            "exit_status": run.exit_status, "python_processes": a.python_processes,
            "other_processes": a.other_processes, "attribution_us": attribution, "critical_path": path,
            "unattributed_share": share}));
        if a.other_processes == 0 {
            section.notes.push(format!(
                "run {}: no exec records (lynshim run --no-exec-trace, or the preload library was missing): \
                 make, sh and other programs are not seen, and their time is in `{}`",
                run.run_id,
                phase::IDLE
            ));
        }
    }
    if loaded.runs.is_empty() {
        section.notes.push("no run record (run.json) among the inputs: the build's wall time is unknown".into());
    } else {
        section.notes.push(format!(
            "each moment of the run goes to the process the build was waiting on (the child of the running command \
             that ended last, recursively); a Python process's time is split by its innermost span; `{}` is time \
             outside every traced process; a program that escapes tracing (statically linked, setuid) counts in its \
             parent's own time",
            phase::IDLE
        ));
    }
    section.data = json!({"runs": runs});
    section
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{parse_trace, Source};

    fn trace(text: &str) -> ProcessTrace {
        parse_trace(text.as_bytes()).expect("a trace")
    }

    fn exec_record(pid: i64, ppid: i64, zero_ns: u64, end_us: f64, program: &str) -> ProcessTrace {
        trace(&format!(
            r#"[
{{"args":{{"pid":{pid},"ppid":{ppid},"run_id":"r","command":"{program} x","wall_zero_ns":{zero_ns},"start_ticks":{pid},"source":"exec"}},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":{pid},"tid":{pid},"ts":0.0}},
{{"cat":"process","dur":{end_us},"name":"{program}","ph":"X","pid":{pid},"tid":{pid},"ts":0.0}},
{{"args":{{"exit_status":0}},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":{pid},"tid":{pid},"ts":{end_us}}}
]"#
        ))
    }

    /// make (pid 1) runs python (pid 2) then gpp (pid 3); the run lasts 1 000 µs more than make.
    fn build() -> Loaded {
        let python = trace(
            r#"[
{"args":{"pid":2,"ppid":1,"run_id":"r","command":"mdfield title talk.md","wall_zero_ns":2000000},"cat":"lynshim","name":"lynshim.process","ph":"i","pid":2,"tid":2,"ts":0.0},
{"cat":"startup","dur":100.0,"name":"interpreter start-up","ph":"X","pid":2,"tid":2,"ts":0.0},
{"cat":"program","name":"main program","ph":"B","pid":2,"tid":2,"ts":100.0},
{"cat":"import","name":"pandas","ph":"B","pid":2,"tid":2,"ts":150.0},
{"cat":"import","name":"pandas","ph":"E","pid":2,"tid":2,"ts":550.0},
{"cat":"lamd","name":"main","ph":"B","pid":2,"tid":2,"ts":560.0},
{"cat":"field","name":"talk_field","ph":"B","pid":2,"tid":2,"ts":570.0},
{"cat":"field","name":"talk_field","ph":"E","pid":2,"tid":2,"ts":600.0},
{"cat":"lamd","name":"main","ph":"E","pid":2,"tid":2,"ts":610.0},
{"cat":"program","name":"main program","ph":"E","pid":2,"tid":2,"ts":620.0},
{"cat":"teardown","dur":300.0,"name":"interpreter teardown","ph":"X","pid":2,"tid":2,"ts":650.0},
{"args":{"exit_status":0},"cat":"lynshim","name":"lynshim.exit","ph":"i","pid":2,"tid":2,"ts":950.0}
]"#,
        );
        let mut loaded = Loaded::default();
        loaded.processes.push(python);
        loaded.programs.push(exec_record(1, 0, 1_000_000, 3_000.0, "make"));
        loaded.programs.push(exec_record(3, 1, 3_000_000, 500.0, "gpp"));
        for p in &loaded.programs {
            assert_eq!(p.source, Source::Exec);
        }
        loaded.runs.push(RunRecord {
            format_version: 1,
            run_id: "r".into(),
            label: None,
            command: vec!["make".into()],
            cwd: "/".into(),
            start_unix_ns: 1_000_000,
            end_unix_ns: 5_000_000,
            exit_status: Some(0),
            exit_signal: None,
            children_user_s: 0.0,
            children_sys_s: 0.0,
            traced_processes: 3,
        });
        loaded
    }

    #[test]
    fn phases_add_up_to_the_wall_time_along_the_critical_path() {
        let loaded = build();
        let a = attribute(&loaded.runs[0], &loaded);
        let total: f64 = a.phases.values().sum();
        assert!((total - 4_000.0).abs() < 1e-6, "{:?}", a.phases);
        let get = |k: &str| a.phases.get(k).copied().unwrap_or(0.0);
        // make: 1000→2000 (before python), 2950→3000 (between), 3500→4000 (after gpp).
        assert!((get("other: make") - 1_550.0).abs() < 1e-6, "{:?}", a.phases);
        assert!((get("other: gpp") - 500.0).abs() < 1e-6);
        assert!((get(phase::IDLE) - 1_000.0).abs() < 1e-6);
        assert!((get(phase::STARTUP) - 100.0).abs() < 1e-6);
        assert!((get(phase::IMPORTS) - 400.0).abs() < 1e-6);
        assert!((get(phase::LYNGUINE) - 30.0).abs() < 1e-6);
        assert!((get(phase::LAMD) - 20.0).abs() < 1e-6);
        // 100→150, 550→560, 610→620 of the main program's own code.
        assert!((get(phase::PROGRAM) - 70.0).abs() < 1e-6, "{:?}", a.phases);
        assert!((get(phase::TEARDOWN) - 300.0).abs() < 1e-6);
        // 620→650: between the main program and the teardown span, nothing.
        assert!((get(phase::UNATTRIBUTED) - 30.0).abs() < 1e-6, "{:?}", a.phases);
        assert_eq!(a.path.len(), 3);
    }

    #[test]
    fn a_child_running_beside_the_one_waited_for_is_off_the_path() {
        let mut loaded = build();
        // pid 4, also make's child, runs 2 100→2 600 beside python: make waited for python, not for it.
        loaded.programs.push(exec_record(4, 1, 2_100_000, 500.0, "pandoc"));
        let a = attribute(&loaded.runs[0], &loaded);
        assert!(!a.phases.contains_key("other: pandoc"), "{:?}", a.phases);
        let total: f64 = a.phases.values().sum();
        assert!((total - 4_000.0).abs() < 1e-6);
    }
}
