//! `spoolflow priority ID P`: drops a priority request into
//! `var/spool/priority/<id>` (SPEC 13); the engine applies it to the
//! queued task (its place in the queue and its `run/` file), or moves it
//! to `rejected/` with the reason when the task runs or is unknown.
//! Without a running engine, the request waits for the next start.
//!
//! The command then watches the request for a moment ([`SETTLE`]): a
//! running engine takes it within milliseconds, and the operator learns
//! whether it was applied or refused (exit 2, with the engine's reason).
//! A request still there after that waits for an engine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    let dir = root.priority_requests();
    // Watched before it is written, so that its removal is never missed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(exit::FAILURE, e))?;
    let watcher = watch_dirs(&[&dir, &root.rejected()], tx);
    // File times are coarser than the clock: a second of slack.
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    // A task that holds the priority already tells nothing by its file:
    // the request's fate does (moved to rejected/, or removed).
    let already = applied(&root, id, args.priority);
    let path = request(&root, id, args.priority)?;
    let deadline = Instant::now() + SETTLE;
    // Taken means applied (the request is removed once the `run/` file
    // holds the priority) or refused (moved to rejected/, then its reason
    // written).
    let refused = || refusal(&root, id, started).is_some();
    let taken =
        || applied(&root, id, args.priority) && !(already && moved_to_rejected(&root, id, started));
    let decided = || !path.exists() && (refused() || taken());
    while !decided() && watcher.is_some() && engine_runs(&root) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || rx.recv_timeout(left).is_err() {
            break;
        }
    }
    if path.exists() {
        let when = if engine_runs(&root) {
            "the engine applies it when it takes the task (its file may still be being written)"
        } else {
            "no engine runs: it applies when one starts"
        };
        println!(
            "priority {} requested for {id}; not applied yet: {when}",
            args.priority
        );
        return Ok(());
    }
    if !refused() && taken() {
        println!("priority of {id} is now {}", args.priority);
        return Ok(());
    }
    let reason = refusal(&root, id, started).unwrap_or_else(|| "see var/spool/rejected/".into());
    Err(Failure::new(
        exit::USAGE,
        format!("priority request for {id} refused: {reason}"),
    ))
}

/// Writes the priority request of a task that has not ended (the CLI's
/// and the dashboard's).
pub(crate) fn request(
    root: &spoolflow::Root,
    id: &TaskId,
    priority: i32,
) -> Result<PathBuf, Failure> {
    super::cancel::require_live(root, id, || {
        Failure::new(
            exit::USAGE,
            format!("task {id} has ended already; only a queued task's priority can change"),
        )
    })?;
    let dir = root.priority_requests();
    std::fs::create_dir_all(&dir).map_err(|e| Failure::new(exit::FAILURE, e))?;
    let request = serde_json::json!({ "id": id.as_str(), "priority": priority });
    let bytes = serde_json::to_vec(&request).expect("a JSON map serializes");
    spool::write_atomic(&dir, id.as_str(), &bytes, false, true)
        .map_err(|e| Failure::new(exit::FAILURE, e))
}

/// How long the command watches its request for a running engine to take it.
const SETTLE: Duration = Duration::from_secs(3);

/// Whether an engine holds the root's lock (the read layer's answer).
fn engine_runs(root: &spoolflow::Root) -> bool {
    spoolflow::read::engine::engine(root).is_some()
}

/// A watcher of `dirs` that sends on every event (`None`: none could be
/// set up; the command then does not wait).
fn watch_dirs(
    dirs: &[&Path],
    tx: std::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .ok()?;
    for dir in dirs {
        w.watch(dir, notify::RecursiveMode::NonRecursive).ok()?;
    }
    Some(w)
}

/// Whether the task holds the priority now (its `run/` file, or its
/// record if it ended since).
fn applied(root: &spoolflow::Root, id: &TaskId, priority: i32) -> bool {
    [root.run_file(id), root.done_file(id), root.failed_file(id)]
        .iter()
        .filter_map(|p| {
            spoolflow::store::spool::read_capped(p, spoolflow::read::find::READ_LIMIT).ok()
        })
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .any(|v| v["priority"] == priority)
}

/// The entries of `rejected/` named `<id>` or `<id>.N` (the engine's
/// names for a rejected request), then `suffix`, modified since `since`,
/// with their times.
fn rejected_since(
    root: &spoolflow::Root,
    id: &TaskId,
    suffix: &str,
    since: std::time::SystemTime,
) -> Vec<(std::time::SystemTime, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root.rejected()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let rest = name
                .strip_prefix(id.as_str())
                .and_then(|r| r.strip_suffix(suffix));
            rest.is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('.')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .filter(|(t, _)| *t >= since)
        .collect()
}

/// Whether a request for `id` written since `since` is in `rejected/`
/// (moved there by the engine in one rename, the moment it left
/// `priority/`; its reason follows).
fn moved_to_rejected(root: &spoolflow::Root, id: &TaskId, since: std::time::SystemTime) -> bool {
    !rejected_since(root, id, "", since).is_empty()
}

/// The reason of the newest rejected request for `id` written since
/// `since` (`rejected/<id>.reason` or `rejected/<id>.N.reason`).
fn refusal(root: &spoolflow::Root, id: &TaskId, since: std::time::SystemTime) -> Option<String> {
    use spoolflow::read::tasks::Request;
    rejected_since(root, id, ".reason", since)
        .into_iter()
        .max()
        .and_then(|(_, p)| spoolflow::read::find::read_reason(&p))
        // A cancel request for the same id, rejected meanwhile, is not
        // this request's refusal.
        .filter(|r| Request::of_reason(r) != Some(Request::Cancel))
        .map(|r| {
            let r = r.trim();
            let prefix = Request::Priority.prefix();
            r.strip_prefix(prefix).unwrap_or(r).to_string()
        })
}
