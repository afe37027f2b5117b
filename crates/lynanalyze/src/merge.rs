//! `lynanalyze merge`: every process of a build in one Chrome trace, on one clock.
//!
//! Each file's timestamps count from its own process's start; the merged file counts from the earliest
//! process's start, shifting each by the difference of their wall-clock zeros. Processes keep their real
//! pids, names, threads, counters and server-mode flows, are ordered by start time, and each traced child
//! is joined to its traced parent by a flow arrow from a `spawn` mark in the parent to the child's start.
//! Programs seen only by the preload library (make, sh, gpp, pandoc) get lanes of their own; the exec
//! record of a Python process is left out, since its lynshim trace tells the same process in detail.
//! Run records go into the trace's `metadata`. Files cut short are merged as far as they go.
//!
//! What is merged is what `report` reads: the same files (each once, however many paths lead to it),
//! the same process counted once, and the lines the loader dropped as untrustworthy left out.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use lynschema::{arg, category, event, RunRecord};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::load::{load, read_events, LoadOptions, Problem};

/// Flow ids of spawn arrows start here, far above the ids of request flows (pid << 24 | counter).
const SPAWN_FLOW_BASE: u64 = 1 << 50;

/// What a merge did.
#[derive(Debug, Default)]
pub struct MergeOutcome {
    pub processes: usize,
    pub events: usize,
    pub spawn_flows: usize,
    pub skipped: Vec<Problem>,
    /// Files cut short, and paths not read twice.
    pub cut_short: Vec<Problem>,
    /// Files merged without the lines the loader dropped.
    pub damaged: Vec<Problem>,
}

struct Process {
    file: PathBuf,
    events: Vec<Value>,
    pid: i64,
    ppid: i64,
    wall_zero_ns: u64,
    /// How far the process's zero moved to its exec (microseconds): its events are moved back as much.
    moved_us: f64,
    parent_trace: Option<String>,
    command: String,
}

