//! CIP-0008 projection: what a warm lynguine server would save on this build.
//!
//! Inputs, all printed beside the result: the processes that called lynguine, their measured overhead
//! (interpreter start-up, activation, imports) and work, the number of lynguine calls, and the cost
//! of one request to a warm server — measured from `server` spans when server-mode traces are among
//! the inputs, otherwise an assumed figure that the report names as an assumption.
//!
//! Model: with a server, each such process still starts a Python that imports only a thin client
//! (taken as the measured interpreter start-up alone), each top-level lynguine call becomes one
//! request, and the server itself pays one full start-up once. Break-even is the number of lynguine
//! processes above which the server's one start-up is repaid.

use polars::prelude::*;
use serde_json::json;

use crate::frame::{f64s, Dictionary};
use crate::metrics::processes::ProcessTimes;
use crate::report::{ms, Section, Table};

pub fn section(
    rows: &[ProcessTimes],
    spans: &DataFrame,
    dictionary: &Dictionary,
    assumed_request_ms: f64,
) -> anyhow::Result<Section> {
    let category = |c: &str| lit(dictionary.category(c));
    let server = spans
        .clone()
        .lazy()
        .filter(col("cat").eq(category(lynschema::category::SERVER)))
        .select([col("dur_us").mean().alias("mean_us"), len().alias("n")])
        .collect()?;
    let measured = f64s(&server, "mean_us")?.first().copied().flatten();
    let (request_us, source) = match measured {
        Some(us) if us > 0.0 => (us, "measured from server-mode spans".to_owned()),
        _ => (
            assumed_request_ms * 1000.0,
            format!("ASSUMED ({assumed_request_ms} ms; no server-mode traces; set --request-cost-ms)"),
        ),
    };
    // Top-level lynguine calls: the requests a client would make.
    let top_calls = spans
        .clone()
        .lazy()
        .filter(col("is_call").and(col("cat").neq(category(lynschema::category::LAMD))))
        .filter(
            col("parent_cat")
                .is_null()
                .or(col("parent_cat").eq(category(lynschema::category::PROGRAM)))
                .or(col("parent_cat").eq(category(lynschema::category::IMPORT)))
                .or(col("parent_cat").eq(category(lynschema::category::LAMD))),
        )
        .select([len().alias("n")])
        .collect()?;
    let requests = f64s(&top_calls, "n")?.first().copied().flatten().unwrap_or(0.0);

    let users: Vec<&ProcessTimes> = rows.iter().filter(|r| r.work_us > 0.0).collect();
    #[allow(clippy::cast_precision_loss)]
    let n = users.len() as f64;
    let now: f64 = users.iter().map(|r| r.wall_us).sum();
    let overhead: f64 = users.iter().map(|r| r.overhead_us()).sum();
    let client_startup: f64 = users.iter().map(|r| r.startup_us).sum();
    let server_startup = if n > 0.0 { overhead / n } else { 0.0 };
    let with_server = now - overhead + client_startup + requests * request_us + server_startup;
    let saving_per_process = if n > 0.0 { (overhead - client_startup - requests * request_us) / n } else { 0.0 };
    let break_even =
        if saving_per_process > 0.0 { (server_startup / saving_per_process).ceil() } else { f64::INFINITY };

    let mut section = Section::new("cip0008_projection", "CIP-0008 projection: a warm lynguine server");
    let mut inputs = Table::new("inputs", &["input", "value"]);
    inputs.row(vec!["processes calling lynguine/lamd".into(), format!("{n:.0}")]);
    inputs.row(vec!["their process time now, ms".into(), ms(now)]);
    inputs.row(vec!["their start-up + activation + imports, ms".into(), ms(overhead)]);
    inputs.row(vec!["interpreter start-up alone (kept by a thin client), ms".into(), ms(client_startup)]);
    inputs.row(vec!["requests (top-level lynguine calls)".into(), format!("{requests:.0}")]);
    inputs.row(vec!["cost per request, ms".into(), format!("{} — {source}", ms(request_us))]);
    inputs.row(vec!["server start-up, paid once, ms".into(), ms(server_startup)]);
    section.tables.push(inputs);
    let mut result = Table::new("projection", &["measure", "value"]);
    result.row(vec!["process time with a warm server, ms".into(), ms(with_server)]);
    result.row(vec![
        "speed-up".into(),
        if with_server > 0.0 { format!("{:.2}x", now / with_server) } else { "–".into() },
    ]);
    result.row(vec![
        "break-even, processes".into(),
        if break_even.is_finite() { format!("{break_even:.0}") } else { "never".into() },
    ]);
    section.tables.push(result);
    section
        .notes
        .push("process time, not the build's wall time: make, gpp and pandoc are unchanged by a server".into());
    section.notes.push(
        "a thin-client world: every process that calls lynguine is assumed to become a client that imports nothing \
         heavier than the interpreter. lamd's server mode today is not that: only mdfield asks the server, and it \
         still imports lynguine and pandas first; analysis/REPORT.md §5 measures it against this projection"
            .into(),
    );
    section.data = json!({"processes": n, "process_time_us": now, "overhead_us": overhead, "client_startup_us": client_startup,
        "requests": requests, "request_cost_us": request_us, "request_cost_source": source, "server_startup_us": server_startup,
        "projected_process_time_us": with_server, "speedup": if with_server > 0.0 { now / with_server } else { 0.0 },
        "break_even_processes": if break_even.is_finite() { json!(break_even) } else { json!(null) }});
    Ok(section)
}
