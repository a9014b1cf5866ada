//! Every task the spool knows, as [`Summary`]s: records through the index,
//! tasks in `run/` with their state derived from their points, files
//! waiting in `in/`, and rejected files. What `status` counts and `list`
//! filters.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::layout::Root;
use crate::model::names::{Domain, TaskId};
use crate::model::point::Point;
use crate::model::task::timestamp;
use crate::read::engine::EngineInfo;
use crate::read::index;
use crate::read::summary::{first_line, live_state, ListState, Summary};
use crate::store::intake::counted_entries;
use crate::store::spool;

/// The largest task file read for its summary.
const TASK_LIMIT: u64 = 16 * 1024 * 1024;
/// The most of a points log read at first for a live task's state.
const POINTS_TAIL: u64 = 1024 * 1024;
/// The most read when a tasker's own points fill that tail.
const POINTS_MOST: u64 = 64 * 1024 * 1024;

/// Everything the spool holds, summarized.
#[derive(Debug, Default)]
pub struct Listing {
    pub tasks: Vec<Summary>,
    /// Rejected cancel and priority requests (not tasks: each file is
    /// named after the task it was for).
    pub requests: Vec<Summary>,
    /// Task nodes running now (what occupies the workers).
    pub running_nodes: usize,
    /// Files that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// The keys of a task file a summary needs (the payload is skipped, not
/// kept).
#[derive(Deserialize)]
struct TaskHead {
    id: Option<String>,
    domain: Option<String>,
    #[serde(default)]
    priority: i32,
    flow: Option<IgnoredAny>,
}

/// Summarizes every task of the root. Without a live engine nothing runs:
/// tasks whose last point says running are shown queued (the next engine
/// recovers them).
pub fn listing(root: &Root, engine: Option<&EngineInfo>) -> Listing {
    let records = index::records(root);
    let mut out = Listing {
        tasks: records.files.into_iter().map(|f| f.summary).collect(),
        requests: Vec::new(),
        running_nodes: 0,
        unreadable: records.unreadable,
    };
    let live = unended(root, engine);
    out.tasks.extend(live.tasks);
    out.requests = live.requests;
    out.running_nodes = live.running_nodes;
    out.unreadable.extend(live.unreadable);
    out
}

/// Every task but the records: those in `run/` and `in/`, and the
/// rejected files (for a reader that keeps the records' summaries, such
/// as the dashboard).
pub fn unended(root: &Root, engine: Option<&EngineInfo>) -> Listing {
    let mut out = Listing::default();
    live_tasks(root, engine.is_some(), &mut out);
    waiting_files(root, &mut out);
    rejected_files(root, &mut out);
    out
}

/// The tasks in `run/`.
fn live_tasks(root: &Root, engine_runs: bool, out: &mut Listing) {
    for entry in std::fs::read_dir(root.run())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let Ok(id) = stem.parse::<TaskId>() else {
            continue;
        };
        // Its record is durable and its run/ file not yet removed (or a
        // crash came in between): the record is the task (SPEC 4).
        if root.done_file(&id).exists() || root.failed_file(&id).exists() {
            continue;
        }
        let head = match read_run_head(&entry.path()) {
            Ok(h) => h,
            Err(e) => {
                out.unreadable.push(e);
                continue;
            }
        };
        let live = live_state(&state_points(&root.points_log(&id)));
        let mut state = live.state.unwrap_or(ListState::Queued);
        if state == ListState::Running && !engine_runs {
            state = ListState::Queued;
        } else if state == ListState::Running {
            out.running_nodes += live.running;
        }
        out.tasks.push(Summary {
            id: id.as_str().to_string(),
            state,
            domain: head.domain.unwrap_or_else(|| "-".into()),
            taskee: live.taskee,
            attempts: live.attempts,
            priority: head.priority,
            created_at: live.created_at.or_else(|| modified(&entry.path())),
            started_at: live.started_at,
            ended_at: None,
            error_kind: None,
            reason: None,
            flow: head.flow.is_some(),
            slurm: if state == ListState::Running {
                live.jobs
            } else {
                Vec::new()
            },
        });
    }
}

/// Whether `points` hold one of the engine's that decides a state (not
/// one of its notes, such as `points-capped`, which follows a tasker's
/// points).
pub fn engine_said(points: &[Point]) -> bool {
    points.iter().any(|p| {
        p.kind().is_some() && p.fields.get("source").and_then(|v| v.as_str()) != Some("tasker")
    })
}

/// A live task's points, for its state: the last [`POINTS_TAIL`] of its
/// log, or more, up to [`POINTS_MOST`], while what was read holds only
/// its tasker's own points (a tasker that reports progress often pushes
/// the engine's `started` out of the tail).
pub fn state_points(path: &Path) -> Vec<Point> {
    let whole = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut tail = POINTS_TAIL;
    loop {
        let log = crate::read::find::read_tail(path, tail).unwrap_or_default();
        let points = crate::model::point::parse_points(&log);
        if engine_said(&points) || tail >= whole || tail >= POINTS_MOST {
            return points;
        }
        tail = tail.saturating_mul(8);
    }
}

