//! The engine's intake: scans of `in/` (taken a bounded chunk per turn of
//! the loop), claims of task files into `run/`, rejections and cancel
//! requests. What an entry *is* is decided by `store::intake`; every
//! fsync goes through the durable writer.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::Value;

use super::state::{key, Execution, Mode, Node, NodeTask};
use super::Engine;
use crate::model::names::TaskId;
use crate::model::point::Kind;
use crate::model::task::{Object, Task};
use crate::store::intake::{self, Intake};
use crate::store::spool::{self, SpoolError};
use crate::store::writer::{ident_of, Job};

#[path = "intake_settle.rs"]
mod settle;
pub(in crate::engine) use settle::Settling;
use settle::{hold, mark_of, settle, Found, Settle, Stamp};

/// The longest cancel request read.
const CANCEL_LIMIT: u64 = 64 * 1024;

impl Engine {
    /// Schedules a look at everything in `in/` (at start-up, after a
    /// watcher overflow, and as the slow safety net), in submission order.
    pub(super) fn scan_in(&mut self) {
        if !self.mode.is_stopping() {
            let dir = self.root.spool_in();
            self.scan_dir(&dir);
        }
    }

    /// Queues every entry of one directory of `in/`, in submission order
    /// (see [`intake::in_submission_order`]).
    fn scan_dir(&mut self, dir: &Path) {
        let paths = intake::in_submission_order(&self.root, dir);
        self.scan.extend(paths);
    }

    /// Looks at up to `n` entries of the scan in progress. Once the engine
    /// runs, a regular file changed in the last moments is put off (see
    /// [`Engine::put_off`]): it may still be being written in place (SPEC
    /// 3: taken once its writer has closed it). At start-up files are
    /// taken as they are. When the scan is over, cancel requests still
    /// waiting for their task are settled.
    pub(super) fn take_scan(&mut self, n: usize) {
        let now = std::time::SystemTime::now();
        for _ in 0..n {
            let Some(p) = self.scan.pop_front() else {
                break;
            };
            if self.mode.is_stopping() {
                self.scan.clear();
                break;
            }
            if self.mode != Mode::Starting && self.put_off(&p, now) {
                continue;
            }
            self.take_found(&p, Found::Scan);
        }
        if self.scan.is_empty() {
            self.settle_cancels();
        }
    }

    /// Whether a scan leaves `path` for later. A scan finds what no event
    /// announced (a file inside a directory renamed in whole, or put into
    /// a new directory before it was watched, or after an overflow). A
    /// regular file nobody has open for writing is complete: taken now. One
    /// a writer still has open is left to its close event (its directory
    /// is watched), with a deadline [`SETTLE`] on as a fallback. When that
    /// cannot be told, a file changed less than [`SETTLE`] ago gets its own
    /// deadline, when its [`SETTLE`] has passed since its last change, and
    /// is looked at again then, alone (never a rescan, never the safety
    /// net).
    fn put_off(&mut self, path: &Path, now: std::time::SystemTime) -> bool {
        // A writer's temporary or a dotfile never becomes a task: never
        // put off (it would hold back requests for unknown ids).
        if path
            .file_name()
            .is_some_and(|n| intake::is_ignored_bytes(n.as_encoded_bytes()))
        {
            return false;
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() => m,
            // Gone, or not a file: looked at as it is.
            _ => {
                let _ = self.settling.forget(path);
                return false;
            }
        };
        let stamp = Stamp::of(&meta);
        let before = match self.settling.get(path) {
            // Its deadline is armed: it comes back then.
            Some((_, at)) if tokio::time::Instant::now() < at => return true,
            Some((stamp, _)) => Some(stamp),
            None => None,
        };
        let writing = intake::open_for_writing(path);
        match settle(now, stamp, before, writing) {
            Settle::Take => {
                let _ = self.settling.forget(path);
                false
            }
            Settle::Wait(wait) => {
                self.settling
                    .wait(path, stamp, tokio::time::Instant::now() + wait);
                true
            }
        }
    }

