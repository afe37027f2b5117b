//! The polars view of a loaded build: one row per span, one row per process.
//!
//! Per-process facts (run, pid, command, group) live once in the process frame and are joined in by the
//! `proc` index where a query needs them, instead of being copied into every span row: a build has
//! thousands of spans per process, and those copies were most of the cost of building the frame. For
//! the same reason the span frame's strings are numbers, looked up in a [`Dictionary`].

use std::sync::Arc;

use polars::prelude::*;
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::load::{is_call, phases, ProcessTrace};

/// One row per process: proc (index), run_id, pid, process (command), group.
pub fn processes(processes: &[ProcessTrace]) -> PolarsResult<DataFrame> {
    let index: Vec<u32> = (0..processes.len()).map(|i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
    DataFrame::new_infer_height(vec![
        Column::new("proc".into(), index),
        Column::new("run_id".into(), processes.iter().map(|p| p.run_id.as_str()).collect::<Vec<_>>()),
        Column::new("pid".into(), processes.iter().map(|p| p.pid).collect::<Vec<_>>()),
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

    /// The number of a span name in the frame (`u32::MAX` for one absent here).
    pub fn name(&self, name: &str) -> u32 {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).map_or(u32::MAX, |i| u32::try_from(i).unwrap_or(u32::MAX))
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

/// `parent_cat` of a span with no parent (null in the frame).
const NO_PARENT: u32 = u32::MAX;

/// `column` cut into consecutive parts of `sizes` rows.
fn split<'c, T>(mut column: &'c mut [T], sizes: &[usize]) -> Vec<&'c mut [T]> {
    sizes
        .iter()
        .map(|&n| {
            let (part, rest) = std::mem::take(&mut column).split_at_mut(n);
            column = rest;
            part
        })
        .collect()
}

/// The span frame's columns, named once: [`Columns`] holds them whole, each [`Part`] the rows of some
/// processes in every column, so that the parts are filled in parallel and in place — on a big build,
/// building parts apart and copying them in was a gigabyte of fresh pages.
macro_rules! span_columns {
    ($($(#[$doc:meta])* $field:ident: $t:ty),* $(,)?) => {
        struct Columns {
            $($(#[$doc])* $field: Vec<$t>,)*
        }

        struct Part<'c> {
            $($field: &'c mut [$t],)*
        }

        impl Columns {
            /// `rows` rows of zeros.
            fn zeroed(rows: usize) -> Self {
                Self { $($field: vec![<$t>::default(); rows],)* }
            }

            /// The parts of `sizes` rows each, in order.
            fn parts(&mut self, sizes: &[usize]) -> Vec<Part<'_>> {
                $(let mut $field = split(&mut self.$field, sizes).into_iter();)*
                sizes.iter().map(|_| Part { $($field: $field.next().unwrap_or_default(),)* }).collect()
            }
        }
    };
}

span_columns! {
    proc: u32,
    tid: i64,
    name: u32,
    package: u32,
    cat: u32,
    start: f64,
    dur: f64,
    self_us: f64,
    depth: u32,
    /// [`NO_PARENT`] for a span directly in its thread.
    parent_cat: u32,
    call: bool,
}

/// The strings of one part, numbered in first-seen order of its own.
struct LocalStrings<'a> {
    names: Vec<&'a str>,
    categories: Vec<&'a str>,
}

/// Local numbers for a part's names and categories, keyed by the address of their shared string (the
/// loader holds each once per loading thread), so that no string is hashed per span. The same string
/// held by two threads gets two local numbers; the global numbering, by string, makes them one.
struct ByAddress<'a> {
    ids: FxHashMap<usize, u32>,
    strings: Vec<&'a str>,
}

impl<'a> ByAddress<'a> {
    fn new() -> Self {
        Self { ids: FxHashMap::default(), strings: Vec::new() }
    }

    fn number(&mut self, s: &'a Arc<str>) -> u32 {
        let next = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        let strings = &mut self.strings;
        *self.ids.entry(Arc::as_ptr(s).cast::<u8>() as usize).or_insert_with(|| {
            strings.push(s);
            next
        })
    }
}

impl Part<'_> {
    /// Fill the rows of `processes` (the first of which is process number `first`), numbering their
    /// strings locally.
    fn fill<'a>(&mut self, first: usize, processes: &'a [ProcessTrace]) -> LocalStrings<'a> {
        let mut names = ByAddress::new();
        let mut categories = ByAddress::new();
        let mut row = 0;
        for (offset, p) in processes.iter().enumerate() {
            let index = u32::try_from(first + offset).unwrap_or(u32::MAX);
            for s in &p.spans {
                self.proc[row] = index;
                self.tid[row] = s.tid;
                self.name[row] = names.number(&s.name);
                self.cat[row] = categories.number(&s.cat);
                self.start[row] = s.start_us;
                self.dur[row] = s.dur_us;
                self.self_us[row] = s.self_us;
                self.depth[row] = s.depth;
                self.parent_cat[row] = s.parent.map_or(NO_PARENT, |i| categories.number(&p.spans[i as usize].cat));
                self.call[row] = is_call(&s.cat);
                row += 1;
            }
        }
        LocalStrings { names: names.strings, categories: categories.strings }
    }
}

/// Processes per part of the span frame, filled in parallel.
const PROCESSES_PER_CHUNK: usize = 64;

