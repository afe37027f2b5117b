//! Call frequency: how often each lynguine/lamd entry point is called, by whom, and for how long.

use polars::prelude::*;
use serde_json::json;

use crate::frame::{f64s, strs, Dictionary};
use crate::report::{ms, Section, Table};

/// Per entry point: calls, processes, calls per process (mean, max), total/mean/p50/p95 duration.
pub fn per_entry_point(spans: &DataFrame) -> PolarsResult<DataFrame> {
    let calls = spans.clone().lazy().filter(col("is_call"));
    let per_process = calls
        .clone()
        .group_by([col("name"), col("proc")])
        .agg([len().alias("n")])
        .group_by([col("name")])
        .agg([col("n").mean().alias("per_process_mean"), col("n").max().alias("per_process_max")]);
    calls
        .group_by([col("name"), col("cat")])
        .agg([
            len().alias("calls"),
            col("proc").n_unique().alias("processes"),
            col("dur_us").sum().alias("total_us"),
            col("dur_us").mean().alias("mean_us"),
            col("dur_us").quantile(lit(0.5), QuantileMethod::Linear).alias("p50_us"),
            col("dur_us").quantile(lit(0.95), QuantileMethod::Linear).alias("p95_us"),
        ])
        .left_join(per_process, col("name"), col("name"))
        .sort(
            ["calls", "total_us", "name"],
            SortMultipleOptions::default().with_order_descending_multi([true, true, false]),
        )
        .collect()
}

fn calls_with_process(spans: &DataFrame, processes: &DataFrame) -> LazyFrame {
    spans.clone().lazy().filter(col("is_call")).join(
        processes.clone().lazy(),
        [col("proc")],
        [col("proc")],
        JoinArgs::new(JoinType::Inner),
    )
}

/// Calls per group (lamd command or program) and entry point.
pub fn per_group(spans: &DataFrame, processes: &DataFrame) -> PolarsResult<DataFrame> {
    calls_with_process(spans, processes)
        .group_by([col("group"), col("name")])
        .agg([len().alias("calls"), col("proc").n_unique().alias("processes"), col("dur_us").sum().alias("total_us")])
        .sort(
            ["group", "calls", "name"],
            SortMultipleOptions::default().with_order_descending_multi([false, true, false]),
        )
        .collect()
}

/// Calls per build (run).
pub fn per_run(spans: &DataFrame, processes: &DataFrame) -> PolarsResult<DataFrame> {
    calls_with_process(spans, processes)
        .group_by([col("run_id")])
        .agg([len().alias("calls"), col("proc").n_unique().alias("processes"), col("dur_us").sum().alias("total_us")])
        .sort(["run_id"], SortMultipleOptions::default())
        .collect()
}

pub fn section(
    spans: &DataFrame,
    dictionary: &Dictionary,
    processes: &DataFrame,
    top: usize,
) -> anyhow::Result<Section> {
    let mut section = Section::new("call_frequency", "Call frequency of lynguine and lamd entry points");
    let df = per_entry_point(spans)?;
    let (name, cat) = (dictionary.strs(&df, "name")?, dictionary.strs(&df, "cat")?);
    let cols = ["calls", "processes", "per_process_mean", "per_process_max", "total_us", "mean_us", "p50_us", "p95_us"];
    let values = cols.iter().map(|c| f64s(&df, c)).collect::<PolarsResult<Vec<_>>>()?;
    let v = |c: usize, i: usize| values[c][i].unwrap_or(0.0);
    let mut table = Table::new(
        "per entry point",
        &[
            "entry point",
            "category",
            "calls",
            "processes",
            "calls/process (mean)",
            "max",
            "total ms",
            "mean ms",
            "p50 ms",
            "p95 ms",
        ],
    );
    let mut data = Vec::new();
    for i in 0..df.height() {
        let n = name[i].clone().unwrap_or_default();
        data.push(json!({"name": n, "category": cat[i], "calls": v(0, i), "processes": v(1, i),
            "calls_per_process_mean": v(2, i), "calls_per_process_max": v(3, i), "total_us": v(4, i),
            "mean_us": v(5, i), "p50_us": v(6, i), "p95_us": v(7, i)}));
        if i < top {
            table.row(vec![
                n,
                cat[i].clone().unwrap_or_default(),
                format!("{:.0}", v(0, i)),
                format!("{:.0}", v(1, i)),
                format!("{:.1}", v(2, i)),
                format!("{:.0}", v(3, i)),
                ms(v(4, i)),
                ms(v(5, i)),
                ms(v(6, i)),
                ms(v(7, i)),
            ]);
        }
    }
    if df.height() > top {
        section.notes.push(format!("{} more entry points in the JSON report", df.height() - top));
    }
    section.tables.push(table);

    let groups = per_group(spans, processes)?;
    let (g, gn) = (strs(&groups, "group")?, dictionary.strs(&groups, "name")?);
    let (gc, gp, gt) = (f64s(&groups, "calls")?, f64s(&groups, "processes")?, f64s(&groups, "total_us")?);
    let mut by_group = Table::new("per command", &["command", "entry point", "calls", "processes", "total ms"]);
    let mut group_data = Vec::new();
    for i in 0..groups.height() {
        let (c, p, t) = (gc[i].unwrap_or(0.0), gp[i].unwrap_or(0.0), gt[i].unwrap_or(0.0));
        by_group.row(vec![
            g[i].clone().unwrap_or_default(),
            gn[i].clone().unwrap_or_default(),
            format!("{c:.0}"),
            format!("{p:.0}"),
            ms(t),
        ]);
        group_data.push(json!({"command": g[i], "name": gn[i], "calls": c, "processes": p, "total_us": t}));
    }
    section.tables.push(by_group);

    let runs = per_run(spans, processes)?;
    let (r, rc, rp, rt) =
        (strs(&runs, "run_id")?, f64s(&runs, "calls")?, f64s(&runs, "processes")?, f64s(&runs, "total_us")?);
    let mut by_run = Table::new("per build", &["run", "calls", "processes calling", "total ms"]);
    let mut run_data = Vec::new();
    for i in 0..runs.height() {
        let (c, p, t) = (rc[i].unwrap_or(0.0), rp[i].unwrap_or(0.0), rt[i].unwrap_or(0.0));
        by_run.row(vec![r[i].clone().unwrap_or_default(), format!("{c:.0}"), format!("{p:.0}"), ms(t)]);
        run_data.push(json!({"run_id": r[i], "calls": c, "processes": p, "total_us": t}));
    }
    section.tables.push(by_run);
    section.data = json!({"entry_points": data, "per_command": group_data, "per_build": run_data});
    Ok(section)
}
