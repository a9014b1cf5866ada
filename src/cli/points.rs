//! Points for people: one line per point (`show`, `logs`).

use serde_json::Value;
use spoolflow::model::point::Point;

/// Fields shown cut when longer (a payload, a long reason).
const FIELD_MAX: usize = 120;

/// `10:00:00.123456  0_1  started  taskee=stamp attempt=1 pid=4242`: the
/// time (the date once, when it changes, is the caller's), the nid, the
/// point, then its other fields.
pub fn line(p: &Point) -> String {
    let time = p.ts.split_once('T').map_or(p.ts.as_str(), |(_, t)| t);
    let mut out = format!(
        "{}  {:<6} {:<11}",
        time.trim_end_matches('Z'),
        p.nid.as_str(),
        p.point
    );
    for (k, v) in &p.fields {
        let shown = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let shown = shown.replace('\n', "\\n");
        let cut: String = shown.chars().take(FIELD_MAX).collect();
        let more = if cut.len() < shown.len() { "…" } else { "" };
        out.push_str(&format!(" {k}={cut}{more}"));
    }
    out.trim_end().to_string()
}

/// The date of a point (`2026-12-04`), to print when it changes.
pub fn date(p: &Point) -> &str {
    p.ts.split_once('T').map_or("", |(d, _)| d)
}

/// Prints points, a date line whenever the date changes.
pub fn print_all<'a>(points: impl IntoIterator<Item = &'a Point>, last_date: &mut String) {
    for p in points {
        if date(p) != last_date {
            *last_date = date(p).to_string();
            println!("{last_date}");
        }
        println!("  {}", line(p));
    }
}
