//! `spoolflow show ID [--json]`: one task — its record, or the task file
//! and its current state while it is queued or running — with its earlier
//! attempts (`history/`, after `retry`) and its points. `--json` gives
//! `{ "record", "task", "state", "history", "points" }`.

use std::path::PathBuf;

use chrono::Utc;
use serde_json::{json, Value};
use spoolflow::layout::Root;
use spoolflow::model::names::TaskId;
use spoolflow::model::task::Record;
use spoolflow::read::summary::{first_line, live_state, ListState, SlurmJob};
use spoolflow::read::{self, engine, Place};
use spoolflow::store::spool;

use super::output::{age, between, colour, duration, paint_state, print_json};
use super::{exit, points, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task's id.
    pub id: String,
    /// Print the record (or task), history and points as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(root: Option<PathBuf>, args: Args) -> Result<(), Failure> {
    let root = super::existing_root(root)?;
    let id: TaskId = args.id.parse().map_err(|e| Failure::new(exit::USAGE, e))?;
    let shown = load(&root, &id)?;
    if args.json {
        return print_json(&as_json(&shown));
    }
    let record = match &shown.place {
        Place::Ended(r) => Some(r.as_ref()),
        Place::Rejected { path, reason } => {
            println!("task {id}: {}", paint_state(ListState::Rejected, colour()));
            println!(
                "  {:<12} {}",
                "reason",
                reason.as_deref().unwrap_or("(none recorded)")
            );
            println!("  {:<12} {}", "file", root.relative(path).display());
            return Ok(());
        }
        _ => None,
    };
    let task = shown.task.as_ref();
    let jobs = if shown.state == ListState::Running {
        live_state(&shown.points).jobs
    } else {
        Vec::new()
    };
    print_human(&root, &id, record, task, shown.state, &shown.history, &jobs);
    let mut last_date = String::new();
    println!("points:");
    points::print_all(&shown.points, &mut last_date);
    if record.is_some_and(|r| r.flow.is_some()) || task.is_some_and(|t| t.get("flow").is_some()) {
        println!("(the flow's tree: spoolflow flow {id})");
    }
    Ok(())
}

/// What `show` reads of a task (and the dashboard's task page).
pub(crate) struct Shown {
    pub place: Place,
    pub history: Vec<Record>,
    pub points: Vec<spoolflow::model::point::Point>,
    pub state: ListState,
    /// The task file while the task has not ended.
    pub task: Option<Value>,
}

/// Reads a task wherever it is, with its earlier attempts and points.
pub(crate) fn load(root: &Root, id: &TaskId) -> Result<Shown, Failure> {
    load_points(root, id, None)
}

/// As [`load`], with only the points in the last `bytes` of the log (the
/// dashboard's: a log may hold millions of points, a page shows the last).
pub(crate) fn load_recent(root: &Root, id: &TaskId, bytes: u64) -> Result<Shown, Failure> {
    load_points(root, id, Some(bytes))
}

fn load_points(root: &Root, id: &TaskId, last: Option<u64>) -> Result<Shown, Failure> {
    let place = read::find(root, id).map_err(|e| Failure::new(exit::FAILURE, e))?;
    let history: Vec<Record> = read::history(root, id);
    let place = match place {
        Some(p) => p,
        None if !history.is_empty() => {
            return Err(Failure::new(
                exit::NOT_FOUND,
                format!("{id} has earlier attempts in history/ but is neither queued, running nor ended (a retry cut short? run `spoolflow retry {id}` again)"),
            ))
        }
        None => return Err(Failure::new(exit::NOT_FOUND, format!("unknown id {id}"))),
    };
    let mut points = match last {
        None => read::points(root, id).map_err(|e| Failure::new(exit::FAILURE, e))?,
        Some(bytes) => match read::find::read_tail(&root.points_log(id), bytes) {
            Ok(tail) => spoolflow::model::point::parse_points(&tail),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Failure::new(exit::FAILURE, e)),
        },
    };
    let (task, state) = match &place {
        Place::Ended(r) => (None, state_of(r)),
        Place::Run(path) => {
            // A tail whose points are all its tasker's says nothing of
            // the state: read further back, as `list` does, and show the
            // engine's points found there (its `started` among them)
            // before the tail; the tasker's further back are not kept.
            if last.is_some() && !read::tasks::engine_said(&points) {
                let mut engine: Vec<_> = read::tasks::state_points(&root.points_log(id))
                    .into_iter()
                    .filter(|p| {
                        p.kind().is_some()
                            && p.fields.get("source").and_then(|v| v.as_str()) != Some("tasker")
                    })
                    .collect();
                engine.append(&mut points);
                points = engine;
            }
            let mut s = live_state(&points).state.unwrap_or(ListState::Queued);
            if s == ListState::Running && engine::engine(root).is_none() {
                s = ListState::Queued;
            }
            (task_file(path), s)
        }
        Place::In(path) => (waiting_file(root, path), ListState::Queued),
        Place::Rejected { .. } => (None, ListState::Rejected),
    };
    Ok(Shown {
        place,
        history,
        points,
        state,
        task,
    })
}

