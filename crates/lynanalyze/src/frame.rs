//! The polars view of a loaded build: one row per span, one row per process.
//!
//! Per-process facts (run, command, group) live once in the process frame and are joined in by the
//! `proc` index where a query needs them, instead of being copied into every span row: a build has
//! thousands of spans per process, and those copies were most of the cost of building the frame.

use polars::prelude::*;

use crate::load::{is_call, ProcessTrace};

/// One row per process: proc (index), run_id, pid, process (command), group.
pub fn processes(processes: &[ProcessTrace]) -> PolarsResult<DataFrame> {
    let index: Vec<u32> = (0..processes.len()).map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
    DataFrame::new_infer_height(vec![
        Column::new("proc".into(), index),
        Column::new("run_id".into(), processes.iter().map(|p| p.run_id.as_str()).collect::<Vec<_>>()),
        Column::new("process".into(), processes.iter().map(|p| p.command.as_str()).collect::<Vec<_>>()),
        Column::new("group".into(), processes.iter().map(ProcessTrace::group).collect::<Vec<_>>()),
    ])
}

/// One row per span: proc, pid, tid, name, package (first dotted part), cat, start_us, dur_us, self_us,
/// depth, parent_cat, is_call.
pub fn spans(processes: &[ProcessTrace]) -> PolarsResult<DataFrame> {
    let n: usize = processes.iter().map(|p| p.spans.len()).sum();
    let mut proc = Vec::with_capacity(n);
    let mut pid = Vec::with_capacity(n);
    let mut tid = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut package = Vec::with_capacity(n);
    let mut cat = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let mut dur = Vec::with_capacity(n);
    let mut self_us = Vec::with_capacity(n);
    let mut depth = Vec::with_capacity(n);
    let mut parent_cat: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut call = Vec::with_capacity(n);
    for (index, p) in processes.iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        for s in &p.spans {
            proc.push(index);
            pid.push(p.pid);
            tid.push(s.tid);
            name.push(s.name.as_str());
            package.push(s.name.split('.').next().unwrap_or(""));
            cat.push(s.cat.as_str());
            start.push(s.start_us);
            dur.push(s.dur_us);
            self_us.push(s.self_us);
            depth.push(s.depth);
            parent_cat.push(s.parent_cat.as_deref());
            call.push(is_call(&s.cat));
        }
    }
    DataFrame::new_infer_height(vec![
        Column::new("proc".into(), proc),
        Column::new("pid".into(), pid),
        Column::new("tid".into(), tid),
        Column::new("name".into(), name),
        Column::new("package".into(), package),
        Column::new("cat".into(), cat),
        Column::new("start_us".into(), start),
        Column::new("dur_us".into(), dur),
        Column::new("self_us".into(), self_us),
        Column::new("depth".into(), depth),
        Column::new("parent_cat".into(), parent_cat),
        Column::new("is_call".into(), call),
    ])
}

/// Every span with its process's run, command and group, its parent's name and its args (JSON): the
/// table written by `--spans`.
pub fn export(processes_df: &DataFrame, spans_df: &DataFrame, traces: &[ProcessTrace]) -> PolarsResult<DataFrame> {
    let mut parent: Vec<Option<&str>> = Vec::with_capacity(spans_df.height());
    let mut args: Vec<String> = Vec::with_capacity(spans_df.height());
    for p in traces {
        for s in &p.spans {
            parent.push(s.parent.map(|i| p.spans[i].name.as_str()));
            args.push(serde_json::Value::Object(s.args.clone()).to_string());
        }
    }
    let mut spans = spans_df.clone();
    spans.with_column(Column::new("parent".into(), parent))?;
    spans.with_column(Column::new("args".into(), args))?;
    processes_df
        .clone()
        .lazy()
        .join(spans.lazy(), [col("proc")], [col("proc")], JoinArgs::new(JoinType::Inner))
        .select([col("run_id"), col("pid"), col("process"), col("group"), all().exclude_cols(["run_id", "pid", "process", "group", "proc"]).as_expr()])
        .collect()
}

/// A column as f64 values (nulls as None).
pub fn f64s(df: &DataFrame, name: &str) -> PolarsResult<Vec<Option<f64>>> {
    let col = df.column(name)?.cast(&DataType::Float64)?;
    Ok(col.f64()?.iter().collect())
}

/// A string column.
pub fn strs(df: &DataFrame, name: &str) -> PolarsResult<Vec<Option<String>>> {
    let col = df.column(name)?.cast(&DataType::String)?;
    Ok(col.str()?.iter().map(|s| s.map(str::to_owned)).collect())
}

/// Write spans as Parquet or CSV, chosen by the file's extension.
pub fn write_spans(df: &mut DataFrame, path: &std::path::Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            ParquetWriter::new(file).finish(df)?;
        }
        Some("csv") => CsvWriter::new(file).finish(df)?,
        _ => anyhow::bail!("{}: spans can be written as .parquet or .csv", path.display()),
    }
    Ok(())
}
