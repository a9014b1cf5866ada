//! Start-up (SPEC section 10), once the engine lock is held (see `lock`):
//! the tasker processes a dead engine left behind, leftover temporaries, and
//! the tasks found in `run/`, rebuilt from their files and points logs.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::layout::Root;
use crate::model::names::TaskId;
use crate::model::point::{self, Kind};
use crate::model::task::{Object, Task, TaskFile};

use super::history::history_of;
use super::intern::Names;
use super::state::{key, Body, Execution, Loaded, Node, NodeTask};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("another engine is running on this root (pid {pid}, lock {path})")]
    Locked { pid: String, path: PathBuf },
    #[error("cannot lock the root {path} (the engine lock): {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Finishing what a record found at start left (see `scan_run`).
    #[error("the disk failed: {0}")]
    Disk(#[from] crate::store::spool::SpoolError),
}

/// A task found in `run/`, to queue again.
#[derive(Debug)]
pub struct Recovered {
    /// When the task was taken, and when its file was written (from its
    /// points log).
    pub created_at: Option<DateTime<Utc>>,
    pub submitted_at: Option<DateTime<Utc>>,
    /// The attempts that ran before (the last one may have been cut short).
    pub attempts: u32,
    /// The run under way (or about to be) when the engine stopped.
    pub(super) open_run: Option<super::history::OpenRun>,
    pub task: RunTask,
}

/// What a task found in `run/` is queued again as.
#[derive(Debug)]
pub enum RunTask {
    /// A standalone task: its node, built as its file is read (with its
    /// past restored from its points log) and boxed as the engine keeps
    /// it, so that start-up never holds every task twice (once read, once
    /// queued). Without its payload and headers: they stay in its `run/`
    /// file, read back when it is offered.
    Standalone(Box<Node>),
    /// A flow: its whole task file (its payload is the flow's input) and
    /// the progress its `run/` file holds.
    Flow(Box<(Task, Option<Value>)>),
}

impl Recovered {
    fn id(&self) -> &TaskId {
        match &self.task {
            RunTask::Standalone(node) => &node.task.id,
            RunTask::Flow(flow) => &flow.0.id,
        }
    }
}

/// What start-up found in `run/`.
#[derive(Debug, Default)]
pub struct Found {
    pub tasks: Vec<Recovered>,
    /// `run/` entries that cannot be read as tasks: to reject, with why.
    pub bad: Vec<(PathBuf, String)>,
    /// `run/` files whose task already has a final record (removed).
    pub finished: Vec<TaskId>,
}

/// Kills the tasker process groups a dead engine of this root left behind.
/// The groups are read from the taskers registry (`var/run/taskers`); each
/// is killed once its leader is seen to be a tasker of this root. Only when
/// the registry is missing, or names a group that still exists but whose
/// leader is gone (so it cannot be told apart cheaply), are all processes
/// scanned ([`scan_for_orphans`]). What left a tasker's group (`setsid`, a
/// double fork) is killed too: with the dead engine's cgroups when it had
/// them (`var/run/cgroup`), otherwise by the scan, run when the registry
/// names a tasker that ran when the engine died (a slot is emptied when
/// its task ends, its escapees killed). Run while holding the lock, so no
/// live engine's taskers match. Returns how many processes or groups were
/// killed.
pub fn kill_orphans(root: &Root) -> usize {
    let want_root = root_var(root);
    let in_cgroups = crate::tasker::contain::kill_dead_cgroups(root);
    let Some(groups) = super::registry::read(&root.taskers_registry()) else {
        return scan_for_orphans(root) + in_cgroups.unwrap_or(0);
    };
    let mut killed = in_cgroups.unwrap_or(0);
    // Escapees of a tasker that ran are in no group the registry names.
    let mut unsure = in_cgroups.is_none() && !groups.is_empty();
    for entry in groups {
        let super::registry::Entry::Group(pgid) = entry else {
            // The engine died while spawning: that tasker is named nowhere.
            unsure = true;
            continue;
        };
        match recorded_group(&want_root, pgid) {
            Group::Ours(id) => {
                let pg = nix::unistd::Pid::from_raw(pgid);
                if nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL).is_ok() {
                    killed += 1;
                    tracing::warn!(
                        "killed the orphan tasker of task {} (process group {pgid}) left by an engine that died",
                        id.as_deref().unwrap_or("?")
                    );
                }
            }
            Group::Gone => {}
            Group::Unknown => unsure = true,
        }
    }
    if unsure {
        killed += scan_for_orphans(root);
    }
    if killed > 0 {
        tracing::warn!("killed {killed} tasker processes left by an engine that died");
    }
    killed
}

