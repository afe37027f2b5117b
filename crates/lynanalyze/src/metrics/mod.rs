//! The metric families, one module each; [`all`] runs them in report order.

pub mod build;
pub mod concurrency;
pub mod config_files;
pub mod frequency;
pub mod imports;
pub mod memory;
pub mod mix;
pub mod processes;
pub mod projection;
pub mod startup;

use polars::prelude::DataFrame;

use crate::frame::{Dictionary, SpanColumns};
use crate::load::Loaded;
use crate::report::Section;

/// Knobs of the report.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Rows of the longest tables (entry points, imports).
    pub top: usize,
    /// Assumed cost of one request to a warm lynguine server, when no server-mode trace measures it.
    pub assumed_request_ms: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self { top: 15, assumed_request_ms: 2.0 }
    }
}

/// Every section, in report order.
pub fn all(
    loaded: &Loaded,
    spans: &DataFrame,
    dictionary: &Dictionary,
    processes_df: &DataFrame,
    options: Options,
) -> anyhow::Result<Vec<Section>> {
    let timings = std::env::var_os("LYNANALYZE_TIMINGS").is_some();
    let mut clock = std::time::Instant::now();
    let mut tick = |label: &str| {
        if timings {
            eprintln!("lynanalyze:   {label} {:.2?}", clock.elapsed());
        }
        clock = std::time::Instant::now();
    };
    let columns = SpanColumns::new(spans, &loaded.processes, dictionary)?;
    let per_process = processes::compute(loaded, &columns, dictionary);
    tick("processes (accounting)");
    let mut sections = vec![build::section(loaded), processes::section(&per_process, dictionary)];
    tick("build, processes");
    sections.push(frequency::section(spans, dictionary, processes_df, options.top)?);
    tick("call frequency");
    sections.push(mix::section(spans, dictionary)?);
    sections.push(startup::section(&per_process, loaded));
    tick("mix, start-up");
    sections.push(imports::section(dictionary, &columns, &per_process, options.top));
    tick("imports");
    sections.push(memory::section(&loaded.processes));
    sections.push(concurrency::section(&loaded.processes));
    sections.push(config_files::section(&loaded.processes));
    tick("memory, concurrency, config files");
    sections.push(projection::section(&per_process, spans, dictionary, options.assumed_request_ms)?);
    tick("projection");
    Ok(sections)
}
