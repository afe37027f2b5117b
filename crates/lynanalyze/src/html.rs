//! The self-contained HTML pages: the report (the tables of every section plus three charts — start-up
//! against work per process, import cost by package, and a timeline of the build's processes) and the
//! diff (the change of each metric with its interval, and both sides' phases). Charts are drawn by the
//! plotters crate into inline SVG (its SVG backend only: no fonts, no bitmaps, no script), from the
//! sections' JSON data, so they show exactly the figures the other formats print.

use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordusize};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::report::Section;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn data<'a>(sections: &'a [Section], id: &str) -> Option<&'a Value> {
    sections.iter().find(|s| s.id == id).map(|s| &s.data)
}

/// The colours of the charts (ColorBrewer Set2, then greys): readable, and distinct in print.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x8d, 0xa0, 0xcb),
    RGBColor(0xfc, 0x8d, 0x62),
    RGBColor(0x66, 0xc2, 0xa5),
    RGBColor(0xe7, 0x8a, 0xc3),
    RGBColor(0xa6, 0xd8, 0x54),
    RGBColor(0xff, 0xd9, 0x2f),
    RGBColor(0xe5, 0xc4, 0x94),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xb3, 0xb3, 0xb3),
    RGBColor(0xd9, 0xd9, 0xd9),
];

type Drawn = Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One chart as an inline `<svg>`, drawn by plotters' SVG backend; a note instead if drawing failed.
fn svg(width: u32, height: u32, draw: impl FnOnce(&Area<'_>) -> Drawn) -> String {
    let mut out = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Into::into))
    };
    match result {
        Ok(()) => out,
        Err(err) => format!("<p class=\"note\">chart not drawn: {}</p>", escape(&err.to_string())),
    }
}

const FONT: (&str, u32) = ("sans-serif", 12);

/// A label cut to `n` characters.
fn cut(text: &str, n: usize) -> String {
    if text.chars().count() > n {
        format!("{}…", text.chars().take(n - 1).collect::<String>())
    } else {
        text.to_owned()
    }
}

/// An axis label for microseconds, in whole milliseconds.
fn ms(us: &f64) -> String {
    format!("{:.0}", us / 1000.0)
}

/// A chart of labelled rows: `(0..n).into_segmented()` rows from the top.
type RowChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, SegmentedCoord<RangedCoordusize>>>;

/// The grid and axes of a row chart: one label per row (the first label at the top), x labelled by
/// `x_label`.
fn draw_row_mesh(
    chart: &mut RowChart<'_, '_>,
    labels: &[String],
    x_desc: &str,
    x_label: &dyn Fn(&f64) -> String,
) -> Drawn {
    let n = labels.len();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .y_labels(n)
        .y_label_style(FONT)
        .x_label_style(FONT)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < n => labels[n - 1 - *i].clone(),
            _ => String::new(),
        })
        .x_label_formatter(x_label)
        .x_desc(x_desc)
        .draw()?;
    Ok(())
}

/// A legend entry: a swatch of palette colour `series` named `name` (drawn by [`draw_legend`]).
fn add_legend_entry(chart: &mut RowChart<'_, '_>, name: &str, series: usize) -> Drawn {
    let colour = PALETTE[series % PALETTE.len()];
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<usize>)>>())?
        .label(name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    Ok(())
}

/// The legend box, in the corner `at`, the same on every chart.
fn draw_legend<'a, 'b: 'a>(chart: &mut RowChart<'a, 'b>, at: SeriesLabelPosition) -> Drawn {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(FONT)
        .draw()?;
    Ok(())
}

