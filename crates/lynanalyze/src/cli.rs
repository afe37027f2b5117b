//! The command line: `lynanalyze [report] TRACES… [--format text|md|json] [-o OUT] [--spans FILE]`.
//!
//! Exit status: 0 when every input was read; 1 when some files were skipped or some lines dropped as
//! untrustworthy (the report covers the rest, and each file was named on stderr with how much and
//! why); 2 when nothing could be analysed or the command line was wrong. `merge` likewise.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::load::{self, LoadOptions};
use crate::progress::Bar;
use crate::{frame, metrics, report};

pub use Format as ReportFormat;

#[derive(Parser, Debug)]
#[command(
    name = "lynanalyze",
    version,
    about = "Where a traced lamd build spent its time: reads lynshim traces \
    and reports call frequency, operation mix, start-up against work, imports, memory, concurrency, config \
    files and what lynguine's server mode (CIP-0008) would save."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report on traces (the default command): files or directories, searched recursively.
    Report(ReportArgs),
    /// Merge the traces of a build into one Chrome trace (one clock, one Perfetto timeline).
    Merge(MergeArgs),
    /// Compare two sets of runs (A: the baseline, B: the change): medians, a bootstrap 95 % interval of
    /// each difference and a verdict, for the whole build and for each kind of process.
    Diff(DiffArgs),
    /// Write runs, build phases, processes and spans as a Parquet dataset partitioned by run (hive style),
    /// for DuckDB, Spark or polars.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Each of A and B is a run directory written by `lynshim run`, or a directory holding several \
    (`lynshim run -o DIR` repeated); with --vs, every positional path is A and the paths after --vs are B.\n\n\
    Exit status: 0 compared; 1 with --fail-if-slower when the build got slower beyond the noise by more than PCT %; \
    2 when the inputs cannot be compared (the message says why).")]
struct DiffArgs {
    /// A (the baseline), then B; or, with --vs, every path of A.
    #[arg(required = true, value_name = "A B")]
    inputs: Vec<PathBuf>,
    /// The run directories of B, when A is given as several paths.
    #[arg(long, num_args = 1.., value_name = "B")]
    vs: Vec<PathBuf>,
    /// Name of side A in the output.
    #[arg(long, default_value = "A")]
    name_a: String,
    /// Name of side B in the output.
    #[arg(long, default_value = "B")]
    name_b: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write the comparison to this file instead of stdout.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Exit 1 when the build's wall time got slower beyond the noise by more than PCT % (a CI gate).
    #[arg(long, value_name = "PCT")]
    fail_if_slower: Option<f64>,
    /// How processes are matched: by their normalised command, or by program (lamd command).
    #[arg(long, value_enum, default_value_t = crate::diff::GroupBy::Command)]
    group_by: crate::diff::GroupBy,
    /// Imports by package shown per kind of process (the largest).
    #[arg(long, default_value_t = 8)]
    top: usize,
    /// Kinds of Python process shown with every metric (the longest; all are in the overview and the JSON).
    #[arg(long, default_value_t = 12, value_name = "N")]
    kinds: usize,
    /// Skip trace files larger than this many bytes.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_file_size: u64,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Trace files or directories written by `lynshim run`.
    #[arg(required = true, value_name = "TRACES")]
    inputs: Vec<PathBuf>,
    /// The dataset directory (new, empty, or a dataset written before: runs exported again are replaced).
    #[arg(short, long, value_name = "DATASET")]
    output: PathBuf,
    /// Skip trace files larger than this many bytes.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_file_size: u64,
}

#[derive(clap::Args, Debug)]
struct MergeArgs {
    /// Trace files or directories written by `lynshim run`.
    #[arg(required = true, value_name = "TRACES")]
    inputs: Vec<PathBuf>,
    /// The merged trace (`.json`, or `.json.gz` to compress).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Skip trace files larger than this many bytes.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_file_size: u64,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// Trace files or directories written by `lynshim run`.
    #[arg(required = true, value_name = "TRACES")]
    inputs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Also write every span as a table (.parquet or .csv).
    #[arg(long, value_name = "FILE")]
    spans: Option<PathBuf>,
    /// Rows in the longest tables.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Cost of one request to a warm lynguine server, used when no server-mode trace measures it.
    #[arg(long, default_value_t = 2.0, value_name = "MS")]
    request_cost_ms: f64,
    /// Skip trace files larger than this many bytes.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_file_size: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Md,
    Json,
    Html,
}

