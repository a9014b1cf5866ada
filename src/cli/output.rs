//! Output conventions of the reading commands: aligned tables, human
//! durations (`3m12s`) and ages (`2h ago`), colour only on a terminal and
//! never with `NO_COLOR`, JSON printing, and parsing `--since`-style
//! durations.

use std::io::IsTerminal;

use chrono::{DateTime, Utc};
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use serde::Serialize;
use spoolflow::model::task::Dur;
use spoolflow::read::summary::ListState;

use super::{exit, Failure};

/// Whether to colour what goes to stdout.
pub fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// A state's name, coloured when `colour` says so.
pub fn paint_state(state: ListState, colour: bool) -> String {
    let code = match state {
        ListState::Completed => "32",
        ListState::Failed | ListState::Rejected => "31",
        ListState::Aborted => "35",
        ListState::Running => "36",
        ListState::Delayed => "33",
        ListState::Queued => "",
    };
    if colour && !code.is_empty() {
        format!("\x1b[{code}m{state}\x1b[0m")
    } else {
        state.to_string()
    }
}

/// An aligned table without borders: a header row, then the rows; columns
/// listed in `right` are right-aligned (numbers).
pub fn table(headers: &[&str], rows: Vec<Vec<String>>, right: &[usize]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    for row in rows {
        t.add_row(row);
    }
    for i in right {
        if let Some(c) = t.column_mut(*i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    // comfy-table pads every cell by one space on each side: trim the
    // margin and the trailing blanks.
    t.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A duration for people: `850ms`, `12s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago a timestamp was: `2h05m ago`, `just now`.
pub fn age(ts: Option<&str>, now: DateTime<Utc>) -> String {
    match ts.and_then(parse_ts) {
        Some(t) => {
            let secs = (now - t).num_milliseconds() as f64 / 1000.0;
            if secs < 1.0 {
                "just now".into()
            } else {
                format!("{} ago", duration(secs))
            }
        }
        None => "-".into(),
    }
}

/// The seconds between two timestamps (`to` defaulting to now).
pub fn between(from: Option<&str>, to: Option<&str>, now: DateTime<Utc>) -> Option<f64> {
    let from = parse_ts(from?)?;
    let to = match to {
        Some(t) => parse_ts(t)?,
        None => now,
    };
    Some((to - from).num_milliseconds() as f64 / 1000.0)
}

pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A duration given on the command line (`30s`, `5m`, `2h`, `7d`), at
/// most 100 years, as in task files.
pub fn parse_duration(flag: &str, s: &str) -> Result<std::time::Duration, Failure> {
    Dur::from_json(&serde_json::Value::String(s.to_string()))
        .map(|d| d.0)
        .map_err(|e| Failure::new(exit::USAGE, format!("{flag} {s}: {e}")))
}

/// The timestamp `d` before now (what `--since` and `--older-than` mean).
pub fn cutoff(d: std::time::Duration, now: DateTime<Utc>) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    spoolflow::model::task::timestamp(now.checked_sub_signed(d).unwrap_or(DateTime::UNIX_EPOCH))
}

/// Prints a value as one line of JSON.
pub fn print_json(v: &impl Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(v).map_err(|e| Failure::new(exit::FAILURE, e))?;
    println!("{line}");
    Ok(())
}

/// "1 task", "2 tasks".
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(12.0), "12s");
        assert_eq!(duration(192.0), "3m12s");
        assert_eq!(duration(7500.0), "2h05m");
        assert_eq!(duration(273_600.0), "3d04h");
        assert_eq!(duration(-1.0), "-");
    }

    #[test]
    fn ages_and_cutoffs() {
        let now = parse_ts("2026-12-04T10:00:00Z").unwrap();
        assert_eq!(age(Some("2026-12-04T08:00:00Z"), now), "2h00m ago");
        assert_eq!(age(None, now), "-");
        let d = parse_duration("--since", "2h").unwrap();
        assert_eq!(cutoff(d, now), "2026-12-04T08:00:00.000000Z");
        assert_eq!(parse_duration("--since", "7d").unwrap().as_secs(), 604_800);
        assert!(parse_duration("--since", "soon").is_err());
        // Days are bounded as every duration is (they wrapped, or made
        // `wait --timeout` panic).
        assert_eq!(
            parse_duration("--since", "36500d").unwrap().as_secs(),
            3_153_600_000
        );
        for huge in ["36501d", "200000000000000d", "213503982334602d"] {
            let e = parse_duration("--timeout", huge).unwrap_err();
            assert_eq!(e.code, exit::USAGE, "{huge}");
        }
    }

    #[test]
    fn tables_align_without_borders() {
        let t = table(
            &["ID", "N"],
            vec![
                vec!["a".into(), "1".into()],
                vec!["bbb".into(), "22".into()],
            ],
            &[1],
        );
        assert_eq!(t, "ID    N\na     1\nbbb  22");
    }
}
