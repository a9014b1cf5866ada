//! `var/spool/history/<id>/`: the earlier final records of a task run
//! again (SPEC 9), and [`retry`], which puts them there.
//!
//! A record moved here is named after its `attempts` (`3.json`); since a
//! retried task's attempts go on counting, the names grow with each
//! retry. (A retried task cancelled before it started ends with the same
//! count as the record before it: it gets `3.1.json`, and so on.)
//!
//! How the engine learns that a task's attempts go on counting: when it
//! claims a task it looks up [`attempts_before`] — one `stat` of
//! `history/<id>/`, which does not exist for a task never retried, and a
//! listing of a few names when it does. The history is the truth; the
//! re-queued task file carries nothing extra (task files refuse unknown
//! keys, and a user could not be trusted to write such a key anyway).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::layout::Root;
use crate::model::names::TaskId;
use crate::model::task::{Object, Record, State};
use crate::store::spool::{self, SpoolError};

/// Why a task cannot be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("unknown task id {0}")]
    Unknown(TaskId),
    #[error("task {0} completed; only a failed or aborted task can be retried")]
    Completed(TaskId),
    #[error("task {0} has not ended (it is queued or running); only a failed or aborted task can be retried")]
    NotEnded(TaskId),
    #[error("task {0} has no record any more (removed by gc?), only earlier ones in var/spool/history/{0}/")]
    NoRecord(TaskId),
    #[error("cannot read the record {path}: {message}")]
    BadRecord { path: PathBuf, message: String },
    #[error("cannot move {from} to {to}: {source}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What [`retry`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retried {
    /// Where the earlier record is now.
    pub history: PathBuf,
    /// The task file queued in `in/`.
    pub queued: PathBuf,
    /// The attempts the earlier records counted (the next attempt is this
    /// plus one).
    pub attempts_before: u32,
    /// Whether this call finished a retry an earlier call began (its record
    /// was moved, but it crashed before the task was queued).
    pub resumed: bool,
}

/// The attempts a task's earlier records counted: the largest `N` among
/// `history/<id>/N.json` (and `N.k.json`), 0 without a history.
pub fn attempts_before(root: &Root, id: &TaskId) -> u32 {
    latest(&root.history_dir(id)).map_or(0, |(n, _)| n)
}

/// A task's earlier records, oldest first (by attempts, then the `.k` of
/// a repeated count), each with its path; unreadable files are skipped.
/// For `show`, which lists a task's attempts.
pub fn earlier_records(root: &Root, id: &TaskId) -> Vec<(PathBuf, Record)> {
    let Ok(entries) = std::fs::read_dir(root.history_dir(id)) else {
        return Vec::new();
    };
    let mut found: Vec<((u32, u32), PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let order = e.file_name().to_str().and_then(parse_name)?;
            Some((order, e.path()))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .filter_map(|(_, p)| {
            // Never through a link, never waiting on a FIFO, bounded.
            let most = crate::engine::recovery::FLOW_RUN_FILE_LIMIT;
            let bytes = crate::store::spool::read_capped(&p, most).ok()?;
            let record = serde_json::from_slice(&bytes).ok()?;
            Some((p, record))
        })
        .collect()
}

/// The history record with the most attempts, and its count.
fn latest(dir: &Path) -> Option<(u32, PathBuf)> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(u32, u32, PathBuf)> = None;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((n, k)) = name.to_str().and_then(parse_name) else {
            continue;
        };
        if best.as_ref().is_none_or(|(bn, bk, _)| (n, k) > (*bn, *bk)) {
            best = Some((n, k, e.path()));
        }
    }
    best.map(|(n, _, p)| (n, p))
}

/// `N.json` → (N, 0); `N.k.json` → (N, k).
fn parse_name(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".json")?;
    match stem.split_once('.') {
        None => Some((stem.parse().ok()?, 0)),
        Some((n, k)) => Some((n.parse().ok()?, k.parse().ok()?)),
    }
}

