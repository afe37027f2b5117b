//! The polars view of a loaded build: one row per span, one row per process.
//!
//! Per-process facts (run, command, group) live once in the process frame and are joined in by the
//! `proc` index where a query needs them, instead of being copied into every span row: a build has
//! thousands of spans per process, and those copies were most of the cost of building the frame. For
//! the same reason the span frame's strings are numbers, looked up in a [`Dictionary`].

use polars::prelude::*;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

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

/// The strings behind the spans frame's `name`, `package`, `cat` and `parent_cat` columns, which hold
/// numbers: a build has a million spans but a few thousand distinct names, and grouping, joining and
/// building columns of numbers is many times cheaper than of strings. Each table is sorted, so that
/// sorting by a number sorts by its string.
#[derive(Debug, Default)]
pub struct Dictionary {
    pub names: Vec<String>,
    pub packages: Vec<String>,
    pub categories: Vec<String>,
}

impl Dictionary {
    /// The number of a category in the frame (`u32::MAX`, which no row has, for one absent here).
    pub fn category(&self, cat: &str) -> u32 {
        self.categories
            .binary_search_by(|c| c.as_str().cmp(cat))
            .map_or(u32::MAX, |i| u32::try_from(i).unwrap_or(u32::MAX))
    }

    fn table(&self, column: &str) -> PolarsResult<&[String]> {
        match column {
            "name" => Ok(&self.names),
            "package" => Ok(&self.packages),
            "cat" | "parent_cat" => Ok(&self.categories),
            _ => Err(PolarsError::ColumnNotFound(format!("{column} is not a numbered column").into())),
        }
    }

    /// A column of numbers (`name`, `package`, `cat`, `parent_cat`) as its strings.
    pub fn strs(&self, df: &DataFrame, column: &str) -> PolarsResult<Vec<Option<String>>> {
        Ok(self.lookup(df, column)?.into_iter().map(|s| s.map(str::to_owned)).collect())
    }

    /// The same column as a polars string column, for output.
    fn string_column(&self, df: &DataFrame, column: &str) -> PolarsResult<Column> {
        Ok(Column::new(column.into(), self.lookup(df, column)?))
    }

    fn lookup(&self, df: &DataFrame, column: &str) -> PolarsResult<Vec<Option<&str>>> {
        let table = self.table(column)?;
        let ids = df.column(column)?.cast(&DataType::UInt32)?;
        Ok(ids.u32()?.iter().map(|id| id.and_then(|id| table.get(id as usize)).map(String::as_str)).collect())
    }
}

/// Numbers for the distinct strings given to [`Numbering::number`], in first-seen order, then
/// renumbered in sorted order by [`Numbering::finish`].
struct Numbering<'a> {
    ids: FxHashMap<&'a str, u32>,
    strings: Vec<&'a str>,
}

impl<'a> Numbering<'a> {
    fn new() -> Self {
        Self { ids: FxHashMap::default(), strings: Vec::new() }
    }

    fn number(&mut self, s: &'a str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.ids.insert(s, id);
        self.strings.push(s);
        id
    }

    /// The sorted strings, and for each first-seen number its sorted one.
    fn finish(self) -> (Vec<&'a str>, Vec<u32>) {
        let mut order: Vec<u32> = (0..u32::try_from(self.strings.len()).unwrap_or(u32::MAX)).collect();
        order.sort_unstable_by_key(|&id| self.strings[id as usize]);
        let mut renumber = vec![0; order.len()];
        for (rank, first_seen) in order.iter().enumerate() {
            renumber[*first_seen as usize] = u32::try_from(rank).unwrap_or(u32::MAX);
        }
        (order.into_iter().map(|id| self.strings[id as usize]).collect(), renumber)
    }
}

/// The span columns of some processes, their strings numbered in first-seen order of their own.
#[derive(Default)]
struct Chunk<'a> {
    proc: Vec<u32>,
    pid: Vec<i64>,
    tid: Vec<i64>,
    name: Vec<u32>,
    cat: Vec<u32>,
    start: Vec<f64>,
    dur: Vec<f64>,
    self_us: Vec<f64>,
    depth: Vec<u32>,
    parent_cat: Vec<Option<u32>>,
    call: Vec<bool>,
    names: Vec<&'a str>,
    categories: Vec<&'a str>,
}

