//! Imports: which modules cost most (self and cumulative), how many processes paid for each, the
//! share of start-up they make, and lazy-import candidates.
//!
//! A lazy-import candidate is a top-level package that a process imported but into which no traced
//! span of that process calls. Only lynguine and lamd entry points are traced, so "no traced call" is
//! the evidence, and the report says so: pandas is a candidate for a process whose lynguine calls
//! never needed a data frame only if those calls are what lynshim traced.

use std::collections::BTreeMap;

use polars::prelude::*;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::json;

use crate::frame::{f64s, Dictionary, SpanColumns};
use crate::report::{ms, pct, Section, Table};

/// The import spans.
fn imports(spans: &DataFrame, dictionary: &Dictionary) -> LazyFrame {
    spans.clone().lazy().filter(col("cat").eq(lit(dictionary.category(lynschema::category::IMPORT))))
}

/// Per module: processes that imported it, total and mean self/cumulative time.
pub fn per_module(spans: &DataFrame, dictionary: &Dictionary) -> PolarsResult<DataFrame> {
    imports(spans, dictionary)
        .group_by([col("name")])
        .agg([
            col("proc").n_unique().alias("processes"),
            col("self_us").sum().alias("self_us"),
            col("dur_us").sum().alias("cumulative_us"),
            col("self_us").mean().alias("mean_self_us"),
            col("dur_us").mean().alias("mean_cumulative_us"),
        ])
        .sort(["cumulative_us", "name"], SortMultipleOptions::default().with_order_descending_multi([true, false]))
        .collect()
}

/// Per top-level package: self time summed over its modules.
pub fn per_package(spans: &DataFrame, dictionary: &Dictionary) -> PolarsResult<DataFrame> {
    imports(spans, dictionary)
        .group_by([col("package")])
        .agg([col("proc").n_unique().alias("processes"), col("self_us").sum().alias("self_us")])
        .sort(["self_us", "package"], SortMultipleOptions::default().with_order_descending_multi([true, false]))
        .collect()
}

pub fn section(spans: &DataFrame, dictionary: &Dictionary, columns: &SpanColumns<'_>, top: usize) -> anyhow::Result<Section> {
    let mut section = Section::new("imports", "Imports");
    let import_cat = dictionary.category(lynschema::category::IMPORT);
    let processes = columns.processes();
    // Summed per process and then in process order, so the floating-point total is the same on every run.
    let total_import: f64 = (0..processes)
        .into_par_iter()
        .map(|p| columns.rows(p).filter(|&row| columns.cat[row] == import_cat).map(|row| columns.self_us[row]).sum::<f64>())
        .collect::<Vec<_>>()
        .into_iter()
        .sum();

    let df = per_module(spans, dictionary)?;
    let name = dictionary.strs(&df, "name")?;
    let cols = ["processes", "self_us", "cumulative_us", "mean_self_us", "mean_cumulative_us"];
    let v = cols.iter().map(|c| f64s(&df, c)).collect::<PolarsResult<Vec<_>>>()?;
    let get = |c: usize, i: usize| v[c][i].unwrap_or(0.0);
    let mut by_cumulative = Table::new("top modules by cumulative time",
        &["module", "processes", "cumulative ms (all)", "mean cumulative ms", "self ms (all)", "mean self ms"]);
    let mut modules = Vec::new();
    for i in 0..df.height() {
        let n = name[i].clone().unwrap_or_default();
        if i < top {
            by_cumulative.row(vec![n.clone(), format!("{:.0}", get(0, i)), ms(get(2, i)), ms(get(4, i)), ms(get(1, i)), ms(get(3, i))]);
        }
        modules.push(json!({"module": n, "processes": get(0, i), "self_us": get(1, i), "cumulative_us": get(2, i),
            "mean_self_us": get(3, i), "mean_cumulative_us": get(4, i)}));
    }
    section.tables.push(by_cumulative);

    let mut by_self: Vec<_> = (0..df.height()).collect();
    by_self.sort_by(|&a, &b| get(1, b).total_cmp(&get(1, a)).then_with(|| name[a].cmp(&name[b])));
    let mut self_table = Table::new("top modules by self time", &["module", "processes", "self ms (all)", "share of import time"]);
    for &i in by_self.iter().take(top) {
        self_table.row(vec![name[i].clone().unwrap_or_default(), format!("{:.0}", get(0, i)), ms(get(1, i)), pct(get(1, i), total_import)]);
    }
    section.tables.push(self_table);

    let packages = per_package(spans, dictionary)?;
    let (pkg, pkg_procs, pkg_self) =
        (dictionary.strs(&packages, "package")?, f64s(&packages, "processes")?, f64s(&packages, "self_us")?);
    let mut package_table = Table::new("by top-level package", &["package", "processes", "self ms (all)", "share of import time"]);
    let mut package_data = Vec::new();
    for i in 0..packages.height() {
        let (p, s) = (pkg_procs[i].unwrap_or(0.0), pkg_self[i].unwrap_or(0.0));
        if i < top {
            package_table.row(vec![pkg[i].clone().unwrap_or_default(), format!("{p:.0}"), ms(s), pct(s, total_import)]);
        }
        package_data.push(json!({"package": pkg[i], "processes": p, "self_us": s}));
    }
    section.tables.push(package_table);

    // Lazy-import candidates: packages imported by a process with no traced call into them.
    let per_process: Vec<Vec<(&str, f64)>> = (0..processes)
        .into_par_iter()
        .map(|p| {
            let called: FxHashSet<u32> = columns.rows(p).filter(|&row| columns.is_call[row]).map(|row| columns.package[row]).collect();
            let mut cost: FxHashMap<u32, f64> = FxHashMap::default();
            for row in columns.rows(p).filter(|&row| columns.cat[row] == import_cat) {
                *cost.entry(columns.package[row]).or_default() += columns.self_us[row];
            }
            cost.into_iter()
                .filter(|(package, _)| !called.contains(package))
                .map(|(package, us)| (dictionary.packages[package as usize].as_str(), us))
                .collect()
        })
        .collect();
    let mut candidates: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (package, us) in per_process.into_iter().flatten() {
        let entry = candidates.entry(package.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += us;
    }
    let mut ranked: Vec<_> = candidates.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1).then_with(|| a.0.cmp(&b.0)));
    let mut lazy = Table::new("lazy-import candidates", &["package", "processes importing it without a traced call into it", "import self ms (all)"]);
    let mut lazy_data = Vec::new();
    for (package, (count, us)) in ranked.iter().take(top) {
        lazy.row(vec![package.clone(), count.to_string(), ms(*us)]);
    }
    for (package, (count, us)) in &ranked {
        lazy_data.push(json!({"package": package, "processes": count, "self_us": us}));
    }
    section.tables.push(lazy);
    section.notes.push("lazy-import candidates: only lynguine and lamd entry points are traced, so a package \
        listed may still be used indirectly (lynguine's readers use pandas); the time is what importing it cost".into());
    section.data = json!({"modules": modules, "packages": package_data, "lazy_import_candidates": lazy_data,
                          "total_import_self_us": total_import});
    Ok(section)
}