/// The first free name for a record of `attempts` in `dir`.
fn free_name(dir: &Path, attempts: u32) -> String {
    let mut name = format!("{attempts}.json");
    let mut k = 0;
    while dir.join(&name).exists() {
        k += 1;
        name = format!("{attempts}.{k}.json");
    }
    name
}

/// `spoolflow retry ID` (SPEC 9): queues a failed or aborted task again
/// as a new attempt under the same id; its record moves to
/// `history/<id>/<attempts>.json`.
///
/// The steps, in this order, each durable before the next:
///
/// 1. refuse unless the task has ended as failed or aborted: a completed
///    record, a `run/` file or an `in/<id>.json` means no;
/// 2. move `failed/<id>.json` into `history/<id>/` (a no-replace rename,
///    then fsync of both directories);
/// 3. write the task file (id, domain, requested tasker, priority,
///    headers, per-task options, the record's payload, a flow's tree) to
///    `in/<id>.json`
///    (write-to-temporary, fsync, no-replace rename, fsync).
///
/// Why this order: the engine refuses a task file whose id has a record
/// (`duplicate id`), so the record must leave `failed/` before the task
/// file appears — with an engine running, the claim may come at once.
/// A crash between 2 and 3 leaves the task nowhere but in its history,
/// never lost: a second `retry ID` finds no record, finds the history and
/// the task nowhere else (not in `in/`, `run/`, `done/` or `failed/`),
/// checks that no life of the id came after that history record (its
/// points log holds no more `created` points than the history holds
/// records: a record removed by `gc` is not a crash), and does step 3 from
/// the latest history record. A crash inside a step
/// leaves it undone or done (renames are atomic), never half done.
pub fn retry(root: &Root, id: &TaskId) -> Result<Retried, RetryError> {
    if root.done_file(id).exists() {
        return Err(RetryError::Completed(id.clone()));
    }
    let queued = root.spool_in().join(format!("{id}.json"));
    if root.run_file(id).exists() || queued.exists() {
        return Err(RetryError::NotEnded(id.clone()));
    }
    // The engine makes ended tasks' moves out of run/ durable together, a
    // moment after their records: made durable here before the record
    // moves, so that a crash cannot bring back the run/ file of a task
    // whose record is gone. (No run/ at all: nothing to make durable.)
    match spool::fsync_dir(&root.run()) {
        Ok(()) | Err(SpoolError::Missing { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = root.history_dir(id);
    let failed = root.failed_file(id);
    let (record, history, resumed) = if failed.exists() {
        let record = read_record(&failed)?;
        let history = move_to_history(&failed, &dir, record.attempts)?;
        (record, history, false)
    } else {
        let Some((_, history)) = latest(&dir) else {
            return Err(RetryError::Unknown(id.clone()));
        };
        if !interrupted(root, id) {
            return Err(RetryError::NoRecord(id.clone()));
        }
        (read_record(&history)?, history, true)
    };
    let mut bytes = serde_json::to_vec_pretty(&task_file_of(&record)).expect("a map serializes");
    bytes.push(b'\n');
    let queued =
        match spool::write_atomic(&root.spool_in(), &format!("{id}.json"), &bytes, true, true) {
            Ok(p) => p,
            Err(SpoolError::Exists(_)) => return Err(RetryError::NotEnded(id.clone())),
            Err(e) => return Err(e.into()),
        };
    Ok(Retried {
        history,
        queued,
        attempts_before: attempts_before(root, id),
        resumed,
    })
}

/// Whether a task with a history but no record is a retry interrupted
/// between its steps: every life of the id (a `created` point of its root
/// node in its points log) has its record in the history. A life after the
/// last history record whose record is gone (removed by `gc`) is not.
fn interrupted(root: &Root, id: &TaskId) -> bool {
    let lives = crate::store::points::read_points(&root.points_log(id))
        .map(|points| {
            points
                .iter()
                .filter(|p| p.point == "created" && p.nid.as_str() == "0")
                .count()
        })
        .unwrap_or(0);
    let histories = std::fs::read_dir(root.history_dir(id))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_str().and_then(parse_name).is_some())
                .count()
        })
        .unwrap_or(0);
    lives <= histories
}

