//! `spoolflow wait ID… [--timeout D] [--json]`: blocks until every given
//! task has ended, woken by the filesystem watcher. For one id it prints
//! the final payload (`--json`: the record); for several, a line per id
//! (`--json`: an array of records). Exit status (SPEC 11): 0 when all
//! completed, 1 when one failed, was aborted or was rejected, 3 for an
//! unknown id, 4 when the timeout passed first.

use std::path::PathBuf;
use std::time::Instant;

use spoolflow::layout::Root;
use spoolflow::model::names::TaskId;
use spoolflow::model::task::{Record, State};
use spoolflow::read;

use super::follow::Follow;
use super::output::{parse_duration, print_json};
use super::{exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tasks' ids.
    #[arg(required = true, num_args = 1..)]
    pub ids: Vec<String>,
    /// Give up after this long (exit 4): 30s, 5m, 2h.
    #[arg(long, value_name = "D")]
    pub timeout: Option<String>,
    /// Print the record(s) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How a task ended.
enum End {
    Record(Box<Record>),
    /// It left the spool without a record (rejected at intake, removed).
    Gone,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    let deadline = match &args.timeout {
        Some(t) => Some(Instant::now() + parse_duration("--timeout", t)?),
        None => None,
    };
    let ids = args
        .ids
        .iter()
        .map(|s| {
            s.parse::<TaskId>()
                .map_err(|e| Failure::new(exit::USAGE, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Watch first, then look: an end between the two still wakes us.
    let follow = Follow::new(&[root.done(), root.failed(), root.run(), root.rejected()])?;
    for id in &ids {
        if read::find(&root, id).ok().flatten().is_none() {
            return Err(Failure::new(exit::NOT_FOUND, format!("unknown id {id}")));
        }
    }
    let mut ends: Vec<Option<End>> = ids.iter().map(|_| None).collect();
    loop {
        for (id, end) in ids.iter().zip(ends.iter_mut()) {
            if end.is_none() {
                *end = look(&root, id);
            }
        }
        if ends.iter().all(Option::is_some) {
            break;
        }
        if follow.next(deadline).is_none() {
            let pending: Vec<String> = ids
                .iter()
                .zip(&ends)
                .filter(|(_, e)| e.is_none())
                .map(|(id, _)| id.to_string())
                .collect();
            return Err(Failure::new(
                exit::TIMEOUT,
                format!("timed out waiting for {}", pending.join(", ")),
            ));
        }
    }
    let ends: Vec<End> = ends.into_iter().flatten().collect();
    report(&ids, &ends, args.json)
}

/// Whether a task has ended, and how.
fn look(root: &Root, id: &TaskId) -> Option<End> {
    if let Ok(Some(r)) = read::record(root, id) {
        return Some(End::Record(Box::new(r)));
    }
    match read::find(root, id) {
        Ok(None) => Some(End::Gone),
        _ => None,
    }
}

fn report(ids: &[TaskId], ends: &[End], json: bool) -> Result<(), Failure> {
    let ok = ends
        .iter()
        .all(|e| matches!(e, End::Record(r) if r.state == State::Completed));
    let records: Vec<Option<&Record>> = ends
        .iter()
        .map(|e| match e {
            End::Record(r) => Some(r.as_ref()),
            End::Gone => None,
        })
        .collect();
    if json {
        if records.len() == 1 {
            print_json(&records[0])?;
        } else {
            print_json(&records)?;
        }
    } else if let [Some(r)] = records.as_slice() {
        println!(
            "{}",
            serde_json::to_string_pretty(&r.payload).unwrap_or_default()
        );
    } else {
        for (id, r) in ids.iter().zip(&records) {
            match r {
                Some(r) => println!("{id} {}", r.state.as_str()),
                None => println!("{id} gone (rejected or removed; see var/spool/rejected/)"),
            }
        }
    }
    if ok {
        return Ok(());
    }
    let failed: Vec<String> = ids
        .iter()
        .zip(&records)
        .filter(|(_, r)| !r.is_some_and(|r| r.state == State::Completed))
        .map(|(id, r)| match r.and_then(|r| r.error.as_ref()) {
            Some(e) => format!(
                "{id} {}: {}",
                r.map_or("", |r| r.state.as_str()),
                e.message.lines().next().unwrap_or("")
            ),
            None => format!("{id} did not complete"),
        })
        .collect();
    Err(Failure::new(exit::FAILURE, failed.join("; ")))
}