/// `SPOOLFLOW_ROOT=<root>`, as it appears in a tasker's environment.
fn root_var(root: &Root) -> Vec<u8> {
    crate::tasker::contain::root_var(root.dir())
}

/// Whether a process environment (`/proc/<pid>/environ`) is a tasker's of
/// this root: it carries the root's `SPOOLFLOW_ROOT` and a
/// `SPOOLFLOW_EXID` (only taskers and what they start have both).
fn is_tasker_env(env: &[u8], want_root: &[u8]) -> bool {
    let mut has_root = false;
    let mut has_exid = false;
    for var in env.split(|b| *b == 0) {
        has_root |= var == want_root;
        has_exid |= var.starts_with(b"SPOOLFLOW_EXID=");
    }
    has_root && has_exid
}

/// The value of one variable (`NAME=`) of a process environment.
fn env_var(env: &[u8], name: &[u8]) -> Option<String> {
    env.split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(name))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// What a process group named in the registry is now.
#[derive(Debug, PartialEq, Eq)]
enum Group {
    /// Its leader runs and is a tasker of this root (of this task id).
    Ours(Option<String>),
    /// No such group, or its id now belongs to a process of another group
    /// (a pid is never reused while a group of that id exists).
    Gone,
    /// The group exists but its leader is gone, or does not show a
    /// tasker's environment: only a scan can tell.
    Unknown,
}

fn recorded_group(want_root: &[u8], pgid: i32) -> Group {
    use nix::unistd::{getpgid, Pid};
    let pid = Pid::from_raw(pgid);
    match std::fs::read(format!("/proc/{pgid}/environ")) {
        // The leader of a group of that id: ours by its environment; one
        // whose environment says otherwise (emptied by an exec, or a zombie
        // not reaped) cannot be told apart from a stranger without a scan.
        Ok(env) if getpgid(Some(pid)) == Ok(pid) => {
            if is_tasker_env(&env, want_root) {
                Group::Ours(env_var(&env, b"SPOOLFLOW_ID="))
            } else {
                Group::Unknown
            }
        }
        // The pid now belongs to a process of another group: a group of
        // that id can no longer exist.
        Ok(_) => Group::Gone,
        Err(_) => match nix::sys::signal::killpg(pid, None) {
            Err(nix::errno::Errno::ESRCH) => Group::Gone,
            _ => Group::Unknown,
        },
    }
}

/// The fallback of [`kill_orphans`]: kills every process whose environment
/// is a tasker's of this root, and every member of their process groups
/// (which catches a child that cleared its environment).
pub fn scan_for_orphans(root: &Root) -> usize {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::{getpgrp, Pid};
    let want_root = root_var(root);
    let me = std::process::id();
    let my_group = getpgrp();
    let mut matched = 0;
    let mut groups = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if is_tasker_env(&env, &want_root) {
            let id = env_var(&env, b"SPOOLFLOW_ID=");
            tracing::warn!(
                "killed the orphan tasker of task {} (pid {pid}) left by an engine that died",
                id.as_deref().unwrap_or("?")
            );
            let pid = Pid::from_raw(pid as i32);
            if let Ok(pgid) = nix::unistd::getpgid(Some(pid)) {
                groups.insert(pgid);
            }
            if kill(pid, Signal::SIGKILL).is_ok() {
                matched += 1;
            }
        }
    }
    for pgid in groups {
        if pgid != my_group && pgid.as_raw() > 1 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
    matched
}

/// Removes the temporaries a crash may leave (`.*.tmp` in spool
/// directories) and the taskers' points files, and puts back what a claim
/// had moved aside in `in/`.
pub fn clean_temporaries(root: &Root) {
    for dir in [root.run(), root.done(), root.failed(), root.rejected()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // What a claim's removal of its original moved aside, should the
    // engine have died in between (see `spool::remove_if_same`).
    let spool_in = root.spool_in();
    crate::store::spool::put_back_asides(&spool_in);
    for e in std::fs::read_dir(&spool_in).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            crate::store::spool::put_back_asides(&e.path());
        }
    }
    let points = root.points_dir();
    let _ = std::fs::remove_dir_all(&points);
    let _ = std::fs::create_dir_all(&points);
}

