//! The self-contained HTML report: the tables of every section plus three inline SVG charts — start-up
//! against work per process, import cost by package, and a timeline of the build's processes — drawn
//! from the sections' JSON data, so the charts show exactly the figures the other formats print.

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

const COLOURS: [(&str, &str); 4] = [("start-up", "#8da0cb"), ("imports", "#fc8d62"), ("work", "#66c2a5"), ("unattributed", "#d9d9d9")];

/// Horizontal stacked bars: one row per process, segments start-up, imports, work, unattributed.
fn startup_chart(sections: &[Section]) -> String {
    let Some(Value::Array(rows)) = data(sections, "processes") else { return String::new() };
    let max = rows.iter().map(|r| num(r, "wall_us")).fold(1.0, f64::max);
    let (label_w, bar_w, row_h) = (320.0, 560.0, 18.0);
    let height = row_h * rows.len() as f64 + 40.0;
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-size="11" font-family="sans-serif">"#, label_w + bar_w + 20.0);
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let name = r.get("command").and_then(Value::as_str).unwrap_or("");
        svg.push_str(&format!(r#"<text x="0" y="{}">{}</text>"#, y + 12.0, escape(&name.chars().take(48).collect::<String>())));
        let parts = [num(r, "startup_us") + num(r, "activation_us"), num(r, "import_us"), num(r, "work_us"), num(r, "unattributed_us")];
        let mut x = label_w;
        for (part, (label, colour)) in parts.iter().zip(COLOURS) {
            let w = part / max * bar_w;
            svg.push_str(&format!(r#"<rect x="{x:.1}" y="{y}" width="{w:.1}" height="{}" fill="{colour}"><title>{label}: {:.1} ms</title></rect>"#, row_h - 4.0, part / 1000.0));
            x += w;
        }
    }
    let legend_y = height - 12.0;
    for (i, (label, colour)) in COLOURS.iter().enumerate() {
        let x = label_w + i as f64 * 120.0;
        svg.push_str(&format!(r#"<rect x="{x}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{legend_y}">{label}</text>"#, legend_y - 9.0, x + 14.0));
    }
    svg.push_str("</svg>");
    svg
}

/// Bars of import self time by top-level package (top 15).
fn imports_chart(sections: &[Section]) -> String {
    let Some(packages) = data(sections, "imports").and_then(|d| d.get("packages")).and_then(Value::as_array) else {
        return String::new();
    };
    let rows: Vec<&Value> = packages.iter().take(15).collect();
    let max = rows.iter().map(|r| num(r, "self_us")).fold(1.0, f64::max);
    let (label_w, bar_w, row_h) = (180.0, 560.0, 18.0);
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-size="11" font-family="sans-serif">"#, label_w + bar_w + 80.0, row_h * rows.len() as f64 + 8.0);
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let w = num(r, "self_us") / max * bar_w;
        let name = r.get("package").and_then(Value::as_str).unwrap_or("");
        svg.push_str(&format!(r##"<text x="0" y="{}">{}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{}" fill="#fc8d62"/><text x="{:.1}" y="{}">{:.1} ms</text>"##,
            y + 12.0, escape(name), row_h - 4.0, label_w + w + 4.0, y + 12.0, num(r, "self_us") / 1000.0));
    }
    svg.push_str("</svg>");
    svg
}

/// One lane per process on the build's clock.
fn timeline_chart(sections: &[Section]) -> String {
    let Some(lanes) = data(sections, "concurrency").and_then(|d| d.get("timeline")).and_then(Value::as_array) else {
        return String::new();
    };
    let end = lanes.iter().map(|l| num(l, "end_us")).fold(1.0, f64::max);
    let (label_w, bar_w, row_h) = (320.0, 560.0, 16.0);
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-size="11" font-family="sans-serif">"#, label_w + bar_w + 20.0, row_h * lanes.len() as f64 + 24.0);
    for (i, l) in lanes.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let (s, e) = (num(l, "start_us") / end * bar_w, num(l, "end_us") / end * bar_w);
        let name = l.get("command").and_then(Value::as_str).unwrap_or("");
        svg.push_str(&format!(r##"<text x="0" y="{}">{}</text><rect x="{:.1}" y="{y}" width="{:.1}" height="{}" fill="#8da0cb"/>"##,
            y + 11.0, escape(&name.chars().take(48).collect::<String>()), label_w + s, (e - s).max(1.0), row_h - 4.0));
    }
    svg.push_str(&format!(r#"<text x="{label_w}" y="{}">0 ms</text><text x="{}" y="{}" text-anchor="end">{:.0} ms</text></svg>"#,
        row_h * lanes.len() as f64 + 18.0, label_w + bar_w, row_h * lanes.len() as f64 + 18.0, end / 1000.0));
    svg
}

/// The whole report as one HTML page with no external resources.
pub fn render(header: &str, sections: &[Section]) -> String {
    let mut body = String::new();
    body.push_str(&format!("<h1>lynanalyze report</h1><p>{}</p>", escape(header)));
    body.push_str("<h2>Charts</h2><h3>Start-up against work, per process</h3>");
    body.push_str(&startup_chart(sections));
    body.push_str("<h3>Import cost by package (self time, all processes)</h3>");
    body.push_str(&imports_chart(sections));
    body.push_str("<h3>Timeline of the build's Python processes</h3>");
    body.push_str(&timeline_chart(sections));
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
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>lynanalyze report</title><style>\
         body{{font-family:sans-serif;max-width:1200px;margin:2em auto;}}table{{border-collapse:collapse;margin:.5em 0;}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px;text-align:left;}}th{{background:#f3f3f3;}}\
         .note{{color:#555;font-size:12px;}}</style></head><body>{body}</body></html>\n"
    )
}
