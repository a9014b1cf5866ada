//! `spoolflow wait ID… [--timeout D] [--json]`: blocks until every given
//! task has ended, woken by the filesystem watcher. For one id it prints
//! the final payload (`--json`: the record); for several, a line per id
//! (`--json`: an array of records). Exit status (SPEC 11): 0 when all
//! completed, 1 when one failed, was aborted or was rejected, 3 for an
//! unknown id, 4 when the timeout passed first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use spoolflow::layout::Root;
use spoolflow::model::names::TaskId;
use spoolflow::model::task::{Record, State};
use spoolflow::read::{self, Place};

use super::follow::Follow;
use super::output::{parse_duration, print_json};
use super::rejection::Rejection;
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
    /// Refused at intake, with the reason.
    Rejected(String),
    /// It left the spool without a record (removed by hand).
    Gone,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
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
    // File times are coarser than the clock: a second of slack.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut rejections = Vec::with_capacity(ids.len());
    for id in &ids {
        let place = read::find(&root, id)
            .ok()
            .flatten()
            .or_else(|| read::find::find_recently_rejected(&root, id, SystemTime::now()));
        let Some(place) = place else {
            return Err(Failure::new(exit::NOT_FOUND, format!("unknown id {id}")));
        };
        rejections.push(Rejection::of(Some(&place)));
    }
    let mut ends: Vec<Option<End>> = ids.iter().map(|_| None).collect();
    let mut unexplained = HashMap::new();
    loop {
        for ((id, end), rejection) in ids.iter().zip(ends.iter_mut()).zip(&rejections) {
            if end.is_none() {
                *end = look(&root, id, (rejection, since), &mut unexplained);
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

/// How long a rejected file may stay without its reason before it is
/// taken as rejected all the same (the engine writes the reason right after
/// the move; only a crash in between leaves none).
const REASON_GRACE: Duration = Duration::from_secs(2);

/// Whether a task has ended, and how. `unexplained` remembers when a
/// rejected file was first seen without its reason. A task whose file in
/// `in/` was not named `<id>.json` is found in `rejected/` by that name
/// (see [`Rejection`]).
fn look(
    root: &Root,
    id: &TaskId,
    (rejection, since): (&Rejection, SystemTime),
    unexplained: &mut HashMap<TaskId, Instant>,
) -> Option<End> {
    if let Ok(Some(r)) = read::record(root, id) {
        return Some(End::Record(Box::new(r)));
    }
    match read::find(root, id) {
        Ok(None) => {
            if let Some(reason) = rejection.look(root, id, since) {
                return Some(End::Rejected(reason));
            }
            if rejection.waiting.is_none() {
                return Some(End::Gone);
            }
            // Moved to rejected/ under its own name, the reason a moment
            // behind it.
            let first = *unexplained.entry(id.clone()).or_insert_with(Instant::now);
            (first.elapsed() >= REASON_GRACE).then_some(End::Gone)
        }
        Ok(Some(Place::Rejected {
            reason: Some(reason),
            ..
        })) => Some(End::Rejected(reason)),
        Ok(Some(Place::Rejected { reason: None, .. })) => {
            let since = *unexplained.entry(id.clone()).or_insert_with(Instant::now);
            (since.elapsed() >= REASON_GRACE).then(|| End::Rejected("(no reason recorded)".into()))
        }
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
            End::Rejected(_) | End::Gone => None,
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
        for (id, e) in ids.iter().zip(ends) {
            match e {
                End::Record(r) => println!("{id} {}", r.state.as_str()),
                End::Rejected(reason) => println!("{id} rejected: {reason}"),
                End::Gone => println!("{id} gone (removed without a record)"),
            }
        }
    }
    if ok {
        return Ok(());
    }
    let failed: Vec<String> = ids
        .iter()
        .zip(ends)
        .filter_map(|(id, e)| match e {
            End::Record(r) if r.state == State::Completed => None,
            End::Record(r) => Some(format!(
                "{id} {}: {}",
                r.state.as_str(),
                r.error
                    .as_ref()
                    .map_or("", |e| e.message.lines().next().unwrap_or(""))
            )),
            End::Rejected(reason) => Some(format!("{id} rejected: {reason}")),
            End::Gone => Some(format!("{id} was removed without a record")),
        })
        .collect();
    Err(Failure::new(exit::FAILURE, failed.join("; ")))
}
