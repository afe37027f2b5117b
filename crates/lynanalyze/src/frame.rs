//! The polars view of a loaded build: one row per span, one row per process.

use polars::prelude::*;

use crate::load::{is_call, ProcessTrace};

/// Spans of every process: run_id, pid, process, group, tid, name, package (first dotted part), cat, start_us, dur_us, self_us,
/// depth, parent, parent_cat, is_call, args (JSON).
pub fn spans(processes: &[ProcessTrace]) -> PolarsResult<DataFrame> {
    let n: usize = processes.iter().map(|p| p.spans.len()).sum();
    let mut run_id = Vec::with_capacity(n);
    let mut pid = Vec::with_capacity(n);
    let mut process = Vec::with_capacity(n);
    let mut group = Vec::with_capacity(n);
    let mut tid = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut package = Vec::with_capacity(n);
    let mut cat = Vec::with_capacity(n);
    let mut start = Vec::with_capacity(n);
    let mut dur = Vec::with_capacity(n);
    let mut self_us = Vec::with_capacity(n);
    let mut depth = Vec::with_capacity(n);
    let mut parent: Vec<Option<String>> = Vec::with_capacity(n);
    let mut parent_cat: Vec<Option<String>> = Vec::with_capacity(n);
    let mut call = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    for p in processes {
        let g = p.group();
        for s in &p.spans {
            run_id.push(p.run_id.clone());
            pid.push(p.pid);
            process.push(p.command.clone());
            group.push(g.clone());
            tid.push(s.tid);
            name.push(s.name.clone());
            package.push(s.name.split('.').next().unwrap_or("").to_owned());
            cat.push(s.cat.clone());
            start.push(s.start_us);
            dur.push(s.dur_us);
            self_us.push(s.self_us);
            depth.push(s.depth);
            parent.push(s.parent.clone());
            parent_cat.push(s.parent_cat.clone());
            call.push(is_call(&s.cat));
            args.push(serde_json::Value::Object(s.args.clone()).to_string());
        }
    }
    DataFrame::new_infer_height(vec![
        Column::new("run_id".into(), run_id),
        Column::new("pid".into(), pid),
        Column::new("process".into(), process),
        Column::new("group".into(), group),
        Column::new("tid".into(), tid),
        Column::new("name".into(), name),
        Column::new("package".into(), package),
        Column::new("cat".into(), cat),
        Column::new("start_us".into(), start),
        Column::new("dur_us".into(), dur),
        Column::new("self_us".into(), self_us),
        Column::new("depth".into(), depth),
        Column::new("parent".into(), parent),
        Column::new("parent_cat".into(), parent_cat),
        Column::new("is_call".into(), call),
        Column::new("args".into(), args),
    ])
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