/// Horizontal bars, one row per label (first at the top), each row a stack of `(value, colour)`
/// segments starting at `from` (for a timeline) or 0; a legend of `legend` when given.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
fn bar_rows(
    labels: &[String],
    rows: &[(f64, Vec<(f64, usize)>)],
    x_desc: &str,
    legend: &[(&str, usize)],
    value_labels: bool,
) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let n = rows.len();
    let max = rows.iter().map(|(from, parts)| from + parts.iter().map(|p| p.0).sum::<f64>()).fold(1e-9, f64::max);
    let row_h = if n > 60 { 12 } else { 20 };
    let height = (n as u32) * row_h + 60 + if legend.is_empty() { 0 } else { 20 };
    let labels: Vec<String> = labels.iter().map(|l| cut(l, 52)).collect();
    svg(980, height, |root| {
        let mut chart =
            ChartBuilder::on(root).margin(8).x_label_area_size(32).y_label_area_size(330).build_cartesian_2d(
                0.0..max
                    * if !legend.is_empty() {
                        1.65
                    } else if value_labels {
                        1.15
                    } else {
                        1.02
                    },
                (0..n).into_segmented(),
            )?;
        draw_row_mesh(&mut chart, &labels, x_desc, &ms)?;
        for &(name, series) in legend {
            add_legend_entry(&mut chart, name, series)?;
        }
        for (row, (from, parts)) in rows.iter().enumerate() {
            let y = n - 1 - row;
            let mut x = *from;
            chart.draw_series(parts.iter().map(|&(value, colour)| {
                let mut bar = Rectangle::new(
                    [(x, SegmentValue::Exact(y)), ((x + value).max(x + max * 0.001), SegmentValue::Exact(y + 1))],
                    PALETTE[colour % PALETTE.len()].filled(),
                );
                bar.set_margin(2, 2, 0, 0);
                x += value;
                bar
            }))?;
            if value_labels {
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.1} ms", (x - from) / 1000.0),
                    (x + max * 0.01, SegmentValue::CenterOf(y)),
                    TextStyle::from(FONT.into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
                )))?;
            }
        }
        if !legend.is_empty() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    })
}

/// Most processes a per-process chart shows (the longest): a build has thousands.
const MAX_ROWS: usize = 60;

/// Stacked bars: one row per process (the longest [`MAX_ROWS`]), segments start-up, imports, work, rest.
fn startup_chart(sections: &[Section]) -> String {
    let Some(Value::Array(rows)) = data(sections, "processes") else { return String::new() };
    let mut rows: Vec<&Value> = rows.iter().collect();
    rows.sort_by(|a, b| num(b, "wall_us").total_cmp(&num(a, "wall_us")));
    rows.truncate(MAX_ROWS);
    let labels: Vec<String> =
        rows.iter().map(|r| r.get("command").and_then(Value::as_str).unwrap_or("").to_owned()).collect();
    let bars: Vec<(f64, Vec<(f64, usize)>)> = rows
        .iter()
        .map(|r| {
            let start = num(r, "startup_us") + num(r, "activation_us");
            let rest = num(r, "wall_us") - start - num(r, "import_us") - num(r, "work_us");
            (0.0, vec![(start, 0), (num(r, "import_us"), 1), (num(r, "work_us"), 2), (rest.max(0.0), 9)])
        })
        .collect();
    bar_rows(
        &labels,
        &bars,
        "ms of the process's wall time",
        &[("start-up", 0), ("imports", 1), ("work", 2), ("main program, gc, exit, unattributed", 9)],
        false,
    )
}

/// Bars of import self time by top-level package (top 15).
fn imports_chart(sections: &[Section]) -> String {
    let Some(packages) = data(sections, "imports").and_then(|d| d.get("packages")).and_then(Value::as_array) else {
        return String::new();
    };
    let rows: Vec<&Value> = packages.iter().take(15).collect();
    let labels: Vec<String> =
        rows.iter().map(|r| r.get("package").and_then(Value::as_str).unwrap_or("").to_owned()).collect();
    let bars: Vec<(f64, Vec<(f64, usize)>)> = rows.iter().map(|r| (0.0, vec![(num(r, "self_us"), 1)])).collect();
    bar_rows(&labels, &bars, "ms of import self time, all processes", &[], true)
}

/// One lane per process on the build's clock (the first [`MAX_ROWS`] * 2 to start).
fn timeline_chart(sections: &[Section]) -> String {
    let Some(lanes) = data(sections, "concurrency").and_then(|d| d.get("timeline")).and_then(Value::as_array) else {
        return String::new();
    };
    let lanes: Vec<&Value> = lanes.iter().take(MAX_ROWS * 2).collect();
    let labels: Vec<String> =
        lanes.iter().map(|l| l.get("command").and_then(Value::as_str).unwrap_or("").to_owned()).collect();
    let bars: Vec<(f64, Vec<(f64, usize)>)> = lanes
        .iter()
        .map(|l| (num(l, "start_us"), vec![((num(l, "end_us") - num(l, "start_us")).max(0.0), 0)]))
        .collect();
    bar_rows(&labels, &bars, "ms since the first process started", &[], false)
}