/// Insert the default `report` command when the first argument is not a command or a global flag.
fn with_default_command(args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let known = ["report", "merge", "diff", "export", "help", "-h", "--help", "-V", "--version"];
    if args.len() > 1 && !known.contains(&first) {
        let mut out = vec![args[0].clone(), OsString::from("report")];
        out.extend(args.into_iter().skip(1));
        out
    } else {
        args
    }
}

/// Run the command line; never panics, returns the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(with_default_command(args.into_iter().collect())) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Report(args) => report_command(&args),
        Command::Merge(args) => merge_command(&args),
        Command::Diff(args) => diff_command(&args),
        Command::Export(args) => export_command(&args),
    };
    result.unwrap_or_else(|err| {
        eprintln!("lynanalyze: {err:#}");
        ExitCode::from(2)
    })
}

fn merge_command(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let outcome = crate::merge::merge(&args.inputs, &args.output, args.max_file_size)?;
    for problem in &outcome.skipped {
        eprintln!("lynanalyze: skipped {problem}");
    }
    for warning in outcome.cut_short.iter().chain(&outcome.damaged) {
        eprintln!("lynanalyze: warning: {warning}");
    }
    eprintln!(
        "lynanalyze: merged {} processes ({} events, {} spawn arrows) into {}",
        outcome.processes,
        outcome.events,
        outcome.spawn_flows,
        args.output.display()
    );
    Ok(if outcome.skipped.is_empty() && outcome.damaged.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn diff_command(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    use crate::diff;
    let (a, b) = if args.vs.is_empty() {
        match args.inputs.as_slice() {
            [a, b] => (vec![a.clone()], vec![b.clone()]),
            _ => anyhow::bail!(
                "diff takes two paths, A and B ({} given); for several paths a side, write `diff A1 A2 … --vs B1 B2 …`",
                args.inputs.len()
            ),
        }
    } else {
        (args.inputs.clone(), args.vs.clone())
    };
    if let Some(pct) = args.fail_if_slower {
        anyhow::ensure!(pct.is_finite() && pct >= 0.0, "--fail-if-slower takes a percentage ≥ 0, not {pct}");
    }
    let bar = Bar::default();
    let load_options = load_options(args.max_file_size, &bar);
    let side_a = diff::read_side(&args.name_a, &a, load_options, args.group_by)?;
    let side_b = diff::read_side(&args.name_b, &b, load_options, args.group_by)?;
    diff::check(&side_a, &side_b)?;
    for side in [&side_a, &side_b] {
        for problem in &side.skipped {
            eprintln!("lynanalyze: {}: skipped {problem}", side.name);
        }
        for warning in &side.cut_short {
            eprintln!("lynanalyze: {}: warning: {warning}", side.name);
        }
    }
    let compared = diff::compare(side_a, side_b, args.top, args.kinds);
    for warning in &compared.warnings {
        eprintln!("lynanalyze: warning: {warning}");
    }
    let (header, sections) = (compared.header(), compared.sections());
    let text = match args.format {
        Format::Text => report::render_text(&header, &sections),
        Format::Md => {
            report::render_markdown(&header, &sections).replacen("# lynanalyze report", "# lynanalyze diff", 1)
        }
        Format::Html => crate::html::render_diff(&header, &sections),
        Format::Json => report::render_json(compared.summary_json(), &sections),
    };
    write_output(args.output.as_deref(), &text)?;
    if args.output.is_some() || args.format != Format::Text {
        eprintln!("lynanalyze: {}", compared.headline());
    }
    if let (Some(pct), Some(wall)) = (args.fail_if_slower, compared.wall()) {
        if wall.verdict == diff::Verdict::Higher && wall.diff_pct().is_some_and(|d| d > pct) {
            eprintln!(
                "lynanalyze: FAIL: {} is slower than {} by {:.1} % (more than {pct} %) beyond the noise",
                compared.b.name,
                compared.a.name,
                wall.diff_pct().unwrap_or(0.0)
            );
            return Ok(ExitCode::from(1));
        }
    } else if args.fail_if_slower.is_some() {
        eprintln!("lynanalyze: warning: --fail-if-slower: the build's wall time could not be compared");
    }
    Ok(ExitCode::SUCCESS)
}

/// Options for loading traces, with `bar` drawn when stderr is a terminal.
fn load_options(max_file_bytes: u64, bar: &Bar) -> LoadOptions<'_> {
    let progress = std::io::stderr().is_terminal().then_some(bar as &dyn load::Progress);
    LoadOptions { max_file_bytes, progress }
}

fn export_command(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let bar = Bar::default();
    let load_options = load_options(args.max_file_size, &bar);
    let outcome = crate::export::export(&args.inputs, &args.output, load_options)?;
    for problem in &outcome.skipped {
        eprintln!("lynanalyze: skipped {problem}");
    }
    for warning in outcome.cut_short.iter().chain(&outcome.damaged) {
        eprintln!("lynanalyze: warning: {warning}");
    }
    eprintln!(
        "lynanalyze: exported {} run(s), {} Python processes, {} other programs and {} spans to {}",
        outcome.runs,
        outcome.processes,
        outcome.programs,
        outcome.spans,
        args.output.display()
    );
    Ok(if outcome.skipped.is_empty() && outcome.damaged.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn report_command(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let bar = Bar::default();
    let load_options = load_options(args.max_file_size, &bar);
    let options = metrics::Options { top: args.top, assumed_request_ms: args.request_cost_ms };
    let analysis = crate::analyse(&args.inputs, load_options, options)?;
    let loaded = &analysis.loaded;
    for problem in &loaded.skipped {
        eprintln!("lynanalyze: skipped {problem}");
    }
    for warning in loaded.warnings.iter().chain(&loaded.damaged) {
        eprintln!("lynanalyze: warning: {warning}");
    }
    let rendering = std::time::Instant::now();
    let text = render(args.format, &analysis);
    if std::env::var_os("LYNANALYZE_TIMINGS").is_some() {
        eprintln!("lynanalyze: rendered in {:.2?}; {:.2?} since start", rendering.elapsed(), started.elapsed());
    }
    write_output(args.output.as_deref(), &text)?;
    if let Some(path) = &args.spans {
        let mut table = frame::export(&analysis.processes, &analysis.spans, &analysis.dictionary, &loaded.processes)?;
        frame::write_spans(&mut table, path)?;
    }
    if std::io::stderr().is_terminal() {
        eprintln!("lynanalyze: {} in {:.2?}", analysis.header.split(';').next().unwrap_or(""), started.elapsed());
    }
    let code = if loaded.lost_anything() { ExitCode::from(1) } else { ExitCode::SUCCESS };
    // The process ends right after this: freeing millions of spans one by one would only delay it.
    std::mem::forget(analysis);
    Ok(code)
}

/// Render an analysis in `format`.
pub fn render(format: Format, analysis: &crate::Analysis) -> String {
    let (header, sections, loaded) = (&analysis.header, &analysis.sections, &analysis.loaded);
    match format {
        Format::Text => report::render_text(header, sections),
        Format::Md => report::render_markdown(header, sections),
        Format::Html => crate::html::render(header, sections),
        Format::Json => report::render_json(
            json!({"processes": loaded.processes.len(), "programs": loaded.programs.len(), "runs": loaded.run_ids(), "spans": analysis.spans.height(),
                   "bytes": loaded.bytes,
                   "skipped": loaded.skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
                   "cut_short": loaded.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
                   "dropped": loaded.damaged.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            sections,
        ),
    }
}

fn write_output(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    match path {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(())
        }
    }
}
