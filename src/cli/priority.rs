//! `spoolflow priority ID P`: drops a priority request into
//! `var/spool/priority/<id>` (SPEC 13); the engine applies it to the
//! queued task (its place in the queue and its `run/` file), or moves it
//! to `rejected/` with the reason when the task runs or is unknown.
//! Without a running engine, the request waits for the next start.

use std::path::PathBuf;

use super::{exit, Failure};
use spoolflow::model::names::TaskId;
use spoolflow::store::spool;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The id of the queued task.
    pub id: TaskId,
    /// The new priority (an i32; higher starts first).
    #[arg(allow_negative_numbers = true)]
    pub priority: i32,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::find_root(root)?;
    root.ensure_exists()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let id = &args.id;
    if root.done_file(id).exists() || root.failed_file(id).exists() {
        return Err(Failure::new(
            exit::USAGE,
            format!("task {id} has ended already; only a queued task's priority can change"),
        ));
    }
    if !root.run_file(id).exists() && !in_spool(&root, id) {
        return Err(Failure::new(
            exit::NOT_FOUND,
            format!("unknown task id {id}"),
        ));
    }
    let dir = root.priority_requests();
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(exit::FAILURE, e))?;
    let request = serde_json::json!({ "id": id.as_str(), "priority": args.priority });
    let bytes = serde_json::to_vec(&request).expect("a JSON map serializes");
    spool::write_atomic(&dir, id.as_str(), &bytes, false, true)
        .map_err(|e| Failure::new(exit::FAILURE, e))?;
    println!(
        "priority {} requested for {id} (the engine applies it to a queued task)",
        args.priority
    );
    Ok(())
}

/// Whether a task file for `id` waits in `in/` or `in/<domain>/`.
fn in_spool(root: &spoolflow::Root, id: &TaskId) -> bool {
    spoolflow::store::read::find_in(root, id).is_some()
}