/// One row per span: proc, tid, name, package (first dotted part), cat, start_us, dur_us, self_us,
/// depth, parent_cat, is_call — with name, package, cat and parent_cat as numbers in the [`Dictionary`].
/// Rows are in process order, each process's in the order its spans began.
pub fn spans(processes: &[ProcessTrace]) -> PolarsResult<(DataFrame, Dictionary)> {
    let chunks: Vec<&[ProcessTrace]> = processes.chunks(PROCESSES_PER_CHUNK).collect();
    let sizes: Vec<usize> = chunks.iter().map(|c| c.iter().map(|p| p.spans.len()).sum()).collect();
    let mut columns = Columns::zeroed(sizes.iter().sum());
    let local: Vec<LocalStrings<'_>> = columns
        .parts(&sizes)
        .into_par_iter()
        .zip(chunks.par_iter().enumerate())
        .map(|(mut part, (i, chunk))| part.fill(i * PROCESSES_PER_CHUNK, chunk))
        .collect();
    // One numbering for all parts: each part's first-seen numbers → the sorted ones.
    let mut names = Numbering::new();
    let mut categories = Numbering::new();
    let global: Vec<(Vec<u32>, Vec<u32>)> = local
        .iter()
        .map(|l| {
            let n = l.names.iter().map(|s| names.number(s)).collect();
            let k = l.categories.iter().map(|s| categories.number(s)).collect();
            (n, k)
        })
        .collect();
    let (name_table, name_renumber) = names.finish();
    let (category_table, category_renumber) = categories.finish();
    let mut packages = Numbering::new();
    let package_of_name: Vec<u32> = name_table.iter().map(|n| packages.number(phases::package(n))).collect();
    let (package_table, package_renumber) = packages.finish();
    let package_of_name: Vec<u32> = package_of_name.into_iter().map(|p| package_renumber[p as usize]).collect();
    columns.parts(&sizes).into_par_iter().zip(global.par_iter()).for_each(|(part, (local_names, local_categories))| {
        for (id, package) in part.name.iter_mut().zip(part.package.iter_mut()) {
            *id = name_renumber[local_names[*id as usize] as usize];
            *package = package_of_name[*id as usize];
        }
        for id in part.cat.iter_mut().chain(part.parent_cat.iter_mut().filter(|id| **id != NO_PARENT)) {
            *id = category_renumber[local_categories[*id as usize] as usize];
        }
    });
    let dictionary = Dictionary {
        names: name_table.into_iter().map(str::to_owned).collect(),
        packages: package_table.into_iter().map(str::to_owned).collect(),
        categories: category_table.into_iter().map(str::to_owned).collect(),
    };
    let Columns { proc, tid, name, package, cat, start, dur, self_us, depth, parent_cat, call } = columns;
    let df = DataFrame::new_infer_height(vec![
        Column::new("proc".into(), proc),
        Column::new("tid".into(), tid),
        Column::new("name".into(), name),
        Column::new("package".into(), package),
        Column::new("cat".into(), cat),
        Column::new("start_us".into(), start),
        Column::new("dur_us".into(), dur),
        Column::new("self_us".into(), self_us),
        Column::new("depth".into(), depth),
        UInt32Chunked::from_iter_options(
            "parent_cat".into(),
            parent_cat.iter().map(|&id| (id != NO_PARENT).then_some(id)),
        )
        .into_column(),
        Column::new("is_call".into(), call),
    ])?;
    Ok((df, dictionary))
}

/// The span frame's columns that the per-process metrics walk, as slices, with each process's rows.
pub struct SpanColumns<'a> {
    pub name: &'a [u32],
    pub cat: &'a [u32],
    pub package: &'a [u32],
    pub dur_us: &'a [f64],
    pub self_us: &'a [f64],
    /// Whether each category (by number) is a call into lynguine or lamd.
    call_categories: Vec<bool>,
    /// Rows of process `i`: `rows[i]..rows[i + 1]`.
    rows: Vec<usize>,
}

impl<'a> SpanColumns<'a> {
    pub fn new(spans: &'a DataFrame, processes: &[ProcessTrace], dictionary: &Dictionary) -> PolarsResult<Self> {
        let mut rows = Vec::with_capacity(processes.len() + 1);
        rows.push(0);
        for p in processes {
            rows.push(rows.last().copied().unwrap_or(0) + p.spans.len());
        }
        Ok(Self {
            name: spans.column("name")?.u32()?.cont_slice()?,
            cat: spans.column("cat")?.u32()?.cont_slice()?,
            package: spans.column("package")?.u32()?.cont_slice()?,
            dur_us: spans.column("dur_us")?.f64()?.cont_slice()?,
            self_us: spans.column("self_us")?.f64()?.cont_slice()?,
            call_categories: dictionary.categories.iter().map(|c| is_call(c)).collect(),
            rows,
        })
    }

    /// Is the span in `row` a call into lynguine or lamd (the frame's `is_call`)?
    pub fn is_call(&self, row: usize) -> bool {
        self.call_categories[self.cat[row] as usize]
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
            parent.push(s.parent.map(|i| &*p.spans[i as usize].name));
            args.push(serde_json::Value::Object(s.args().clone()).to_string());
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
        .select([
            col("run_id"),
            col("pid"),
            col("process"),
            col("group"),
            all().exclude_cols(["run_id", "pid", "process", "group", "proc"]).as_expr(),
        ])
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
