//! The metric families, one module each; [`all`] runs them in report order.

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
pub fn all(loaded: &Loaded, spans: &DataFrame, options: Options) -> anyhow::Result<Vec<Section>> {
    let per_process = processes::compute(&loaded.processes);
    Ok(vec![
        processes::section(&per_process),
        frequency::section(spans, options.top)?,
        mix::section(spans)?,
        startup::section(&per_process, loaded),
        imports::section(spans, &loaded.processes, options.top)?,
        memory::section(&loaded.processes),
        concurrency::section(&loaded.processes),
        config_files::section(&loaded.processes),
        projection::section(&per_process, spans, options.assumed_request_ms)?,
    ])
}
