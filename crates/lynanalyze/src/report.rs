//! Report sections and their renderings: terminal tables (comfy-table), Markdown, JSON.
//!
//! Every metric family returns a [`Section`]: tables for people, and the same figures as JSON for
//! programs. The JSON document is versioned ([`JSON_SCHEMA_VERSION`]) and documented in README.md.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table as Comfy};
use serde::Serialize;
use serde_json::Value;

/// Version of the JSON report layout.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// A table of a section.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub title: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self { title: title.to_owned(), headers: headers.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// One family of figures.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Key in the JSON report.
    pub id: String,
    pub title: String,
    pub tables: Vec<Table>,
    /// Assumptions and explanations printed under the tables.
    pub notes: Vec<String>,
    /// The figures, for the JSON report.
    pub data: Value,
}

impl Section {
    pub fn new(id: &str, title: &str) -> Self {
        Self { id: id.to_owned(), title: title.to_owned(), tables: Vec::new(), notes: Vec::new(), data: Value::Null }
    }
}

/// Milliseconds with one decimal, from microseconds.
pub fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}

/// A share as a percentage.
pub fn pct(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1}%", 100.0 * part / whole)
    } else {
        "–".to_owned()
    }
}

/// Mebibytes from bytes.
pub fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1024.0 * 1024.0))
}

/// How one format writes each part of a report; [`render`] walks the sections for both.
struct Style {
    section: fn(&str) -> String,
    table_title: fn(&str) -> String,
    table: fn(&Table) -> String,
    note: fn(&str) -> String,
}

fn render(mut out: String, sections: &[Section], style: &Style) -> String {
    for section in sections {
        out.push_str(&(style.section)(&section.title));
        for table in &section.tables {
            if !table.title.is_empty() {
                out.push_str(&(style.table_title)(&table.title));
            }
            out.push_str(&(style.table)(table));
        }
        for note in &section.notes {
            out.push_str(&(style.note)(note));
        }
    }
    out
}

/// Terminal rendering.
pub fn render_text(header: &str, sections: &[Section]) -> String {
    let style = Style {
        section: |title| format!("\n== {title} ==\n"),
        table_title: |title| format!("{title}\n"),
        table: |table| {
            let mut comfy = Comfy::new();
            comfy.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
            comfy.set_width(140);
            comfy.set_header(table.headers.clone());
            for row in &table.rows {
                comfy.add_row(row.clone());
            }
            format!("{comfy}\n")
        },
        note: |note| format!("note: {note}\n"),
    };
    render(format!("{header}\n"), sections, &style)
}

/// Markdown rendering, fit for a CIP document.
///
/// The tables are written here rather than by comfy-table's `ASCII_MARKDOWN` preset, which was tried
/// (issue #16): it pads every cell to its column's widest (one long command widens every row of a table)
/// and writes `|---|` rules, so every Markdown report and snapshot would change bytes for no change in
/// what a reader sees. It also leaves `|` inside a cell unescaped, which this writer must do anyway.
pub fn render_markdown(header: &str, sections: &[Section]) -> String {
    fn cells(cells: &[String]) -> String {
        cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | ")
    }
    let style = Style {
        section: |title| format!("\n## {title}\n"),
        table_title: |title| format!("\n**{title}**\n"),
        table: |table| {
            let mut out = format!("\n| {} |\n|{}\n", cells(&table.headers), " --- |".repeat(table.headers.len()));
            for row in &table.rows {
                out.push_str(&format!("| {} |\n", cells(row)));
            }
            out
        },
        note: |note| format!("\n> {note}\n"),
    };
    render(format!("# lynanalyze report\n\n{header}\n"), sections, &style)
}

/// JSON rendering: `{schema_version, summary, sections: {id: {title, notes, data}}}`.
///
/// Written from borrowed parts: a big build's data runs to megabytes, and building a `json!` value
/// of it first copied all of it. Fields are declared in sorted order, as a JSON map would write them.
pub fn render_json(summary: Value, sections: &[Section]) -> String {
    #[derive(Serialize)]
    struct JsonSection<'a> {
        data: &'a Value,
        notes: &'a [String],
        title: &'a str,
    }
    #[derive(Serialize)]
    struct JsonReport<'a> {
        schema_version: u32,
        sections: std::collections::BTreeMap<&'a str, JsonSection<'a>>,
        summary: Value,
    }
    let sections = sections
        .iter()
        .map(|s| (s.id.as_str(), JsonSection { data: &s.data, notes: &s.notes, title: &s.title }))
        .collect();
    serde_json::to_string_pretty(&JsonReport { schema_version: JSON_SCHEMA_VERSION, sections, summary })
        .unwrap_or_default()
}
