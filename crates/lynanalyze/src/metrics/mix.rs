//! Operation mix: the share of calls and of time per operation category.

use polars::prelude::*;
use serde_json::json;

use crate::frame::{f64s, Dictionary};
use crate::report::{ms, pct, Section, Table};

/// Per category: calls and self time (self time, so nested calls are not counted twice).
pub fn per_category(spans: &DataFrame) -> PolarsResult<DataFrame> {
    spans
        .clone()
        .lazy()
        .filter(col("is_call"))
        .group_by([col("cat")])
        .agg([len().alias("calls"), col("self_us").sum().alias("self_us")])
        .sort(["self_us", "cat"], SortMultipleOptions::default().with_order_descending_multi([true, false]))
        .collect()
}

pub fn section(spans: &DataFrame, dictionary: &Dictionary) -> anyhow::Result<Section> {
    let df = per_category(spans)?;
    let cat = dictionary.strs(&df, "cat")?;
    let calls = f64s(&df, "calls")?;
    let time = f64s(&df, "self_us")?;
    let total_calls: f64 = calls.iter().flatten().sum();
    let total_time: f64 = time.iter().flatten().sum();
    let mut section = Section::new("operation_mix", "Operation mix");
    let mut table = Table::new("", &["category", "calls", "share of calls", "self ms", "share of time"]);
    let mut data = Vec::new();
    for i in 0..df.height() {
        let (c, t) = (calls[i].unwrap_or(0.0), time[i].unwrap_or(0.0));
        table.row(vec![
            cat[i].clone().unwrap_or_default(),
            format!("{c:.0}"),
            pct(c, total_calls),
            ms(t),
            pct(t, total_time),
        ]);
        data.push(json!({"category": cat[i], "calls": c, "self_us": t,
            "share_of_calls": if total_calls > 0.0 { c / total_calls } else { 0.0 },
            "share_of_time": if total_time > 0.0 { t / total_time } else { 0.0 }}));
    }
    section.tables.push(table);
    section.data = json!(data);
    Ok(section)
}