fn read_record(path: &Path) -> Result<Record, RetryError> {
    let bad = |message: String| RetryError::BadRecord {
        path: path.to_path_buf(),
        message,
    };
    let bytes =
        spool::read_capped(path, crate::engine::INPUT_LIMIT * 2).map_err(|e| bad(e.to_string()))?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    match record.state {
        State::Failed | State::Aborted => Ok(record),
        s => Err(bad(format!("its state is {}", s.as_str()))),
    }
}

/// Step 2 of [`retry`]: the record, renamed into `dir` under a free name.
fn move_to_history(record: &Path, dir: &Path, attempts: u32) -> Result<PathBuf, RetryError> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| RetryError::Move {
        from: record.to_path_buf(),
        to: dir.to_path_buf(),
        source,
    })?;
    if created {
        if let Some(parent) = dir.parent() {
            spool::fsync_dir(parent)?;
        }
    }
    let to = dir.join(free_name(dir, attempts));
    spool::rename_no_replace(record, &to)?;
    spool::fsync_dir(dir)?;
    if let Some(parent) = record.parent() {
        spool::fsync_dir(parent)?;
    }
    Ok(to)
}

/// The task file that queues a record's task again.
pub fn task_file_of(r: &Record) -> Value {
    let mut obj = Object::new();
    obj.insert("id".into(), r.id.as_str().into());
    obj.insert("domain".into(), r.domain.as_str().into());
    if let Some(t) = &r.tasker {
        obj.insert("tasker".into(), t.as_str().into());
    }
    if r.priority != 0 {
        obj.insert("priority".into(), r.priority.into());
    }
    obj.insert("payload".into(), Value::Object(r.payload.clone()));
    if !r.headers.is_empty() {
        obj.insert("headers".into(), Value::Object(r.headers.clone()));
    }
    if let Some(flow) = &r.flow {
        obj.insert("flow".into(), flow.clone());
    }
    if let Some(options) = &r.options {
        obj.extend(options.clone());
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_names_count_attempts() {
        assert_eq!(parse_name("3.json"), Some((3, 0)));
        assert_eq!(parse_name("3.2.json"), Some((3, 2)));
        assert_eq!(parse_name("x.json"), None);
        assert_eq!(parse_name("3.json.tmp"), None);
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(latest(tmp.path()), None);
        assert_eq!(free_name(tmp.path(), 2), "2.json");
        std::fs::write(tmp.path().join("2.json"), "{}").unwrap();
        assert_eq!(free_name(tmp.path(), 2), "2.1.json");
        std::fs::write(tmp.path().join("2.1.json"), "{}").unwrap();
        std::fs::write(tmp.path().join(".x.tmp"), "{}").unwrap();
        assert_eq!(latest(tmp.path()).unwrap().1, tmp.path().join("2.1.json"));
        std::fs::write(tmp.path().join("5.json"), "{}").unwrap();
        assert_eq!(latest(tmp.path()).unwrap().0, 5);
    }

    #[test]
    fn a_retried_task_file_is_a_valid_task_file() {
        let r: Record = serde_json::from_value(serde_json::json!({
            "id": "a1", "exid": "a1", "nid": "0", "domain": "org.x", "tasker": "t",
            "taskee": "t", "tasker_path": null, "state": "failed", "reason": "x",
            "error": {"kind": "work", "message": "x"}, "attempts": 2, "offers": 2,
            "priority": 4, "headers": {"by": "me"}, "created_at": null,
            "started_at": null, "ended_at": null, "payload": {"n": 1},
            "options": {"timeout": "2s", "retries": 0}
        }))
        .unwrap();
        let file = task_file_of(&r);
        let parsed = crate::model::task::TaskFile::parse(file.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.id.unwrap().as_str(), "a1");
        assert_eq!(parsed.priority, 4);
        assert_eq!(parsed.payload["n"], 1);
        assert_eq!(parsed.headers["by"], "me");
        assert_eq!(parsed.tasker.unwrap().as_str(), "t");
        assert_eq!(parsed.options.retries, Some(0));
        assert_eq!(parsed.options.timeout.unwrap().0.as_secs(), 2);
    }
}