impl<'a> Chunk<'a> {
    fn build(first: usize, processes: &'a [ProcessTrace]) -> Self {
        let n: usize = processes.iter().map(|p| p.spans.len()).sum();
        let mut names = Numbering::new();
        let mut categories = Numbering::new();
        let mut c = Chunk {
            proc: Vec::with_capacity(n),
            pid: Vec::with_capacity(n),
            tid: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            cat: Vec::with_capacity(n),
            start: Vec::with_capacity(n),
            dur: Vec::with_capacity(n),
            self_us: Vec::with_capacity(n),
            depth: Vec::with_capacity(n),
            parent_cat: Vec::with_capacity(n),
            call: Vec::with_capacity(n),
            ..Chunk::default()
        };
        for (offset, p) in processes.iter().enumerate() {
            let index = u32::try_from(first + offset).unwrap_or(u32::MAX);
            for s in &p.spans {
                c.proc.push(index);
                c.pid.push(p.pid);
                c.tid.push(s.tid);
                c.name.push(names.number(&s.name));
                c.cat.push(categories.number(&s.cat));
                c.start.push(s.start_us);
                c.dur.push(s.dur_us);
                c.self_us.push(s.self_us);
                c.depth.push(s.depth);
                c.parent_cat.push(s.parent_cat.as_deref().map(|cat| categories.number(cat)));
                c.call.push(is_call(&s.cat));
            }
        }
        c.names = names.strings;
        c.categories = categories.strings;
        c
    }
}

/// Processes per chunk of the span frame, built in parallel.
const PROCESSES_PER_CHUNK: usize = 64;

/// One row per span: proc, pid, tid, name, package (first dotted part), cat, start_us, dur_us, self_us,
/// depth, parent_cat, is_call — with name, package, cat and parent_cat as numbers in the [`Dictionary`].
/// Rows are in process order, each process's in the order its spans began.
pub fn spans(processes: &[ProcessTrace]) -> PolarsResult<(DataFrame, Dictionary)> {
    let mut chunks: Vec<Chunk<'_>> = processes
        .par_chunks(PROCESSES_PER_CHUNK)
        .enumerate()
        .map(|(i, chunk)| Chunk::build(i * PROCESSES_PER_CHUNK, chunk))
        .collect();
    // One numbering for all chunks: each chunk's first-seen numbers → the sorted ones.
    let mut names = Numbering::new();
    let mut categories = Numbering::new();
    let local: Vec<(Vec<u32>, Vec<u32>)> = chunks
        .iter()
        .map(|c| {
            let n = c.names.iter().map(|s| names.number(s)).collect();
            let k = c.categories.iter().map(|s| categories.number(s)).collect();
            (n, k)
        })
        .collect();
    let (name_table, name_renumber) = names.finish();
    let (category_table, category_renumber) = categories.finish();
    let mut packages = Numbering::new();
    let package_of_name: Vec<u32> = name_table.iter().map(|n| packages.number(n.split('.').next().unwrap_or(""))).collect();
    let (package_table, package_renumber) = packages.finish();
    let package_of_name: Vec<u32> = package_of_name.into_iter().map(|p| package_renumber[p as usize]).collect();
    let packages: Vec<Vec<u32>> = chunks
        .par_iter_mut()
        .zip(local.par_iter())
        .map(|(c, (local_names, local_categories))| {
            for id in &mut c.name {
                *id = name_renumber[local_names[*id as usize] as usize];
            }
            for id in c.cat.iter_mut().chain(c.parent_cat.iter_mut().flatten()) {
                *id = category_renumber[local_categories[*id as usize] as usize];
            }
            c.name.iter().map(|&id| package_of_name[id as usize]).collect()
        })
        .collect();
    let dictionary = Dictionary {
        names: name_table.into_iter().map(str::to_owned).collect(),
        packages: package_table.into_iter().map(str::to_owned).collect(),
        categories: category_table.into_iter().map(str::to_owned).collect(),
    };
    fn joined<'c, T: Clone + 'c>(chunks: &'c [Chunk<'_>], part: impl Fn(&'c Chunk<'_>) -> &'c Vec<T>) -> Vec<T> {
        let mut all = Vec::with_capacity(chunks.iter().map(|c| part(c).len()).sum());
        for c in chunks {
            all.extend_from_slice(part(c));
        }
        all
    }
    let df = DataFrame::new_infer_height(vec![
        Column::new("proc".into(), joined(&chunks, |c| &c.proc)),
        Column::new("pid".into(), joined(&chunks, |c| &c.pid)),
        Column::new("tid".into(), joined(&chunks, |c| &c.tid)),
        Column::new("name".into(), joined(&chunks, |c| &c.name)),
        Column::new("package".into(), packages.concat()),
        Column::new("cat".into(), joined(&chunks, |c| &c.cat)),
        Column::new("start_us".into(), joined(&chunks, |c| &c.start)),
        Column::new("dur_us".into(), joined(&chunks, |c| &c.dur)),
        Column::new("self_us".into(), joined(&chunks, |c| &c.self_us)),
        Column::new("depth".into(), joined(&chunks, |c| &c.depth)),
        Column::new("parent_cat".into(), joined(&chunks, |c| &c.parent_cat)),
        Column::new("is_call".into(), joined(&chunks, |c| &c.call)),
    ])?;
    Ok((df, dictionary))
}

