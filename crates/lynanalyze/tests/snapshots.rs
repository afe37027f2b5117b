//! Snapshot tests of every output format on fixture traces recorded from the real shim
//! (`tests/fixtures/record.sh` re-records them), and a brute-force cross-check of the figures.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lynanalyze::cli::{render, Format};
use lynanalyze::load::{is_call, LoadOptions};
use lynanalyze::{analyse, metrics, Analysis};

/// Read at run time, not compile time (`env!`): a test binary reused from a shared target directory
/// (CI's, between clones at different paths) must read this clone's fixtures.
fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/traces")
}

fn analysis() -> Analysis {
    analyse(&[fixtures()], LoadOptions::default(), metrics::Options::default()).expect("fixtures load")
}

fn rendered(format: Format) -> String {
    render(format, &analysis())
}

#[test]
fn text_report() {
    insta::assert_snapshot!(rendered(Format::Text));
}

#[test]
fn markdown_report() {
    insta::assert_snapshot!(rendered(Format::Md));
}

#[test]
fn json_report() {
    insta::assert_snapshot!(rendered(Format::Json));
}

#[test]
fn html_report() {
    let html = rendered(Format::Html);
    assert!(html.starts_with("<!DOCTYPE html>") && html.matches("<svg").count() == 3);
    // Self-contained: no script, and no address but the SVG namespace.
    assert!(!html.contains("<script"));
    assert!(!html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "").contains("://"));
    insta::assert_snapshot!(html);
}

/// The call-frequency and operation-mix figures, recomputed by brute force from the loaded spans.
#[test]
fn figures_agree_with_brute_force() {
    let a = analysis();
    let mut calls: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    let mut by_cat: BTreeMap<String, f64> = BTreeMap::new();
    for p in &a.loaded.processes {
        for s in p.spans.iter().filter(|s| is_call(&s.cat)) {
            let e = calls.entry(s.name.to_string()).or_default();
            e.0 += 1;
            e.1 += s.dur_us;
            *by_cat.entry(s.cat.to_string()).or_default() += s.self_us;
        }
    }
    let frequency = a.sections.iter().find(|s| s.id == "call_frequency").expect("section");
    for row in frequency.data["entry_points"].as_array().expect("rows") {
        let name = row["name"].as_str().expect("name");
        let (n, total) = calls[name];
        assert_eq!(row["calls"].as_f64(), Some(n as f64), "{name}");
        assert!((row["total_us"].as_f64().expect("total") - total).abs() < 1e-6, "{name}");
    }
    assert_eq!(frequency.data["entry_points"].as_array().map(Vec::len), Some(calls.len()));
    let mix = a.sections.iter().find(|s| s.id == "operation_mix").expect("section");
    for row in mix.data.as_array().expect("rows") {
        let cat = row["category"].as_str().expect("cat");
        assert!((row["self_us"].as_f64().expect("self") - by_cat[cat]).abs() < 1e-6, "{cat}");
    }
}

/// The imports section — per module, per top-level package and lazy-import candidates — recomputed
/// by brute force from the loaded spans.
#[test]
fn imports_agree_with_brute_force() {
    #[derive(Default)]
    struct Sums {
        processes: std::collections::BTreeSet<usize>,
        imports: usize,
        self_us: f64,
        cumulative_us: f64,
    }
    let a = analysis();
    let package_of = |name: &str| name.split('.').next().unwrap_or("").to_owned();
    let (mut modules, mut packages, mut lazy) =
        (BTreeMap::<String, Sums>::new(), BTreeMap::<String, Sums>::new(), BTreeMap::<String, Sums>::new());
    for (index, p) in a.loaded.processes.iter().enumerate() {
        let called: std::collections::BTreeSet<String> =
            p.spans.iter().filter(|s| is_call(&s.cat)).map(|s| package_of(&s.name)).collect();
        let mut cost: BTreeMap<String, f64> = BTreeMap::new();
        for s in p.spans.iter().filter(|s| &*s.cat == "import") {
            for (key, sums) in [(s.name.to_string(), &mut modules), (package_of(&s.name), &mut packages)] {
                let e = sums.entry(key).or_default();
                e.processes.insert(index);
                e.imports += 1;
                e.self_us += s.self_us;
                e.cumulative_us += s.dur_us;
            }
            *cost.entry(package_of(&s.name)).or_default() += s.self_us;
        }
        for (package, us) in cost.into_iter().filter(|(package, _)| !called.contains(package)) {
            let e = lazy.entry(package).or_default();
            e.processes.insert(index);
            e.self_us += us;
        }
    }
    let imports = a.sections.iter().find(|s| s.id == "imports").expect("section");
    let close = |row: &serde_json::Value, key: &str, expected: f64| {
        let got = row[key].as_f64().unwrap_or_else(|| panic!("{key} in {row}"));
        assert!((got - expected).abs() <= 1e-6 * expected.abs().max(1.0), "{key}: {got} vs {expected} in {row}");
    };
    for (list, key, expected) in [
        ("modules", "module", &modules),
        ("packages", "package", &packages),
        ("lazy_import_candidates", "package", &lazy),
    ] {
        let rows = imports.data[list].as_array().expect("rows");
        assert_eq!(rows.len(), expected.len(), "{list}");
        for row in rows {
            let e = &expected[row[key].as_str().expect("name")];
            close(row, "processes", e.processes.len() as f64);
            close(row, "self_us", e.self_us);
            if list == "modules" {
                close(row, "cumulative_us", e.cumulative_us);
                close(row, "mean_self_us", e.self_us / e.imports as f64);
                close(row, "mean_cumulative_us", e.cumulative_us / e.imports as f64);
            }
        }
    }
    assert!(!lazy.is_empty(), "the fixtures have lazy-import candidates");
}