/// The diff's first chart: each phase of the build's wall time, A's median above B's.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
fn diff_phases_chart(sections: &[Section]) -> String {
    let Some(rows) = data(sections, "build").and_then(|d| d.get("rows")).and_then(Value::as_array) else {
        return String::new();
    };
    let rows: Vec<&Value> = rows
        .iter()
        .filter(|r| r.get("metric").and_then(Value::as_str).is_some_and(|m| m == "wall" || m.starts_with("phase: ")))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let side_name = |key: &str| {
        data(sections, "summary")
            .and_then(|d| d.get(key))
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(key)
            .to_owned()
    };
    let (name_a, name_b) = (side_name("a"), side_name("b"));
    let n = rows.len();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| r.get("metric").and_then(Value::as_str).unwrap_or("").trim_start_matches("phase: ").to_owned())
        .collect();
    let max = rows.iter().map(|r| num(r, "a_median").max(num(r, "b_median"))).fold(1e-9, f64::max) * 1.18;
    svg(980, (n as u32) * 34 + 70, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(200)
            .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
        draw_row_mesh(&mut chart, &labels, "ms: median over each side's runs", &ms)?;
        for (series, name) in [(0_usize, &name_a), (1, &name_b)] {
            add_legend_entry(&mut chart, name, series)?;
        }
        for (row, r) in rows.iter().enumerate() {
            let y = n - 1 - row;
            for (half, key) in [(0_usize, "a_median"), (1, "b_median")] {
                let value = num(r, key);
                // A in the upper half of the row, B in the lower.
                let (top, bottom) = if half == 0 {
                    (SegmentValue::Exact(y + 1), SegmentValue::CenterOf(y))
                } else {
                    (SegmentValue::CenterOf(y), SegmentValue::Exact(y))
                };
                let mut bar =
                    Rectangle::new([(0.0, top), (value.max(max * 0.002), bottom.clone())], PALETTE[half].filled());
                bar.set_margin(if half == 0 { 3 } else { 0 }, if half == 0 { 0 } else { 3 }, 0, 0);
                chart.draw_series(std::iter::once(bar))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.1} ms", value / 1000.0),
                    (value + max * 0.005, bottom),
                    TextStyle::from(("sans-serif", 10).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom)),
                )))?;
            }
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    })
}

/// How far the change chart's axis reaches, in % of A's median: larger changes are drawn at its edge.
const CHANGE_AXIS_PCT: f64 = 200.0;

/// The diff's second chart: each metric's change B − A in % of A's median, with its 95 % interval,
/// coloured by verdict (red slower, green faster, grey no difference or no verdict). Phases and kinds
/// of less than 1 % of A's build wall time are left out (their percentages are large and mean little).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
fn diff_change_chart(sections: &[Section]) -> String {
    let mut rows: Vec<(String, &Value)> = Vec::new();
    let build = data(sections, "build").and_then(|d| d.get("rows")).and_then(Value::as_array);
    let wall = build
        .and_then(|b| b.iter().find(|r| r.get("metric").and_then(Value::as_str) == Some("wall")))
        .map_or(0.0, |r| num(r, "a_median"));
    if let Some(build) = build {
        rows.extend(
            build
                .iter()
                .filter(|r| r.get("unit").and_then(Value::as_str) == Some("us"))
                .filter(|r| num(r, "a_median").max(num(r, "b_median")) >= 0.01 * wall)
                .map(|r| {
                    (
                        format!(
                            "build: {}",
                            r.get("metric").and_then(Value::as_str).unwrap_or("").trim_start_matches("phase: ")
                        ),
                        r,
                    )
                }),
        );
    }
    if let Some(Value::Array(kinds)) = data(sections, "kinds") {
        for kind in kinds.iter().take(15) {
            let name = kind.get("kind").and_then(Value::as_str).unwrap_or("");
            if let Some(row) = kind
                .get("rows")
                .and_then(Value::as_array)
                .and_then(|r| r.iter().find(|r| r.get("metric").and_then(Value::as_str) == Some("wall")))
            {
                if num(row, "a_median").max(num(row, "b_median")) >= 0.01 * wall {
                    rows.push((name.to_owned(), row));
                }
            }
        }
    }
    rows.retain(|(_, r)| num(r, "a_median") > 0.0);
    if rows.is_empty() {
        return String::new();
    }
    let pct = |r: &Value, key: &str| r.get(key).and_then(Value::as_f64).map(|v| 100.0 * v / num(r, "a_median"));
    let n = rows.len();
    let extent = rows
        .iter()
        .flat_map(|(_, r)| [pct(r, "diff"), pct(r, "ci95_low"), pct(r, "ci95_high")])
        .flatten()
        .fold(5.0_f64, |m, v| m.max(v.abs()))
        .min(CHANGE_AXIS_PCT)
        * 1.05;
    let clamp = |v: f64| v.clamp(-extent, extent);
    let labels: Vec<String> = rows
        .iter()
        .map(|(l, r)| {
            let verdict = r.get("verdict").and_then(Value::as_str).unwrap_or("");
            let verdict = if verdict.starts_with("no difference") {
                "noise"
            } else if verdict.starts_with("cannot") {
                "no verdict"
            } else {
                verdict
            };
            format!("{}  {} {verdict}", cut(l, 44), pct(r, "diff").map_or("–".into(), |d| format!("{d:+.1}%")))
        })
        .collect();
    svg(980, (n as u32) * 20 + 60, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(400)
            .build_cartesian_2d(-extent..extent, (0..n).into_segmented())?;
        draw_row_mesh(
            &mut chart,
            &labels,
            "B − A in % of A's median; bar: its 95 % interval (beyond the axis: drawn at its edge)",
            &|v| format!("{v:+.0}%"),
        )?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(1),
        )))?;
        for (row, (_, r)) in rows.iter().enumerate() {
            let at = n - 1 - row;
            let y = || SegmentValue::CenterOf(at);
            let colour = match r.get("verdict").and_then(Value::as_str).unwrap_or("") {
                "slower" => RGBColor(0xd7, 0x30, 0x27),
                "faster" => RGBColor(0x1a, 0x98, 0x50),
                _ => RGBColor(0x88, 0x88, 0x88),
            };
            if let (Some(lo), Some(hi)) = (pct(r, "ci95_low"), pct(r, "ci95_high")) {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(clamp(lo), y()), (clamp(hi), y())],
                    colour.stroke_width(3),
                )))?;
            }
            if let Some(d) = pct(r, "diff") {
                chart.draw_series(std::iter::once(Circle::new((clamp(d), y()), 4, colour.filled())))?;
            }
        }
        Ok(())
    })
}

