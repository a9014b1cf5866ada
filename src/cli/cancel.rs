//! `spoolflow cancel ID [--reason R]`: drops a cancel request into
//! `var/spool/cancel/` (SPEC 8); the engine applies it.

use std::path::PathBuf;

use super::{exit, Failure};
use spoolflow::model::names::TaskId;
use spoolflow::store::spool;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The id of the task to cancel.
    pub id: TaskId,
    /// Why (kept in the task's record).
    #[arg(long)]
    pub reason: Option<String>,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    request(&root, &args.id, args.reason.as_deref())?;
    println!("cancel requested for {}", args.id);
    Ok(())
}

/// Writes the cancel request of a task that has not ended (the CLI's and
/// the dashboard's).
pub(crate) fn request(
    root: &spoolflow::Root,
    id: &TaskId,
    reason: Option<&str>,
) -> Result<PathBuf, Failure> {
    require_live(root, id, || {
        Failure::new(exit::FAILURE, format!("task {id} has ended already"))
    })?;
    let mut request = serde_json::Map::new();
    request.insert("id".into(), id.as_str().into());
    if let Some(r) = reason {
        request.insert("reason".into(), r.into());
    }
    let bytes = serde_json::to_vec(&request).expect("a JSON map serializes");
    spool::write_atomic(&root.cancel(), id.as_str(), &bytes, false, true)
        .map_err(|e| Failure::new(exit::FAILURE, e))
}

/// A request (cancel, priority) names a task that has not ended: one in
/// `run/`, or waiting in `in/` or `in/<domain>/`. An ended one fails with
/// `ended()`, an unknown id with "not found".
pub(crate) fn require_live(
    root: &spoolflow::Root,
    id: &TaskId,
    ended: impl FnOnce() -> Failure,
) -> Result<(), Failure> {
    if root.done_file(id).exists() || root.failed_file(id).exists() {
        return Err(ended());
    }
    if !root.run_file(id).exists() && spoolflow::read::find_in(root, id).is_none() {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("unknown task id {id}"),
        ));
    }
    Ok(())
}
