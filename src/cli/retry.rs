//! `spoolflow retry ID`: queues a failed or aborted task again as a new
//! attempt under the same id; its record moves to
//! `var/spool/history/<id>/` (SPEC 9; the steps and why they are
//! crash-safe: `spoolflow::store::history::retry`). Works whether or not
//! an engine runs: the task waits in `in/` until one takes it.

use std::path::PathBuf;

use super::{exit, Failure};
use spoolflow::model::names::TaskId;
use spoolflow::store::history::{self, RetryError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The id of the failed or aborted task to run again.
    pub id: TaskId,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    match history::retry(&root, &args.id) {
        Ok(r) => {
            let rel = |p: &std::path::Path| root.relative(p).display().to_string();
            if r.resumed {
                println!(
                    "finished an interrupted retry of {}: queued again as {}",
                    args.id,
                    rel(&r.queued)
                );
            } else {
                println!(
                    "{} queued again as attempt {} (earlier record: {})",
                    args.id,
                    r.attempts_before + 1,
                    rel(&r.history)
                );
            }
            Ok(())
        }
        Err(e) => Err(Failure::new(code_of(&e), e)),
    }
}

/// SPEC 11's exit code for a refusal.
pub(crate) fn code_of(e: &RetryError) -> u8 {
    match e {
        RetryError::Unknown(_) | RetryError::NoRecord(_) => exit::NOT_FOUND,
        RetryError::Completed(_) | RetryError::NotEnded(_) | RetryError::BadRecord { .. } => {
            exit::USAGE
        }
        RetryError::Move { .. } | RetryError::Spool(_) => exit::FAILURE,
    }
}