/// Reads `run/`: each task, with its attempts and offers rebuilt from its
/// points log (its domain and taskee shared through `names`). A `run/`
/// file whose task already has a record is removed.
pub(super) fn scan_run(
    root: &Root,
    input_limit: u64,
    names: &mut Names,
) -> Result<Found, RecoveryError> {
    let run = root.run();
    let mut found = Found::default();
    let mut record_dirs = BTreeSet::new();
    let entries = std::fs::read_dir(&run).map_err(|source| RecoveryError::Read {
        path: run.clone(),
        source,
    })?;
    // Looked at as listed (no list of every path held at once): the tasks
    // are sorted below, the rest does not depend on the order.
    for path in entries.flatten().map(|e| e.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            found.bad.push((path, "name is not valid UTF-8".into()));
            continue;
        };
        if crate::store::intake::is_ignored_name(&name) {
            continue;
        }
        if let Some(stem) = name.strip_suffix(".journal") {
            // A flow's journal is read with its task file; one whose task
            // file is gone (its record was written) is left over.
            if !run.join(format!("{stem}.json")).exists() {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some(id) = name
            .strip_suffix(".json")
            .and_then(|s| s.parse::<TaskId>().ok())
        else {
            found
                .bad
                .push((path, format!("{name} in run/ is not <task id>.json")));
            continue;
        };
        let record_path = [root.done_file(&id), root.failed_file(&id)]
            .into_iter()
            .find(|p| p.exists());
        if let Some(record_path) = record_path {
            // The engine died once the record was written: add the final
            // point if it did not make it to the log; the run/ file goes
            // once the record's directory is durable (below).
            add_missing_final_point(root, &record_path)?;
            if let Some(dir) = record_path.parent() {
                record_dirs.insert(dir.to_path_buf());
            }
            found.finished.push(id);
            continue;
        }
        match read_task(&path, &id, input_limit) {
            Ok((task, progress)) => found.tasks.push(recovered(root, task, progress, names)),
            Err(reason) => found.bad.push((path, reason)),
        }
    }
    // Queued again in submission order (as in/ is taken), not name order.
    found
        .tasks
        .sort_by(|a, b| (a.created_at, a.id()).cmp(&(b.created_at, b.id())));
    found.bad.sort();
    found.finished.sort();
    finish_recorded(root, &found.finished, &record_dirs)?;
    Ok(found)
}

/// Removes the `run/` files (and flow journals) of tasks whose record was
/// found, once the records' directories are durable: a record seen in the
/// page cache may be one the engine died before making durable, and a
/// power loss must not keep the removal and lose the record.
fn finish_recorded(
    root: &Root,
    finished: &[TaskId],
    record_dirs: &BTreeSet<PathBuf>,
) -> Result<(), RecoveryError> {
    for dir in record_dirs {
        crate::store::spool::fsync_dir(dir)?;
    }
    for id in finished {
        let _ = std::fs::remove_file(root.run_file(id));
        let _ = std::fs::remove_file(root.journal_file(id));
    }
    if !finished.is_empty() {
        crate::store::spool::fsync_dir(&root.run())?;
    }
    Ok(())
}

/// A task read from `run/`, with its past from its points log: a flow
/// whole, a standalone task as its node.
fn recovered(root: &Root, task: Task, progress: Option<Value>, names: &mut Names) -> Recovered {
    let history = history_of(&root.points_log(&task.exid), &task);
    let task = if task.flow.is_some() {
        RunTask::Flow(Box::new((task, progress)))
    } else {
        let mut node = Node::new(NodeTask::on_disk(task));
        names.share(&mut node.task);
        history.restore(&mut node);
        RunTask::Standalone(Box::new(node))
    };
    Recovered {
        created_at: history.created_at,
        submitted_at: history.submitted_at,
        attempts: history.attempts,
        open_run: history.open_run(),
        task,
    }
}

/// Appends a task's final point, built from its record, unless its log
/// already ends the task.
fn add_missing_final_point(
    root: &Root,
    record_path: &Path,
) -> Result<(), crate::store::spool::SpoolError> {
    use crate::store::spool::{fault, Op, SpoolError};
    let Ok(bytes) = std::fs::read(record_path) else {
        return Ok(());
    };
    let Ok(record) = serde_json::from_slice::<crate::model::task::Record>(&bytes) else {
        return Ok(());
    };
    let log = root.points_log(&record.exid);
    let points = crate::store::points::read_points(&log).unwrap_or_default();
    let last = points
        .iter()
        .rev()
        .find(|p| p.id == record.id && p.nid == record.nid);
    if last.is_some_and(|p| Kind::is_final_name(&p.point)) {
        return Ok(());
    }
    let line = point::Point::final_of(&record).to_line();
    let appended = fault::inject(Op::Write, &log, None)
        .and_then(|()| crate::store::points::append_line(&log, &line))
        .map_err(|source| SpoolError::Write { path: log, source });
    match appended {
        // The disk failed: the start stops, the run/ file kept for the
        // next one to append the point.
        Err(e) if e.is_fatal() => Err(e),
        Err(e) => {
            tracing::error!("{e}");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// A task in `run/`, and a flow's progress (the `progress` key the engine
/// adds to a flow's file).
/// The largest `run/` file of a flow read back at a start. A flow's file
/// holds its progress, with the input of each node that runs or waits,
/// so it can outgrow the largest input many times over; the engine that
/// wrote it held all of it in memory. The bound keeps a foreign file put
/// there from taking more than that.
pub const FLOW_RUN_FILE_LIMIT: u64 = 1 << 30;

/// Reads a task back from `run/` with its progress if it is a flow: at
/// most `limit` bytes, or [`FLOW_RUN_FILE_LIMIT`] for a flow.
fn read_task(path: &Path, id: &TaskId, limit: u64) -> Result<(Task, Option<Value>), String> {
    use crate::store::spool::{read_capped, SpoolError};
    let (bytes, oversized) = match read_capped(path, limit) {
        Ok(bytes) => (bytes, None),
        Err(e @ SpoolError::TooLarge { .. }) => {
            let most = FLOW_RUN_FILE_LIMIT.max(limit);
            let bytes = read_capped(path, most).map_err(|e| e.to_string())?;
            (bytes, Some(e.to_string()))
        }
        Err(e) => return Err(e.to_string()),
    };
    let (task, progress) = parse_task(&bytes, id)?;
    match oversized {
        // Only a flow's file may outgrow the largest input.
        Some(too_large) if task.flow.is_none() => Err(too_large),
        _ => Ok((task, progress)),
    }
}

/// A `run/` file's task, and its progress if it has one.
fn parse_task(bytes: &[u8], id: &TaskId) -> Result<(Task, Option<Value>), String> {
    let invalid = |e: String| format!("task in run/ is invalid: {e}");
    let mut obj = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err(invalid("not a JSON object".into())),
        Err(e) => return Err(invalid(e.to_string())),
    };
    let progress = obj.remove("progress");
    let file = TaskFile::from_object(obj).map_err(|e| invalid(e.to_string()))?;
    let task = Task::from_file(file, Some(id.as_str()), None).map_err(|e| e.to_string())?;
    if &task.id != id {
        return Err(format!("run/{id}.json holds task id {}", task.id));
    }
    Ok((task, progress))
}

impl super::Engine {
    /// Rebuilds the executions found in `run/` (SPEC 10): each is logged
    /// `recovered` and queued again as a new attempt, with its attempts,
    /// offers, retries, refusals and row of `uncompleted` replies as its
    /// points log tells them.
    pub(super) fn recover(&mut self) -> Result<(), super::EngineError> {
        // A run/ file may hold more than the largest input: an
        // `uncompleted` reply's payload rewrites it (see `body::limit`).
        let limit = super::body::limit(self.options.input_limit);
        let found = scan_run(&self.root, limit, &mut self.names)?;
        let mut replied = super::replies::read(&self.root);
        // What the cluster says of this user's jobs, asked once if needed.
        let mut jobs = super::reattach::Jobs::default();
        for id in &found.finished {
            tracing::info!("run/{id}.json had a final record already; removed");
        }
        for (path, reason) in found.bad {
            self.reject(&path, &reason);
        }
        for r in found.tasks {
            let created_at = r.created_at.unwrap_or_else(Utc::now);
            let node = match r.task {
                RunTask::Standalone(node) => node,
                RunTask::Flow(flow) => {
                    let (task, progress) = *flow;
                    let exid = task.exid.clone();
                    self.recover_flow(task, progress, created_at, &mut replied);
                    if let Some(exec) = self.executions.get_mut(&exid) {
                        exec.submitted_at = r.submitted_at;
                    }
                    continue;
                }
            };
            let k = key(&node.task.id, &node.task.nid);
            let mut exec = Execution::standalone(created_at);
            exec.submitted_at = r.submitted_at;
            let life = crate::model::task::timestamp(created_at);
            let reply = replied
                .remove(&(k.exid.clone(), k.nid.clone()))
                .filter(|replied| replied.ended(r.attempts, &life));
            match reply {
                Some(replied) => {
                    self.replies.hold(&k.exid, replied.gen);
                    self.complete_replied(node, exec, replied.payload)
                }
                None => match r
                    .open_run
                    .and_then(|o| Some((o, self.slurm_job_of(&k, o, &mut jobs)?)))
                {
                    Some((open, found)) => self.reattach(node, exec, open, found),
                    None => self.requeue(node, exec),
                },
            }
        }
        // An old journal file none of whose replies completed a task goes.
        self.replies.tidy();
        Ok(())
    }

    /// A standalone task found in `run/`: logged `recovered` and queued
    /// again as a new attempt (its node's past is restored already).
    fn requeue(&mut self, node: Box<Node>, exec: Execution) {
        let k = key(&node.task.id, &node.task.nid);
        let mut p = self
            .point(&k, Kind::Recovered)
            .with("attempt", node.attempt);
        p.id = node.task.id.clone();
        self.log_idle(p);
        tracing::info!(
            "recovered task {} from run/ (attempt {} next)",
            node.task.id,
            node.attempt
        );
        self.insert_execution(k.exid, exec, node);
    }

    /// A task whose last tasker replied (the replies journal says so) but
    /// whose record the crash cut short: completed with that reply, not
    /// run again.
    fn complete_replied(&mut self, mut node: Box<Node>, exec: Execution, payload: Object) {
        let k = key(&node.task.id, &node.task.nid);
        tracing::info!(
            "task {}: its tasker had replied before the engine stopped; completed from the replies journal",
            node.task.id
        );
        // The record's headers are the run/ file's; its payload the reply's.
        let limit = super::body::limit(self.options.input_limit);
        let headers = match super::body::read(&self.root, &node.task.id, limit) {
            Ok(b) => b.headers,
            Err(e) => {
                tracing::warn!(
                    "task {}: its record goes without headers: {e}",
                    node.task.id
                );
                Object::new()
            }
        };
        // The attempt that replied is the last one, and it completed.
        node.attempt = node.starts;
        node.reopen_last_attempt();
        self.insert_execution(k.exid.clone(), exec, node);
        // Set once queued (queueing leaves a body to run/).
        if let Some(node) = self.node_mut(&k) {
            node.task.body = Body::Loaded(Box::new(Loaded { payload, headers }));
        }
        self.finish(&k, crate::model::task::State::Completed, None);
    }

    /// Whether `path`, found at start-up with the id of a task in `run/`,
    /// is that task's own original: a claim that writes the task into
    /// `run/` removes the original once the copy is durable, and the
    /// engine died in between. The copy then holds exactly what the claim
    /// wrote (a later rewrite or progress comes after the removal), and
    /// the original is older than the copy (the same file dropped again
    /// later is a duplicate, rejected). The original is removed, the claim
    /// finished.
    pub(super) fn claim_cut_short(
        &mut self,
        path: &Path,
        task: &Task,
        ident: crate::store::writer::Ident,
    ) -> bool {
        let written = task.to_file_json().to_string().into_bytes();
        let run_file = self.root.run_file(&task.id);
        let modified = |p: &Path| std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
        let older = matches!((modified(path), modified(&run_file)), (Some(a), Some(b)) if a <= b);
        let limit = written.len() as u64 + 1;
        if !older
            || !crate::store::spool::read_capped(&run_file, limit).is_ok_and(|copy| copy == written)
        {
            return false;
        }
        // The copy may be one the dead engine never made durable: run/ is
        // fsynced before the original goes (a failure stops the engine,
        // the original kept).
        if let Err(e) = crate::store::spool::fsync_dir(&self.root.run()) {
            self.note_fatal(e);
            return true;
        }
        tracing::info!(
            "{}: its claim into run/ was cut short by the engine's end; removed (the task is in run/)",
            path.display()
        );
        // Removed only if still the file examined (a drop meanwhile stays).
        if let Err(e) = crate::store::spool::remove_if_same(path, Some(ident), || {}) {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        true
    }
}