    /// The entries whose deadline has come are looked at again.
    pub(super) fn settled(&mut self) {
        let due = self.settling.due(tokio::time::Instant::now());
        self.scan.extend(due);
    }

    /// A watcher overflow or error: events were lost. Every domain's
    /// directory is watched again (one made meanwhile may have lost the
    /// event on which the watcher watches it) and `in/` is scanned now.
    pub(super) fn rescan_in(&mut self) {
        if self.mode.is_stopping() {
            return;
        }
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.root.spool_in())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_type().is_ok_and(|t| t.is_dir())
                    && e.file_name().to_str().is_some_and(|n| {
                        !intake::is_ignored_name(n)
                            && n.parse::<crate::model::names::Domain>().is_ok()
                    })
            })
            .map(|e| e.path())
            .collect();
        for dir in dirs {
            self.watcher.watch_dir(&dir);
        }
        self.scan_in();
    }

    /// A watched directory of the spool was deleted or moved away: said
    /// once; what is dropped there is taken once it is made again.
    pub(super) fn dir_gone(&mut self, dir: &Path) {
        if self.settling.lost.insert(dir.to_path_buf()) {
            tracing::warn!(
                "{} was deleted or moved away; what is put there is taken once it is made again",
                self.root.relative(dir).display()
            );
        }
    }

    /// A watched directory of the spool was made again (or renamed into
    /// place): watched afresh, then what it holds is looked at.
    pub(super) fn dir_back(&mut self, dir: &Path) {
        if !dir.is_dir() {
            return;
        }
        let spool_in = dir == self.root.spool_in();
        let role = if spool_in {
            crate::watch::Role::In
        } else if dir == self.root.cancel() {
            crate::watch::Role::Cancel
        } else {
            crate::watch::Role::Priority
        };
        if !self.watcher.rewatch(dir, role) {
            return;
        }
        if self.settling.lost.remove(dir) {
            tracing::info!(
                "{} is there again: watching it, and taking what it holds",
                self.root.relative(dir).display()
            );
        }
        if spool_in {
            self.rescan_in();
        } else if dir == self.root.cancel() {
            self.scan_cancel();
        } else if dir == self.root.priority_requests() {
            self.scan_priority();
        }
    }

    /// Looks at one path under `in/` that an event announced (its writer
    /// closed it, or it was renamed or made there) and claims, rejects or
    /// ignores it.
    pub(super) fn take(&mut self, path: &Path) {
        // A file put off is looked at now, on its event (its writer closed
        // it): it no longer holds back requests for unknown ids, which
        // are settled once it is claimed or rejected, not at its deadline.
        let was_put_off = self.settling.forget(path);
        self.take_found(path, Found::Event);
        if was_put_off && self.scan.is_empty() {
            self.settle_cancels();
        }
    }

    /// A regular file made in `in/`, `cancel/` or `priority/` and not
    /// closed yet as far as the watcher knows: a file published whole by
    /// a hard link (no other event tells it), or a write in place
    /// beginning (its close event follows). Taken now only if nobody has
    /// it open for writing: a task file is looked at as a scan finds one
    /// (see [`Engine::put_off`]); a request the engine cannot tell about
    /// is left to its close event, or to a scan.
    pub(super) fn made(&mut self, role: crate::watch::Role, path: &Path) {
        use crate::watch::Role;
        // Empty: a file just made in place, whose writer may not have it
        // open yet (the creation is told a moment before the open); its
        // close will tell it. A file published whole is not empty.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.len() == 0) {
            return;
        }
        match role {
            Role::In => {
                if self.mode.is_stopping() {
                    return;
                }
                if !self.put_off(path, std::time::SystemTime::now()) {
                    self.take_found(path, Found::Scan);
                }
            }
            Role::Cancel | Role::Priority => {
                // Waiting for its task already (it was closed before this
                // event was looked at, and its close event came first).
                let pending = self.pending_cancels.values().any(|(p, _)| p == path)
                    || self.pending_priorities.values().any(|(p, _)| p == path);
                if pending || intake::open_for_writing(path) != Some(false) {
                    return;
                }
                if role == Role::Cancel {
                    self.take_cancel(path);
                } else {
                    self.take_priority(path);
                }
            }
            Role::Points | Role::Spool => {}
        }
    }

    /// Looks at one path under `in/`, found by an event or by a scan.
    fn take_found(&mut self, path: &Path, found: Found) {
        if self.mode.is_stopping() || self.in_flight.contains(path) || self.is_stuck(path) {
            return;
        }
        match intake::examine(&self.root, path, self.options.input_limit) {
            Intake::Ignore => {}
            Intake::Reject { path, reason } => self.reject(&path, &reason),
            Intake::Incomplete { path, reason } => self.incomplete(&path, &reason, found),
            Intake::DomainDir(dir) => {
                // A directory that appeared (created, or renamed in with
                // its files): watched first, then listed, so that every
                // entry is either listed or announced by its own event.
                self.watcher.watch_dir(&dir);
                if let Err(e) = std::fs::read_dir(&dir) {
                    return self.unreadable_dir(&dir, &e);
                }
                self.scan_dir(&dir);
            }
            Intake::Task {
                path,
                task,
                self_contained,
                submitted,
                ident,
            } => self.claim(&path, *task, (self_contained, ident), submitted),
        }
    }

    /// A file whose bytes end before its JSON does: rejected, unless its
    /// writer may still be at work (see [`hold`]): then it is looked at
    /// again when it changes (its close event) or at its deadline.
    fn incomplete(&mut self, path: &Path, reason: &str, found: Found) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let stamp = Stamp::of(&meta);
        let age = stamp
            .ctime
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok());
        match hold(found, intake::open_for_writing(path), age) {
            Settle::Take => self.reject(path, reason),
            Settle::Wait(wait) => {
                tracing::debug!(
                    "{} is cut short but may still be being written; looking again in {}",
                    path.display(),
                    crate::model::task::Dur(wait)
                );
                self.settling
                    .wait(path, stamp, tokio::time::Instant::now() + wait);
            }
        }
    }

    /// Whether `path` is an entry that could not be moved and has not
    /// changed since (it is not looked at again: reported once).
    pub(super) fn is_stuck(&mut self, path: &Path) -> bool {
        let Some(mark) = self.settling.stuck.get(path) else {
            return false;
        };
        if mark_of(path) == Some(*mark) {
            return true;
        }
        self.settling.stuck.remove(path);
        false
    }

    /// An entry could not be moved out of its directory (the writer said
    /// why, once): it is left where it is and not looked at again until
    /// it changes, and `--drain` does not wait for it.
    pub(super) fn unmovable(&mut self, path: &Path) {
        self.in_flight.remove(path);
        if let Some(mark) = mark_of(path) {
            self.settling.stuck.insert(path.to_path_buf(), mark);
        }
    }

    /// A domain's directory the engine may not list: said once (until it
    /// changes: a `chmod` that lets the engine in is looked at again).
    fn unreadable_dir(&mut self, dir: &Path, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return;
        }
        tracing::error!(
            "cannot read {}: {e}; what is put there is not taken until the engine may read it",
            dir.display()
        );
        self.unmovable(dir);
    }

    /// Whether `in/` holds nothing the engine will take (what `run
    /// --drain` waits for): an entry that could not be moved does not
    /// count.
    pub(super) fn in_is_drained(&mut self) -> bool {
        let root = self.root.clone();
        intake::counted_entries(&root).all(|p| self.is_stuck(&p))
    }

    /// Moves input to `rejected/` with the reason (through the writer).
    /// A request's reason says which kind of request it was (see
    /// [`crate::read::tasks::Request`]): its file is named after the task
    /// it was for, and must not be read as a rejected task.
    pub(super) fn reject(&mut self, path: &Path, reason: &str) {
        use crate::read::tasks::Request;
        let dir = path.parent();
        let request = if dir == Some(self.root.cancel().as_path()) {
            Some(Request::Cancel)
        } else if dir == Some(self.root.priority_requests().as_path()) {
            Some(Request::Priority)
        } else {
            None
        };
        let reason = match request {
            Some(r) => format!("{}{reason}", r.prefix()),
            None => reason.to_string(),
        };
        self.in_flight.insert(path.to_path_buf());
        self.writer.send(Job::Reject {
            path: path.to_path_buf(),
            ident: ident_of(path),
            rejected: self.root.rejected(),
            reason,
        });
    }

    /// Whether an id is taken: by a live or claimed execution, or a record.
    /// (A file in `run/` is caught by the no-replace claim.)
    fn is_known(&self, id: &TaskId) -> bool {
        self.executions.contains_key(id)
            || self.claiming.contains_key(id)
            || self.root.done_file(id).exists()
            || self.root.failed_file(id).exists()
    }

    /// Claims the task read from `path` (the file `ident`): moved to
    /// `run/` when it names its domain (`self_contained`), else written
    /// there complete by the writer.
    fn claim(
        &mut self,
        path: &Path,
        task: Task,
        (self_contained, ident): (bool, crate::store::writer::Ident),
        submitted: Option<std::time::SystemTime>,
    ) {
        // When the file was written: the record's `created_at`.
        let submitted = submitted.map(chrono::DateTime::<Utc>::from);
        if self.is_known(&task.id) {
            if self.mode == Mode::Starting && self.claim_cut_short(path, &task, ident) {
                return;
            }
            return self.reject(path, &format!("duplicate id {}", task.id));
        }
        if let Some(flow) = &task.flow {
            if let Err(reason) = self.prepare_flow(flow) {
                return self.reject(path, &reason);
            }
        }
        if !self_contained {
            // The file does not name its domain: the writer makes the
            // completed task durable in run/, then removes the original.
            let bytes = task.to_file_json().to_string().into_bytes();
            self.in_flight.insert(path.to_path_buf());
            self.writer.send(Job::Claim {
                exid: task.exid.clone(),
                from: path.to_path_buf(),
                ident: Some(ident),
                dir: self.root.run(),
                name: format!("{}.json", task.id),
                bytes,
            });
            // Until it is durable, a standalone task's payload and headers
            // are the writer's; once in run/ they are read back from there.
            let task = if task.flow.is_none() {
                Task {
                    payload: Object::new(),
                    headers: Object::new(),
                    ..task
                }
            } else {
                task
            };
            self.claiming.insert(task.exid.clone(), (task, submitted));
            return;
        }
        let run_file = self.root.run_file(&task.id);
        match spool::rename_no_replace(path, &run_file) {
            // Another file was renamed over the one read, in the moment
            // before the move: what is in run/ now was never examined.
            Ok(()) if ident_of(&run_file) != Some(ident) => {
                let reason = "it replaced the file the engine had read while the engine took it; submit it again";
                self.reject(&run_file, reason);
            }
            Ok(()) => self.created(task, submitted),
            Err(SpoolError::Exists(_)) => self.reject(path, &format!("duplicate id {}", task.id)),
            Err(e) if e.is_not_found() => {}
            // Logged once, by the stop path.
            Err(e) if e.is_fatal() => self.claim_failed(path, e),
            Err(e) => {
                // This one file (someone else's in a sticky in/, say).
                tracing::error!(
                    "cannot claim {}: {e}; it stays there, not looked at again until it changes",
                    path.display()
                );
                self.unmovable(path);
            }
        }
    }

    /// The writer is done with a path of `in/` or `cancel/`: whatever is
    /// there now (a file put there meanwhile, whose event was passed over
    /// while the path was in flight) is looked at.
    pub(super) fn path_done(&mut self, path: &Path) {
        self.in_flight.remove(path);
        if std::fs::symlink_metadata(path).is_err() {
            return;
        }
        if path.starts_with(self.root.spool_in()) {
            // Its event may not have come yet (a writer still at work).
            self.take_found(path, Found::Scan);
        } else if path.starts_with(self.root.cancel()) {
            self.take_cancel(path);
        } else if path.starts_with(self.root.priority_requests()) {
            self.take_priority(path);
        }
    }

    /// A domain-less claim is durable, its original removed.
    pub(super) fn on_claimed(&mut self, exid: &TaskId) {
        if let Some((task, submitted)) = self.claiming.remove(exid) {
            self.created(task, submitted);
        }
    }

    /// A domain-less claim found its id taken in `run/`: the original,
    /// still in `in/`, is rejected.
    pub(super) fn on_claim_taken(&mut self, exid: &TaskId, from: &Path) {
        self.in_flight.remove(from);
        if let Some((task, _)) = self.claiming.remove(exid) {
            self.reject(from, &format!("duplicate id {}", task.id));
        }
    }

    /// A task is in `run/`: log `created`, make it an execution, queue it.
    /// `submitted`: when its file was written (`submitted_at` of the
    /// point, `created_at` of the record). A task run again by `retry`
    /// goes on counting its attempts from its history.
    fn created(&mut self, task: Task, submitted: Option<chrono::DateTime<Utc>>) {
        let k = key(&task.exid, &task.nid);
        // One instant for the point and the execution: the replies
        // journal names a task's life by it, and a restart reads it back
        // from the point.
        let created_at = Utc::now();
        let mut p = self
            .point(&k, Kind::Created)
            .with("domain", task.domain.as_str())
            .with("priority", task.priority);
        p.ts = crate::model::task::timestamp(created_at);
        if let Some(t) = submitted {
            p = p.with("submitted_at", crate::model::task::timestamp(t));
        }
        p.id = task.id.clone();
        if let Some(t) = &task.tasker {
            p = p.with("tasker", t.as_str());
        }
        self.log_idle(p);
        let exid = task.exid.clone();
        if let Some(flow) = task.flow.clone() {
            match self.prepare_flow(&flow) {
                Ok((tree, conds)) => self.start_flow(task, tree, conds, created_at),
                // Checked before the claim: not expected; the flow fails.
                Err(reason) => self.fail_flow_at_start(task, reason),
            }
        } else {
            let before = crate::store::history::attempts_before(&self.root, &task.id);
            // Its payload and headers are in run/ now: read back when
            // offered.
            let exec = Execution::standalone(created_at);
            let mut node = Node::new(NodeTask::on_disk(task));
            node.attempt = before + 1;
            self.insert_execution(exid.clone(), exec, Box::new(node));
        }
        if let Some(exec) = self.executions.get_mut(&exid) {
            exec.submitted_at = submitted;
        }
        if let Some((req, reason)) = self.pending_cancels.remove(&exid) {
            self.cancel(&exid, &reason, &req);
        }
        self.apply_pending_priority(&exid);
    }

    // ------------------------------------------------------------ cancel

    pub(super) fn scan_cancel(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.root.cancel()) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            self.take_cancel(&p);
        }
    }

    pub(super) fn take_cancel(&mut self, path: &Path) {
        if self.in_flight.contains(path)
            || self.held_cancels.contains_key(path)
            || self.is_stuck(path)
        {
            return;
        }
        let name = match request_entry(path) {
            Ok(Some(name)) => name,
            Ok(None) => return,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        let bytes = match spool::read_capped(path, CANCEL_LIMIT) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        let (id, reason) = parse_cancel(&name, &bytes);
        let id: TaskId = match id.parse() {
            Ok(id) => id,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        if self.executions.contains_key(&id) {
            self.cancel(&id, &reason, path);
        } else if self.root.done_file(&id).exists() || self.root.failed_file(&id).exists() {
            self.reject(path, &format!("task {id} has ended already"));
        } else if self.mode.is_stopping() {
            // The engine lets go of queued tasks while it stops: the request
            // stays in cancel/ and applies at the next start.
        } else {
            // Perhaps still in in/ (or being claimed): look, then decide
            // once the scan is over.
            self.pending_cancels
                .insert(id, (path.to_path_buf(), reason));
            self.scan_in();
            if self.scan.is_empty() {
                self.settle_cancels();
            }
        }
    }

    /// Whether requests naming no known task may be rejected now: not
    /// while the engine stops (they apply at the next start), nor while a
    /// file of `in/` is put off (still being written, its id unknown until
    /// it is read). A put-off file is looked at again on its close event
    /// or at its deadline, and either look settles the requests again.
    pub(super) fn may_settle_requests(&self) -> bool {
        !self.mode.is_stopping() && !self.settling.has_pending()
    }

    /// Rejects the cancel requests whose task a complete scan of `in/` did
    /// not find (a claim still being made durable keeps its request).
    fn settle_cancels(&mut self) {
        self.settle_priorities();
        if self.pending_cancels.is_empty() || !self.may_settle_requests() {
            return;
        }
        let unknown: Vec<TaskId> = self
            .pending_cancels
            .keys()
            .filter(|id| !self.claiming.contains_key(*id))
            .cloned()
            .collect();
        for id in unknown {
            if let Some((p, _)) = self.pending_cancels.remove(&id) {
                self.reject(&p, &format!("unknown task id {id}"));
            }
        }
    }
}

/// What an entry of a request directory (`cancel/`, `priority/`) is
/// before its bytes are read: `Ok(Some(name))` a request to read,
/// `Ok(None)` a writer's temporary or an entry gone already, `Err` the
/// reason to reject it (a name that is not UTF-8, a link, a directory or
/// a special file: never followed, never opened).
pub(super) fn request_entry(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = path.file_name() else {
        return Ok(None);
    };
    if intake::is_ignored_bytes(name.as_bytes()) {
        return Ok(None);
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(None);
    };
    let Some(name) = name.to_str() else {
        return Err(intake::not_utf8_reason(name));
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        Err("symbolic links are not accepted (moved here as the link, never followed)".into())
    } else if ft.is_dir() {
        Err("a directory is not a request: drop a file named after the task id".into())
    } else if !ft.is_file() {
        Err("not a regular file (a FIFO, socket or device)".into())
    } else {
        Ok(Some(name.to_owned()))
    }
}

/// The task id and reason of a cancel request named `name` holding
/// `bytes`: a JSON object with `id` and `reason`, else the text as the
/// reason and the name's stem as the id.
fn parse_cancel(name: &str, bytes: &[u8]) -> (String, String) {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let (id, reason) = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => (
            o.get("id")
                .and_then(Value::as_str)
                .unwrap_or(stem)
                .to_string(),
            o.get("reason").and_then(Value::as_str).map(str::to_owned),
        ),
        _ => {
            let text = String::from_utf8_lossy(bytes).trim().to_string();
            (stem.to_string(), (!text.is_empty()).then_some(text))
        }
    };
    (id, reason.unwrap_or_else(|| "cancelled".into()))
}

#[cfg(test)]
mod tests {
    use super::parse_cancel;

    #[test]
    fn cancel_requests_name_their_task_and_reason() {
        assert_eq!(
            parse_cancel("a1", b""),
            ("a1".to_string(), "cancelled".to_string())
        );
        assert_eq!(
            parse_cancel("a1", b"  too late \n"),
            ("a1".to_string(), "too late".to_string())
        );
        assert_eq!(
            parse_cancel("x.json", br#"{"id":"b2","reason":"dup"}"#),
            ("b2".to_string(), "dup".to_string())
        );
        assert_eq!(
            parse_cancel("x.json", br#"{"reason":"dup"}"#),
            ("x".to_string(), "dup".to_string())
        );
    }
}