/// `show --json`: `{ "record", "task", "state", "history", "points" }`
/// (a rejected task: its `reason` instead of a task).
pub(crate) fn as_json(s: &Shown) -> Value {
    match &s.place {
        Place::Rejected { reason, .. } => json!({
            "record": null, "task": null, "state": ListState::Rejected,
            "reason": reason, "history": s.history, "points": s.points,
        }),
        Place::Ended(r) => json!({
            "record": r, "task": null, "state": s.state,
            "history": s.history, "points": s.points,
        }),
        _ => json!({
            "record": null, "task": s.task, "state": s.state,
            "history": s.history, "points": s.points,
            "slurm": live_state(&s.points).jobs,
        }),
    }
}

fn state_of(r: &Record) -> ListState {
    read::summary::Summary::of_record(r).state
}

/// A task file's JSON (`null` when it cannot be read).
fn task_file(path: &std::path::Path) -> Option<Value> {
    let bytes = spool::read_capped(path, 16 * 1024 * 1024).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A file waiting in `in/`, as the engine will take it: one in
/// `in/<domain>/` that names no domain has that directory's (SPEC 3).
fn waiting_file(root: &Root, path: &std::path::Path) -> Option<Value> {
    let mut task = task_file(path)?;
    let dir = path.parent().filter(|d| *d != root.spool_in());
    let domain = dir.and_then(|d| d.file_name()).and_then(|n| n.to_str());
    if let (Some(domain), Some(fields)) = (domain, task.as_object_mut()) {
        fields
            .entry("domain")
            .or_insert_with(|| Value::from(domain));
    }
    Some(task)
}

fn print_human(
    root: &Root,
    id: &TaskId,
    record: Option<&Record>,
    task: Option<&Value>,
    state: ListState,
    history: &[Record],
    slurm_jobs: &[SlurmJob],
) {
    println!("task {id}: {}", paint_state(state, colour()));
    if let Some(r) = record {
        print_record(root, id, r);
    } else if let Some(t) = task {
        let get = |k: &str| {
            t.get(k).map_or("-".to_string(), |v| {
                v.as_str().map_or(v.to_string(), str::to_string)
            })
        };
        field("domain", get("domain"));
        field("priority", get("priority"));
        field(
            "payload",
            cut(&t.get("payload").map(Value::to_string).unwrap_or_default()),
        );
        for job in slurm_jobs {
            field(&format!("slurm {}", job.nid), job.to_string());
        }
    }
    print_history(history);
}

/// One aligned `key value` line of `show`.
fn field(k: &str, v: String) {
    println!("  {k:<12} {v}");
}

/// The fields of an ended task's record, its attempts included.
fn print_record(root: &Root, id: &TaskId, r: &Record) {
    let now = Utc::now();
    field("domain", r.domain.to_string());
    field(
        "taskee",
        r.taskee.as_ref().map_or("-".into(), |t| t.to_string()),
    );
    field("attempts", r.attempts.to_string());
    field("priority", r.priority.to_string());
    field(
        "created",
        format!(
            "{} ({})",
            r.created_at.as_deref().unwrap_or("-"),
            age(r.created_at.as_deref(), now)
        ),
    );
    field(
        "ended",
        format!(
            "{} ({})",
            r.ended_at.as_deref().unwrap_or("-"),
            age(r.ended_at.as_deref(), now)
        ),
    );
    let first = r.first_started_at.as_deref().or(r.started_at.as_deref());
    if let Some(took) = between(first, r.ended_at.as_deref(), now) {
        field("took", duration(took));
    }
    print_attempts(r, now);
    if let Some(e) = &r.error {
        let kind = serde_json::to_value(e.kind).unwrap_or_default();
        field(
            "error",
            format!(
                "{}: {}",
                kind.as_str().unwrap_or(""),
                first_line(&e.message)
            ),
        );
    }
    let payload = serde_json::to_string(&r.payload).unwrap_or_default();
    field("payload", cut(&payload));
    let path = if r.state == spoolflow::model::task::State::Completed {
        root.done_file(id)
    } else {
        root.failed_file(id)
    };
    field("record", root.relative(&path).display().to_string());
}

/// A line per attempt that started: outcome, start, duration, error kind.
fn print_attempts(r: &Record, now: chrono::DateTime<Utc>) {
    for a in &r.attempts_log {
        let took =
            between(Some(&a.started_at), a.ended_at.as_deref(), now).map_or("-".into(), duration);
        let kind = a
            .kind
            .and_then(|k| serde_json::to_value(k).ok())
            .and_then(|v| v.as_str().map(|k| format!(" ({k})")))
            .unwrap_or_default();
        field(
            &format!("attempt {}", a.attempt),
            format!(
                "{} at {}, took {took}{kind}",
                a.outcome.as_deref().unwrap_or("running"),
                a.started_at
            ),
        );
    }
}

/// The earlier attempts kept in `history/`.
fn print_history(history: &[Record]) {
    if history.is_empty() {
        return;
    }
    println!("earlier attempts (history/):");
    for h in history {
        let reason = h
            .error
            .as_ref()
            .map(|e| first_line(&e.message))
            .unwrap_or_default();
        println!(
            "  {} attempt(s), {} at {}  {reason}",
            h.attempts,
            state_of(h),
            h.ended_at.as_deref().unwrap_or("-")
        );
    }
}

/// A long value cut for one line.
fn cut(s: &str) -> String {
    const MAX: usize = 200;
    if s.chars().count() > MAX {
        format!(
            "{}… ({} bytes; --json for all)",
            s.chars().take(MAX).collect::<String>(),
            s.len()
        )
    } else {
        s.to_string()
    }
}