/// Merge the traces under `inputs` into `output` (gzip-compressed when it ends in `.gz`).
pub fn merge(inputs: &[PathBuf], output: &Path, max_bytes: u64) -> anyhow::Result<MergeOutcome> {
    // The linked model knows which files can be read and trusted, which lines were dropped, and which
    // exec records describe a Python process that has a trace of its own.
    let linked = load(inputs, LoadOptions { max_file_bytes: max_bytes, progress: None });
    let mut skipped = linked.skipped.clone();
    // …and which images exec'd another at once (sh -c): the process's lane is its last program's.
    let told_twice: HashSet<&Path> = linked
        .processes
        .iter()
        .filter_map(|p| p.image.as_ref().map(|image| image.file.as_path()))
        .chain(linked.programs.iter().filter(|p| p.replaced_by_exec).map(|p| p.file.as_path()))
        .collect();
    let files: Vec<(&PathBuf, &[u32])> = linked
        .processes
        .iter()
        .chain(&linked.programs)
        .filter(|p| !told_twice.contains(p.file.as_path()))
        .map(|p| (&p.file, p.dropped.lines.as_slice()))
        .collect();
    // A Python trace linked to its exec record starts at the exec, to the microsecond (see lynload::link).
    let moved: HashMap<&Path, f64> = linked
        .processes
        .iter()
        .filter_map(|p| p.image.as_ref().map(|image| (p.file.as_path(), image.moved_us)))
        .collect();
    let read: Vec<_> = files.par_iter().map(|&(f, dropped)| (f.clone(), read_events(f, max_bytes, dropped))).collect();
    let mut outcome =
        MergeOutcome { cut_short: linked.warnings.clone(), damaged: linked.damaged.clone(), ..MergeOutcome::default() };
    let mut processes = Vec::new();
    for (file, result) in read {
        match result {
            Ok((events, _)) => {
                let meta = events
                    .iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(event::PROCESS))
                    .and_then(|e| e.get("args"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let moved_us = moved.get(file.as_path()).copied().unwrap_or(0.0);
                processes.push(Process {
                    file,
                    pid: meta.get(arg::PID).and_then(Value::as_i64).unwrap_or(0),
                    ppid: meta.get(arg::PPID).and_then(Value::as_i64).unwrap_or(0),
                    wall_zero_ns: meta.get(arg::WALL_ZERO_NS).and_then(Value::as_u64).unwrap_or(0)
                        + (moved_us * 1000.0) as u64,
                    moved_us,
                    parent_trace: meta.get(arg::PARENT_TRACE).and_then(Value::as_str).map(str::to_owned),
                    command: meta.get(arg::COMMAND).and_then(Value::as_str).unwrap_or("").to_owned(),
                    events,
                });
            }
            Err(message) => skipped.push(Problem { file, message }),
        }
    }
    let runs: Vec<RunRecord> = linked.runs.clone();
    if processes.is_empty() {
        outcome.skipped = skipped;
        anyhow::bail!("no lynshim traces could be read from the inputs");
    }
    processes.sort_by(|a, b| a.wall_zero_ns.cmp(&b.wall_zero_ns).then(a.pid.cmp(&b.pid)));
    let origin = processes[0].wall_zero_ns;
    #[allow(clippy::cast_precision_loss)]
    let offset_us = |p: &Process| p.wall_zero_ns.saturating_sub(origin) as f64 / 1000.0;
    let by_name: HashMap<String, usize> = processes
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.file.file_name().and_then(|n| n.to_str()).map(|n| (n.to_owned(), i)))
        .collect();

    let mut out: Vec<Value> = Vec::new();
    for (index, p) in processes.iter().enumerate() {
        let shift = offset_us(p);
        for ev in &p.events {
            let mut ev = ev.clone();
            if let Some(ts) = ev.get("ts").and_then(Value::as_f64) {
                let ts = ts - p.moved_us;
                if ts < 0.0 {
                    // Interpreter start-up, dated from the tick before the exec: it begins at the exec.
                    if let Some(dur) = ev.get("dur").and_then(Value::as_f64) {
                        ev["dur"] = json!((dur + ts).max(0.0));
                    }
                }
                ev["ts"] = json!(ts.max(0.0) + shift);
            }
            out.push(ev);
        }
        out.push(json!({"ph": "M", "name": event::PROCESS_SORT_INDEX, "pid": p.pid, "tid": p.pid,
                        "args": {"sort_index": index}}));
    }
    // Spawn arrows: parent → child, where both were traced. The parent is the latest-started process
    // with the child's ppid (pids are reused; a process that exec'd has one record per program), or
    // else the nearest traced ancestor lynshim found (when the programs between were not traced).
    for (index, child) in processes.iter().enumerate() {
        let by_ppid = processes
            .iter()
            .enumerate()
            .filter(|(i, p)| *i != index && p.pid == child.ppid && p.wall_zero_ns <= child.wall_zero_ns)
            .max_by_key(|(_, p)| p.wall_zero_ns)
            .map(|(_, p)| p);
        let parent = by_ppid.or_else(|| {
            child
                .parent_trace
                .as_deref()
                .and_then(|t| Path::new(t).file_name().and_then(|n| n.to_str()))
                .and_then(|name| by_name.get(name))
                .map(|&i| &processes[i])
        });
        let Some(parent) = parent else { continue };
        let at = offset_us(child);
        let id = SPAWN_FLOW_BASE + index as u64;
        out.push(json!({"ph": "X", "name": format!("spawn {}", child.command), "cat": category::TRACER,
                        "pid": parent.pid, "tid": parent.pid, "ts": at, "dur": 1.0, "args": {"child_pid": child.pid}}));
        out.push(json!({"ph": "s", "name": "spawn", "cat": category::TRACER, "id": id, "pid": parent.pid,
                        "tid": parent.pid, "ts": at}));
        out.push(json!({"ph": "f", "bp": "e", "name": "spawn", "cat": category::TRACER, "id": id, "pid": child.pid,
                        "tid": child.pid, "ts": at}));
        outcome.spawn_flows += 1;
    }
    outcome.processes = processes.len();
    outcome.events = out.len();
    outcome.skipped = skipped;
    write_trace(output, &out, &runs).with_context(|| format!("writing {}", output.display()))?;
    Ok(outcome)
}

fn write_trace(output: &Path, events: &[Value], runs: &[RunRecord]) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(output)?);
    let mut sink: Box<dyn Write> = if output.extension().and_then(|e| e.to_str()) == Some("gz") {
        Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()))
    } else {
        Box::new(file)
    };
    sink.write_all(b"{\"traceEvents\":[\n")?;
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            sink.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut sink, ev)?;
    }
    sink.write_all(b"\n],\n\"displayTimeUnit\":\"ms\",\n\"metadata\":")?;
    serde_json::to_writer(&mut sink, &json!({"lynshim_runs": runs}))?;
    sink.write_all(b"}\n")?;
    sink.flush()
}
