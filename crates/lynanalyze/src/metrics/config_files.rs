//! Config files: which were read, by which commands, and how often per process.
//!
//! A config read is a `config` span (`Interface.from_file` and friends): its `user_file` argument
//! names the files asked for. A `read` span of a `.yml`/`.yaml` file counts too.

use std::collections::{BTreeMap, BTreeSet};

use lynschema::{arg, category};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::load::ProcessTrace;
use crate::report::{Section, Table};

#[derive(Default)]
struct Usage {
    reads: usize,
    processes: BTreeSet<i64>,
    commands: BTreeSet<String>,
    max_per_process: BTreeMap<i64, usize>,
}

fn files_of(cat: &str, args: &serde_json::Map<String, Value>) -> Vec<String> {
    let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_owned);
    if cat == category::CONFIG {
        if let Some(files) = text(arg::USER_FILE) {
            return files.split(',').map(str::to_owned).collect();
        }
        if args.contains_key(arg::USER_FILE) {
            return vec!["(lynguine default)".to_owned()];
        }
        return Vec::new();
    }
    if cat == category::READ {
        if let Some(file) = text(arg::FILENAME) {
            if file.ends_with(".yml") || file.ends_with(".yaml") {
                return vec![file];
            }
        }
    }
    Vec::new()
}

pub fn section(processes: &[ProcessTrace]) -> Section {
    // The files each process read, found in parallel (a big build has millions of spans, few of them
    // config reads, and only a span with args can name a file), then counted in process order.
    let read: Vec<Vec<String>> = processes
        .par_iter()
        .map(|p| {
            let with_args = p.spans.iter().filter_map(|s| Some((&s.cat, s.args.as_deref()?)));
            with_args.flat_map(|(cat, args)| files_of(cat, args)).collect()
        })
        .collect();
    let mut usage: BTreeMap<String, Usage> = BTreeMap::new();
    for (p, files) in processes.iter().zip(read) {
        for file in files {
            let u = usage.entry(file).or_default();
            u.reads += 1;
            u.processes.insert(p.pid);
            u.commands.insert(p.group());
            *u.max_per_process.entry(p.pid).or_default() += 1;
        }
    }
    let mut section = Section::new("config_files", "Config files read");
    let mut table =
        Table::new("", &["file", "reads", "processes", "reads per process (mean)", "max in one process", "commands"]);
    let mut data = Vec::new();
    let mut rows: Vec<_> = usage.into_iter().collect();
    rows.sort_by(|a, b| b.1.reads.cmp(&a.1.reads).then(a.0.cmp(&b.0)));
    for (file, u) in rows {
        #[allow(clippy::cast_precision_loss)]
        let mean = u.reads as f64 / u.processes.len().max(1) as f64;
        let max = u.max_per_process.values().copied().max().unwrap_or(0);
        let commands = u.commands.iter().cloned().collect::<Vec<_>>().join(", ");
        table.row(vec![
            file.clone(),
            u.reads.to_string(),
            u.processes.len().to_string(),
            format!("{mean:.1}"),
            max.to_string(),
            commands.clone(),
        ]);
        data.push(
            json!({"file": file, "reads": u.reads, "processes": u.processes.len(), "reads_per_process_mean": mean,
                         "max_reads_in_a_process": max, "commands": u.commands}),
        );
    }
    section.tables.push(table);
    section.notes.push(
        "a file read again in every process is parsed again in every process: what a warm server would keep".into(),
    );
    section.data = json!(data);
    section
}