/// A page: a title, a header line, charts (heading, svg) and the sections' tables and notes.
fn page(title: &str, header: &str, charts: &[(&str, String)], sections: &[Section]) -> String {
    let mut body = String::new();
    body.push_str(&format!("<h1>{}</h1><p>{}</p>", escape(title), escape(header)));
    body.push_str("<h2>Charts</h2>");
    for (heading, chart) in charts {
        body.push_str(&format!("<h3>{}</h3>", escape(heading)));
        body.push_str(chart);
    }
    push_sections(&mut body, sections);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:1200px;margin:2em auto;}}table{{border-collapse:collapse;margin:.5em 0;}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:left;}}th{{background:#f3f3f3;}}\
         .note{{color:#555;font-size:12px;}}svg{{display:block;max-width:100%;height:auto;}}</style></head><body>{body}</body></html>\n",
        escape(title)
    )
}

/// `lynanalyze diff --format html`: the comparison's sections with two charts.
pub fn render_diff(header: &str, sections: &[Section]) -> String {
    let headline = data(sections, "summary").and_then(|d| d.get("headline")).and_then(Value::as_str).unwrap_or("");
    let charts = [
        ("Change B − A with its 95 % interval (whole build, then each kind of process)", diff_change_chart(sections)),
        ("The build's wall time by phase: median of each side", diff_phases_chart(sections)),
    ];
    page("lynanalyze diff", &format!("{header}. {headline}"), &charts, sections)
}

/// The whole report as one HTML page with no external resources.
pub fn render(header: &str, sections: &[Section]) -> String {
    let charts = [
        ("Start-up against work, per process (the longest 60)", startup_chart(sections)),
        ("Import cost by package (self time, all processes)", imports_chart(sections)),
        ("Timeline of the build's Python processes (the first 120)", timeline_chart(sections)),
    ];
    page("lynanalyze report", header, &charts, sections)
}

fn push_sections(body: &mut String, sections: &[Section]) {
    for section in sections {
        body.push_str(&format!("<h2>{}</h2>", escape(&section.title)));
        for table in &section.tables {
            if !table.title.is_empty() {
                body.push_str(&format!("<h4>{}</h4>", escape(&table.title)));
            }
            body.push_str("<table><tr>");
            for h in &table.headers {
                body.push_str(&format!("<th>{}</th>", escape(h)));
            }
            body.push_str("</tr>");
            for row in &table.rows {
                body.push_str("<tr>");
                for cell in row {
                    body.push_str(&format!("<td>{}</td>", escape(cell)));
                }
                body.push_str("</tr>");
            }
            body.push_str("</table>");
        }
        for note in &section.notes {
            body.push_str(&format!("<p class=\"note\">{}</p>", escape(note)));
        }
    }
}