/// The span frame's columns that the per-process metrics walk, as slices, with each process's rows.
pub struct SpanColumns<'a> {
    pub cat: &'a [u32],
    pub package: &'a [u32],
    pub dur_us: &'a [f64],
    pub self_us: &'a [f64],
    pub is_call: Vec<bool>,
    /// Rows of process `i`: `rows[i]..rows[i + 1]`.
    rows: Vec<usize>,
}

impl<'a> SpanColumns<'a> {
    pub fn new(spans: &'a DataFrame, processes: &[ProcessTrace]) -> PolarsResult<Self> {
        let mut rows = Vec::with_capacity(processes.len() + 1);
        rows.push(0);
        for p in processes {
            rows.push(rows.last().copied().unwrap_or(0) + p.spans.len());
        }
        Ok(Self {
            cat: spans.column("cat")?.u32()?.cont_slice()?,
            package: spans.column("package")?.u32()?.cont_slice()?,
            dur_us: spans.column("dur_us")?.f64()?.cont_slice()?,
            self_us: spans.column("self_us")?.f64()?.cont_slice()?,
            is_call: spans.column("is_call")?.bool()?.iter().map(|b| b.unwrap_or(false)).collect(),
            rows,
        })
    }

    /// How many processes.
    pub fn processes(&self) -> usize {
        self.rows.len() - 1
    }

    /// The rows of process `index`.
    pub fn rows(&self, index: usize) -> std::ops::Range<usize> {
        self.rows[index]..self.rows[index + 1]
    }
}

/// Every span with its process's run, command and group, its parent's name and its args (JSON): the
/// table written by `--spans`.
pub fn export(
    processes_df: &DataFrame,
    spans_df: &DataFrame,
    dictionary: &Dictionary,
    traces: &[ProcessTrace],
) -> PolarsResult<DataFrame> {
    let mut parent: Vec<Option<&str>> = Vec::with_capacity(spans_df.height());
    let mut args: Vec<String> = Vec::with_capacity(spans_df.height());
    for p in traces {
        for s in &p.spans {
            parent.push(s.parent.map(|i| p.spans[i].name.as_str()));
            args.push(serde_json::Value::Object(s.args.clone()).to_string());
        }
    }
    let mut spans = spans_df.clone();
    for column in ["name", "package", "cat", "parent_cat"] {
        spans.with_column(dictionary.string_column(spans_df, column)?)?;
    }
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