/// The files waiting in `in/` (queued: the engine has not taken them yet).
fn waiting_files(root: &Root, out: &mut Listing) {
    for path in counted_entries(root) {
        let dir_domain = path
            .parent()
            .filter(|p| *p != root.spool_in())
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<Domain>().ok());
        let head = read_head(&path).ok();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let (id, domain, priority, flow) = match head {
            Some(h) => (
                h.id.unwrap_or(stem),
                h.domain
                    .or(dir_domain.map(|d| d.as_str().to_string()))
                    .unwrap_or_else(|| "-".into()),
                h.priority,
                h.flow.is_some(),
            ),
            None => (
                stem,
                dir_domain.map_or("-".into(), |d| d.as_str().into()),
                0,
                false,
            ),
        };
        out.tasks.push(Summary {
            id,
            state: ListState::Queued,
            domain,
            taskee: None,
            attempts: 0,
            priority,
            created_at: modified(&path),
            started_at: None,
            ended_at: None,
            error_kind: None,
            reason: None,
            flow,
            slurm: Vec::new(),
        });
    }
}

/// A request to the engine about a task (`cancel/`, `priority/`): when
/// rejected, its reason begins with [`Request::prefix`], for its file is
/// named after the task it was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Cancel,
    Priority,
}

impl Request {
    /// How the engine's reason for a rejected request of this kind begins.
    pub fn prefix(self) -> &'static str {
        match self {
            Request::Cancel => "cancel request: ",
            Request::Priority => "priority request: ",
        }
    }

    /// The kind of request a rejected file's reason is for, if any.
    pub fn of_reason(reason: &str) -> Option<Request> {
        [Request::Cancel, Request::Priority]
            .into_iter()
            .find(|r| reason.starts_with(r.prefix()))
    }
}

/// Whether a name in `rejected/` is a reason: `*.reason`, unless it has a
/// reason of its own beside it (a rejected file that was named so).
pub(crate) fn is_reason_name(name: &str, has_own_reason: impl Fn(&str) -> bool) -> bool {
    name.ends_with(".reason") && !has_own_reason(name)
}

/// The files in `rejected/`, each with its reason: rejected task files in
/// `tasks`, rejected requests in `requests`.
fn rejected_files(root: &Root, out: &mut Listing) {
    let dir = root.rejected();
    let names: std::collections::HashSet<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    for name in &names {
        // A reason, whether its file is there or not (a reason whose file
        // went is no rejected task); a rejected file named `*.reason` has
        // its own reason beside it.
        let is_reason = is_reason_name(name, |n| names.contains(&format!("{n}.reason")));
        if is_reason || name.starts_with('.') {
            continue;
        }
        let path = dir.join(name);
        let reason_path = dir.join(format!("{name}.reason"));
        let reason = crate::read::find::read_reason(&reason_path).map(|r| first_line(&r));
        // Created when it was written (the file keeps the date it had in
        // in/); ended when it was rejected, which its reason's date tells.
        let created = modified(&path);
        let rejected_at = modified(&reason_path).or_else(|| created.clone());
        let is_request = reason.as_deref().and_then(Request::of_reason).is_some();
        let list = if is_request {
            &mut out.requests
        } else {
            &mut out.tasks
        };
        list.push(Summary {
            id: name.clone(),
            state: ListState::Rejected,
            domain: "-".into(),
            taskee: None,
            attempts: 0,
            priority: 0,
            created_at: created,
            started_at: None,
            ended_at: rejected_at,
            error_kind: None,
            reason,
            flow: false,
            slurm: Vec::new(),
        });
    }
}

/// The head of a `run/` file, read as it streams by: a flow's file holds
/// its progress too, and may be far larger than any task file (up to what
/// the engine reads back at a restart).
fn read_run_head(path: &Path) -> Result<TaskHead, String> {
    use std::io::Read;
    let most = crate::engine::recovery::FLOW_RUN_FILE_LIMIT;
    let file = crate::store::points::open_to_read(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let reader = std::io::BufReader::new(file.take(most));
    serde_json::from_reader(reader)
        .map_err(|e| format!("{} is not a task file: {e}", path.display()))
}

fn read_head(path: &Path) -> Result<TaskHead, String> {
    let bytes = spool::read_capped(path, TASK_LIMIT).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a task file: {e}", path.display()))
}

/// A file's modification time as a timestamp (symlinks not followed).
pub fn modified(path: &Path) -> Option<String> {
    let m = std::fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(timestamp(DateTime::<Utc>::from(m)))
}
