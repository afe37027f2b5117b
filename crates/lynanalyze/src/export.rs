//! `lynanalyze export TRACES… -o DATASET/`: runs, build phases, processes and spans as a Parquet dataset
//! partitioned by run (hive style), for DuckDB, Spark or polars to query across many builds.
//!
//! ```text
//! DATASET/_lynanalyze_dataset.json              what this is, and its layout version
//! DATASET/runs/run_id=<id>/part.parquet         one row: run.json, and what was traced
//! DATASET/phases/run_id=<id>/part.parquet       the build's wall time by phase, along its critical path
//! DATASET/processes/run_id=<id>/part.parquet    one row per process: lynshim's (source = python) and
//!                                               the exec records' other programs (source = exec)
//! DATASET/spans/run_id=<id>/part.parquet        one row per span of the Python processes
//! ```
//!
//! Every figure is the report's: [`metrics::processes::compute`] for the per-process phases,
//! [`metrics::build::attribute`] for the build's phases, [`frame::export`] for the spans. `run_id` is
//! in the directory names only (hive partitioning), so exporting more runs into the same dataset adds
//! partitions, and exporting a run again replaces its partitions and nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use polars::prelude::*;

use crate::load::{self, LoadOptions, Loaded, Problem, ProcessTrace};
use crate::metrics::{build, processes};
use crate::{diff, frame};

/// The marker file that says a directory is a lynanalyze dataset.
pub const MARKER: &str = "_lynanalyze_dataset.json";
/// Version of the dataset's layout and columns (README, "Exporting a Parquet dataset").
pub const DATASET_VERSION: u32 = 1;
/// The tables, each a directory of `run_id=<id>` partitions.
pub const TABLES: [&str; 4] = ["runs", "phases", "processes", "spans"];

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Outcome {
    pub runs: usize,
    pub processes: usize,
    pub programs: usize,
    pub spans: usize,
    pub skipped: Vec<Problem>,
    pub cut_short: Vec<Problem>,
    /// Files some of whose lines were dropped as untrustworthy (see `lynload`'s checks).
    pub damaged: Vec<Problem>,
}

