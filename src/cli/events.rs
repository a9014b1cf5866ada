//! `spoolflow events [--follow] [--since D]`: every point of every
//! execution as JSON lines in time order, for piping into other tools;
//! `--follow` then prints points as they are appended (woken by the
//! filesystem watcher) until interrupted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use spoolflow::model::point::Point;

use super::follow::{Follow, Tail};
use super::output::{cutoff, parse_duration};
use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing points as they are appended, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only points of the last D: 30s, 5m, 2h, 7d.
    #[arg(long, value_name = "D")]
    pub since: Option<String>,
    /// Accepted for symmetry with the other reading commands: the output
    /// is always JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Where each log was read up to, and its unfinished last line.
#[derive(Default)]
struct Offsets(HashMap<PathBuf, Tail>);

impl Offsets {
    /// The whole lines appended to `path` since the last read.
    fn read(&mut self, path: &Path) -> Vec<Vec<u8>> {
        let tail = self
            .0
            .entry(path.to_path_buf())
            .or_insert_with(|| Tail::new(path.to_path_buf()));
        let mut lines = tail.lines();
        while tail.more() {
            lines.extend(tail.lines());
        }
        lines
    }
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let since = match &args.since {
        Some(s) => Some(cutoff(parse_duration("--since", s)?, Utc::now())),
        None => None,
    };
    let dir = root.log_tsk();
    let follow = if args.follow {
        Some(Follow::new(std::slice::from_ref(&dir))?)
    } else {
        None
    };
    let mut offsets = Offsets::default();
    // What is there now: every log, merged in time order.
    let mut lines: Vec<(String, Vec<u8>)> = Vec::new();
    for path in logs(&dir) {
        for l in offsets.read(&path) {
            if let Some(ts) = kept(&l, since.as_deref()) {
                lines.push((ts, l));
            }
        }
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = std::io::stdout().lock();
    let mut emit = |l: &[u8]| -> Result<(), Failure> {
        out.write_all(l)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            // A closed pipe (`| head`) ends the command quietly.
            .map_err(|_| Failure::new(exit::SUCCESS, ""))
    };
    for (_, l) in &lines {
        emit(l)?;
    }
    let Some(follow) = follow else { return Ok(()) };
    loop {
        let Some(changed) = follow.next(None) else {
            return Err(Failure::new(
                exit::FAILURE,
                "the filesystem watcher stopped",
            ));
        };
        // An event names the log; a wake-up without one re-reads them all.
        let paths: Vec<PathBuf> = if changed.is_empty() {
            logs(&dir)
        } else {
            changed.into_iter().filter(|p| is_log(p)).collect()
        };
        for path in paths {
            for l in offsets.read(&path) {
                emit(&l)?;
            }
        }
    }
}

fn is_log(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "log")
}

/// The points logs of the root.
fn logs(dir: &PathBuf) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_log(p))
        .collect()
}

/// The point's timestamp when the line is a point at or after `since`.
fn kept(line: &[u8], since: Option<&str>) -> Option<String> {
    let p: Point = serde_json::from_slice(line).ok()?;
    since.is_none_or(|s| p.ts.as_str() >= s).then_some(p.ts)
}