/// A run id as a directory name: anything but letters, digits, `.`, `_` and `-` becomes `_`.
pub fn partition_value(run_id: &str) -> String {
    if run_id.is_empty() {
        return "none".into();
    }
    run_id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

#[allow(clippy::cast_precision_loss)]
fn ns_to_us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Make `out` a dataset directory, or refuse one that holds something else.
fn prepare(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("{} exists and is not a directory", out.display());
        }
        let empty = std::fs::read_dir(out)?.next().is_none();
        if !empty && !out.join(MARKER).exists() {
            bail!(
                "{} is not empty and is not a lynanalyze dataset (no {MARKER}): give a new or empty directory",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let marker = serde_json::json!({
        "format": "lynanalyze dataset", "version": DATASET_VERSION, "partitioning": "hive, by run_id",
        "tables": TABLES, "written_by": format!("lynanalyze {}", env!("CARGO_PKG_VERSION")),
    });
    std::fs::write(out.join(MARKER), serde_json::to_string_pretty(&marker)?)?;
    Ok(())
}

/// Write `df` as `out/table/run_id=<id>/part.parquet`, replacing that partition.
fn write_partition(out: &Path, table: &str, run_id: &str, df: &mut DataFrame) -> anyhow::Result<()> {
    let dir = out.join(table).join(format!("run_id={}", partition_value(run_id)));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join("part.parquet.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    ParquetWriter::new(file).finish(df)?;
    std::fs::rename(&tmp, dir.join("part.parquet"))?;
    Ok(())
}

/// Rows of `df` whose `run_id` is `run_id`, without that column.
fn of_run(df: &DataFrame, run_id: &str) -> PolarsResult<DataFrame> {
    let mask = df.column("run_id")?.str()?.equal(run_id);
    df.filter(&mask)?.drop("run_id")
}

/// One row per process: the Python processes with the report's per-process accounting, then the
/// programs only exec records saw.
fn processes_frame(loaded: &Loaded, per_process: &[processes::ProcessTimes]) -> PolarsResult<DataFrame> {
    let all: Vec<&ProcessTrace> = loaded.processes.iter().chain(&loaded.programs).collect();
    let python = loaded.processes.len();
    // A column of a per-process figure: the accounting's value for a Python process, null otherwise.
    let figure = |name: &str, get: fn(&processes::ProcessTimes) -> f64| {
        let mut values: Vec<Option<f64>> = per_process.iter().map(|t| Some(get(t))).collect();
        values.resize(all.len(), None);
        Column::new(name.into(), values)
    };
    let mut calls: Vec<Option<i64>> = per_process.iter().map(|t| i64::try_from(t.calls).ok()).collect();
    calls.resize(all.len(), None);
    let mut collections: Vec<Option<i64>> = per_process.iter().map(|t| i64::try_from(t.gc_collections).ok()).collect();
    collections.resize(all.len(), None);
    DataFrame::new_infer_height(vec![
        Column::new("run_id".into(), all.iter().map(|p| p.run_id.as_str()).collect::<Vec<_>>()),
        Column::new("pid".into(), all.iter().map(|p| p.pid).collect::<Vec<_>>()),
        Column::new("ppid".into(), all.iter().map(|p| p.ppid).collect::<Vec<_>>()),
        Column::new(
            "start_ticks".into(),
            all.iter().map(|p| p.start_ticks.and_then(|t| i64::try_from(t).ok())).collect::<Vec<_>>(),
        ),
        Column::new(
            "source".into(),
            (0..all.len()).map(|i| if i < python { "python" } else { "exec" }).collect::<Vec<_>>(),
        ),
        Column::new("command".into(), all.iter().map(|p| p.command.as_str()).collect::<Vec<_>>()),
        Column::new("kind".into(), all.iter().map(|p| diff::kind_of(&p.command)).collect::<Vec<_>>()),
        Column::new("group".into(), all.iter().map(|p| p.group()).collect::<Vec<_>>()),
        Column::new("lamd_command".into(), all.iter().map(|p| p.lamd_command.as_deref()).collect::<Vec<_>>()),
        Column::new("start_unix_us".into(), all.iter().map(|p| ns_to_us(p.wall_zero_ns)).collect::<Vec<_>>()),
        Column::new(
            "wall_us".into(),
            all.iter()
                .enumerate()
                .map(|(i, p)| if i < python { per_process[i].wall_us } else { p.end_us() })
                .collect::<Vec<_>>(),
        ),
        figure("startup_us", |t| t.startup_us),
        figure("activation_us", |t| t.activation_us),
        figure("import_us", |t| t.import_us),
        figure("work_us", |t| t.work_us),
        figure("program_us", |t| t.program_us),
        figure("gc_us", |t| t.gc_us),
        Column::new("gc_collections".into(), collections),
        figure("atexit_us", |t| t.atexit_us),
        figure("shim_write_us", |t| t.shim_write_us),
        figure("teardown_us", |t| t.teardown_us),
        figure("waiting_us", |t| t.waiting_us),
        figure("unattributed_us", |t| t.unattributed_us),
        Column::new("calls".into(), calls),
        Column::new("peak_rss_bytes".into(), all.iter().map(|p| p.peak_rss).collect::<Vec<_>>()),
        Column::new("exit_status".into(), all.iter().map(|p| p.exit_status).collect::<Vec<_>>()),
        Column::new("exit_signal".into(), all.iter().map(|p| p.exit_signal).collect::<Vec<_>>()),
        Column::new("cpu_us".into(), all.iter().map(|p| p.cpu_us).collect::<Vec<_>>()),
        Column::new("truncated".into(), all.iter().map(|p| p.truncated).collect::<Vec<_>>()),
        Column::new("file".into(), all.iter().map(|p| p.file.display().to_string()).collect::<Vec<_>>()),
    ])
}

/// Export everything under `inputs` into the dataset `out`.
pub fn export(inputs: &[PathBuf], out: &Path, options: LoadOptions<'_>) -> anyhow::Result<Outcome> {
    let loaded = load::load(inputs, options);
    if loaded.processes.is_empty() && loaded.programs.is_empty() && loaded.runs.is_empty() {
        for problem in &loaded.skipped {
            eprintln!("lynanalyze: skipped {problem}");
        }
        bail!(
            "no lynshim traces or run records could be read from {} (run a command under `lynshim run` first)",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    prepare(out)?;
    let (spans, dictionary) = frame::spans(&loaded.processes)?;
    let columns = frame::SpanColumns::new(&spans, &loaded.processes, &dictionary)?;
    let per_process = processes::compute(&loaded, &columns, &dictionary);
    let processes_df = processes_frame(&loaded, &per_process)?;
    // The span table, with what tells a process apart within its run beside each span.
    let mut keys = frame::processes(&loaded.processes)?;
    keys.with_column(Column::new(
        "start_ticks".into(),
        loaded.processes.iter().map(|p| p.start_ticks.and_then(|t| i64::try_from(t).ok())).collect::<Vec<_>>(),
    ))?;
    let spans_df = frame::export(&keys, &spans, &dictionary, &loaded.processes)?;

    let mut run_ids: BTreeSet<&str> = loaded.runs.iter().map(|r| r.run_id.as_str()).collect();
    run_ids.extend(loaded.processes.iter().chain(&loaded.programs).map(|p| p.run_id.as_str()));
    for run_id in &run_ids {
        let record = loaded.runs.iter().find(|r| r.run_id == *run_id);
        let attribution = record.map(|r| build::attribute(r, &loaded));
        let python = loaded.processes.iter().filter(|p| p.run_id == *run_id).count();
        let other = loaded.programs.iter().filter(|p| p.run_id == *run_id).count();
        let mut run = DataFrame::new_infer_height(vec![
            Column::new("label".into(), [record.and_then(|r| r.label.clone())]),
            Column::new("command".into(), [record.map(|r| r.command.join(" "))]),
            Column::new("cwd".into(), [record.map(|r| r.cwd.clone())]),
            Column::new("start_unix_us".into(), [record.map(|r| ns_to_us(r.start_unix_ns))]),
            Column::new("end_unix_us".into(), [record.map(|r| ns_to_us(r.end_unix_ns))]),
            Column::new("wall_us".into(), [attribution.as_ref().map(|a| a.wall_us)]),
            Column::new("exit_status".into(), [record.and_then(|r| r.exit_status)]),
            Column::new("exit_signal".into(), [record.and_then(|r| r.exit_signal)]),
            Column::new("cpu_us".into(), [record.map(|r| (r.children_user_s + r.children_sys_s) * 1e6)]),
            Column::new("python_processes".into(), [i64::try_from(python).unwrap_or(i64::MAX)]),
            Column::new("other_programs".into(), [i64::try_from(other).unwrap_or(i64::MAX)]),
            Column::new("has_run_record".into(), [record.is_some()]),
        ])?;
        write_partition(out, "runs", run_id, &mut run)?;
        if let Some(a) = &attribution {
            let (names, us): (Vec<&str>, Vec<f64>) = a.phases.iter().map(|(k, v)| (k.as_str(), *v)).unzip();
            let share: Vec<f64> = us.iter().map(|v| if a.wall_us > 0.0 { v / a.wall_us } else { 0.0 }).collect();
            let mut phases = DataFrame::new_infer_height(vec![
                Column::new("phase".into(), names),
                Column::new("us".into(), us),
                Column::new("share_of_wall".into(), share),
            ])?;
            write_partition(out, "phases", run_id, &mut phases)?;
        }
        write_partition(out, "processes", run_id, &mut of_run(&processes_df, run_id)?)?;
        let mut run_spans = of_run(&spans_df, run_id)?;
        if run_spans.height() > 0 {
            write_partition(out, "spans", run_id, &mut run_spans)?;
        }
    }
    Ok(Outcome {
        runs: run_ids.len(),
        processes: loaded.processes.len(),
        programs: loaded.programs.len(),
        spans: spans_df.height(),
        skipped: loaded.skipped,
        cut_short: loaded.warnings,
        damaged: loaded.damaged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_are_directory_names() {
        assert_eq!(partition_value("20261129T102223-3a679d"), "20261129T102223-3a679d");
        assert_eq!(partition_value("a/b c"), "a_b_c");
        assert_eq!(partition_value(""), "none");
    }

    #[test]
    fn refuses_a_directory_that_is_not_a_dataset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("precious.txt"), "x").expect("write");
        let err = prepare(dir.path()).expect_err("refused");
        assert!(err.to_string().contains("not a lynanalyze dataset"), "{err}");
        let empty = dir.path().join("new");
        prepare(&empty).expect("a new directory is fine");
        prepare(&empty).expect("and so is a dataset");
    }
}
