//! The engine: one async task that owns every piece of state (the nodes,
//! the scheduler, the running taskers) and reacts, in one `select!` loop,
//! to watcher events, tasker exits, committed records, timers and stop
//! signals. Everything it decides comes from `scheduler`; everything it
//! touches on disk goes through `spool`, `points` and `commit`.
//!
//! A task's life here: claimed from `in/` → `created` → queued → offered
//! (taskmaster) → allocated (tasker resolved, worker slot and limits
//! taken) → started → exit → completed / failed / refused / uncompleted /
//! retried → record committed → final point.

pub mod recovery;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::layout::{Root, RootError};
use crate::model::names::{TaskId, Taskee};
use crate::model::point::{Kind, Point};
use crate::model::task::{timestamp, ErrorKind, Object, Record, Refusal, State, Task, TaskError};
use crate::scheduler::{backoff, Entry, LimitKey, NodeKey, Scheduler, TimerId};
use crate::store::intake::{self, Intake};
use crate::store::points::PointsLog;
use crate::store::spool::{self, SpoolError};
use crate::store::writer::{CommitJob, Committed, Committer};
use crate::tasker::{self, Exit, Input, Launch, Reply, StopReason, TaskerConfig, Taskers};
use crate::taskmaster::{Choice, TaskmasterInput, Taskmasters};
use crate::watch::{self, WatchEvent};
use recovery::RecoveryError;

/// The default limit on a task file's size (SPEC 10).
pub const INPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Refusals after which a task fails `refused` (SPEC 7).
const MAX_REFUSALS: usize = 10;
/// `uncompleted` replies in a row after which a task fails (SPEC 7).
const MAX_UNCOMPLETED: u32 = 100;
/// Default `retries` (SPEC 7).
const DEFAULT_RETRIES: u32 = 3;
/// The slow safety-net rescan of the spool (DESIGN: "about every 30 s").
const SAFETY_RESCAN: Duration = Duration::from_secs(30);
/// How old a file must be for a scan (not an event) to take it once the
/// engine runs.
const SETTLE: Duration = Duration::from_secs(2);
/// The longest cancel request read.
const CANCEL_LIMIT: u64 = 64 * 1024;

/// How to run the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Taskers running at once.
    pub workers: usize,
    /// Exit once `in/` and `run/` are empty.
    pub drain: bool,
    /// On SIGINT/SIGTERM, how long running taskers may go on.
    pub grace: Duration,
    /// Between SIGTERM and SIGKILL of a tasker's group.
    pub kill_grace: Duration,
    /// The largest task file accepted.
    pub input_limit: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            drain: false,
            grace: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
            input_limit: INPUT_LIMIT,
        }
    }
}

/// Why the engine could not run or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Root(#[from] RootError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Why the running engine should stop (sent by the CLI's signal handler
/// or by tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGINT/SIGTERM: finish within the grace, leave the rest in `run/`.
    Graceful,
}

/// Runs the engine on a current-thread runtime until it drains (with
/// `drain`) or a stop request arrives on `stop`.
pub fn run_blocking(
    root: Root,
    options: Options,
    stop: Option<UnboundedReceiver<StopRequest>>,
) -> Result<(), EngineError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(EngineError::Runtime)?;
    rt.block_on(run(root, options, stop))
}

/// Runs the engine (inside a tokio runtime).
pub async fn run(
    root: Root,
    options: Options,
    stop: Option<UnboundedReceiver<StopRequest>>,
) -> Result<(), EngineError> {
    root.ensure_exists()?;
    let _lock = recovery::lock(&root)?;
    let killed = recovery::kill_orphans(&root);
    if killed > 0 {
        tracing::warn!("killed {killed} tasker processes left by an engine that died");
    }
    recovery::clean_temporaries(&root);
    tasker::close_inherited_descriptors();
    let points_dir = recovery::points_dir(&root);

    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let _watcher = watch::start(&root, &points_dir, watch_tx)?;
    let tsk_watch = watch::TskWatch::new(&root.tsk())?;
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    let (commit_tx, commit_rx) = mpsc::unbounded_channel();
    let committer = Committer::start(commit_tx, root.spool().join(".spare"));

    let mut engine = Engine {
        sched: Scheduler::new(options.workers),
        // Handles stay open only while a task is offered or runs (see
        // `log_idle`): open descriptors are copied into every spawn.
        points: PointsLog::new(root.log_tsk(), options.workers + 8),
        taskmasters: Taskmasters::new(root.dir()),
        taskers: Taskers::new(root.tsk()),
        nodes: HashMap::new(),
        points_files: HashMap::new(),
        committing: 0,
        next_gen: 0,
        exit_tx,
        committer,
        stopping: None,
        pending_cancels: HashMap::new(),
        points_dir,
        env_base: base_env(),
        tsk_watch,
        fatal: None,
        running: false,
        options,
        root,
    };
    // tsk_watch reports changes under tsk/: lookups may be cached.
    engine.taskmasters.set_watched(true);
    engine.taskers.set_watched(true);
    engine.recover()?;
    engine.scan_in();
    engine.scan_cancel();
    engine.running = true;
    let result = engine.event_loop(watch_rx, exit_rx, commit_rx, stop).await;
    let Engine { committer, .. } = engine;
    committer.finish();
    result
}

/// A timer event.
#[derive(Debug)]
enum Timer {
    /// A delayed node (backoff, `uncompleted` with `after`) is due.
    Ready(NodeKey, u64),
    /// A node's `start_timeout` is due.
    StartTimeout(NodeKey),
}

/// A stop in progress (SIGINT/SIGTERM): no new claims or starts.
#[derive(Debug, Clone, Copy)]
struct Stopping {
    /// When running taskers are asked to stop; `None` once they were.
    grace_end: Option<tokio::time::Instant>,
}

/// What the spawning threads and the taskers' drivers report.
enum TaskerMsg {
    /// The tasker runs (it was spawned off the event loop).
    Started {
        key: NodeKey,
        gen: u64,
        pgid: i32,
        stop: oneshot::Sender<StopReason>,
    },
    /// The tasker exited, or could not be spawned.
    Exited { key: NodeKey, gen: u64, exit: Exit },
}

enum Phase {
    /// In the ready queue (or parked on a limit).
    Queued,
    /// Waiting for a timer (backoff, `after`).
    Delayed,
    /// A tasker runs it.
    Running(Box<Running>),
    /// Its record is being committed.
    Committing,
}

struct Running {
    stop: Option<oneshot::Sender<StopReason>>,
    limits: Vec<(LimitKey, u32)>,
    points_file: PathBuf,
    points_offset: u64,
    stopping_for: Option<StopReason>,
    taskee: Taskee,
    tasker_path: String,
    /// The `started` point is logged (the tasker's own points come after).
    started: bool,
}

/// A node the engine knows: a standalone task (flows add more per exid).
struct Node {
    task: Task,
    /// Bumped whenever the node is queued again, so stale heap entries and
    /// timers are recognised and dropped.
    gen: u64,
    /// The `start_timeout` timer, removed once the node starts or ends (so
    /// timers do not pile up with throughput).
    start_timer: Option<TimerId>,
    phase: Phase,
    attempt: u32,
    offers: u32,
    refusals: Vec<Refusal>,
    uncompleted: u32,
    retries_done: u32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ever_started: bool,
    taskee: Option<Taskee>,
    tasker_path: Option<String>,
    config: Option<Arc<TaskerConfig>>,
    suspended: bool,
    cancel_reason: Option<String>,
}

struct Engine {
    root: Root,
    options: Options,
    sched: Scheduler<(NodeKey, u64), Timer>,
    points: PointsLog,
    taskmasters: Taskmasters,
    taskers: Taskers,
    nodes: HashMap<NodeKey, Node>,
    /// `$SPOOLFLOW_POINTS` path → the node it belongs to.
    points_files: HashMap<PathBuf, NodeKey>,
    committing: usize,
    next_gen: u64,
    exit_tx: UnboundedSender<TaskerMsg>,
    committer: Committer,
    /// Set once a stop was asked.
    stopping: Option<Stopping>,
    /// Cancel requests for ids not seen yet: id → (request path, reason).
    pending_cancels: HashMap<TaskId, (PathBuf, String)>,
    points_dir: PathBuf,
    env_base: Vec<(String, OsString)>,
    /// Changes under `tsk/`, which spoil cached lookups.
    tsk_watch: watch::TskWatch,
    /// An fsync failed: the page cache can no longer be trusted, so the
    /// engine stops (at the top of its loop).
    fatal: Option<SpoolError>,
    /// Start-up is over: scans leave young files to their events.
    running: bool,
}

/// `PATH`, `HOME`, `LANG`, `TZ` from the engine's environment (SPEC 6).
fn base_env() -> Vec<(String, OsString)> {
    ["PATH", "HOME", "LANG", "TZ"]
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (k.to_string(), v)))
        .collect()
}

fn root_key(id: &TaskId) -> NodeKey {
    NodeKey {
        exid: id.clone(),
        nid: crate::model::names::Nid::root(),
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn recv_stop(stop: &mut Option<UnboundedReceiver<StopRequest>>) -> Option<StopRequest> {
    match stop {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    // ------------------------------------------------------------ loop

    async fn event_loop(
        &mut self,
        mut watch_rx: UnboundedReceiver<WatchEvent>,
        mut exit_rx: UnboundedReceiver<TaskerMsg>,
        mut commit_rx: UnboundedReceiver<Vec<Committed>>,
        mut stop: Option<UnboundedReceiver<StopRequest>>,
    ) -> Result<(), EngineError> {
        let mut safety = tokio::time::interval(SAFETY_RESCAN);
        safety.tick().await;
        let mut stop_open = stop.is_some();
        // With --drain: when in/ still holds something after a scan (an
        // entry that cannot be moved, say), look again a second later
        // rather than spin.
        let mut drain_recheck: Option<tokio::time::Instant> = None;
        loop {
            if let Some(e) = self.fatal.take() {
                tracing::error!("{e}; stopping");
                return Err(EngineError::Spool(e));
            }
            self.dispatch();
            if self.stopping.is_some() && self.nothing_running() {
                // Queued and delayed tasks stay in run/ for the next start.
                return Ok(());
            }
            let due = drain_recheck.is_none_or(|t| t <= tokio::time::Instant::now());
            if self.is_idle() && self.options.drain && watch_rx.is_empty() && due {
                drain_recheck = None;
                if self.in_is_empty() {
                    return Ok(());
                }
                // Something is in in/ that no event announced (yet).
                self.scan_in();
                if self.is_idle() && self.in_is_empty() {
                    return Ok(());
                }
                if self.is_idle() {
                    drain_recheck = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                continue;
            }
            let next_timer = self.sched.next_due().map(tokio::time::Instant::from_std);
            let grace_end = self.stopping.and_then(|s| s.grace_end);
            tokio::select! {
                biased;
                Some(batch) = commit_rx.recv() => self.on_committed(batch)?,
                Some(msg) = exit_rx.recv() => match msg {
                    TaskerMsg::Started { key, gen, pgid, stop } => self.on_started(key, gen, pgid, stop),
                    TaskerMsg::Exited { key, gen, exit } => self.on_exit(key, gen, exit),
                },
                Some(ev) = watch_rx.recv() => self.on_watch(ev)?,
                _ = sleep_until(next_timer), if next_timer.is_some() => self.on_timers(),
                req = recv_stop(&mut stop), if stop_open => match req {
                    Some(StopRequest::Graceful) => self.begin_stop(),
                    None => stop_open = false,
                },
                _ = sleep_until(grace_end), if grace_end.is_some() => self.end_grace(),
                _ = sleep_until(drain_recheck), if drain_recheck.is_some() => {}
                _ = safety.tick() => {
                    if self.stopping.is_none() {
                        self.scan_in();
                        self.scan_cancel();
                    }
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.nodes.is_empty() && self.committing == 0
    }

    /// Whether no tasker runs and no record is being committed (what a
    /// stop waits for; O(nodes), looked at only while stopping).
    fn nothing_running(&self) -> bool {
        self.committing == 0
            && !self
                .nodes
                .values()
                .any(|n| matches!(n.phase, Phase::Running(_) | Phase::Committing))
    }

    fn in_is_empty(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(self.root.spool_in()) else {
            return true;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if intake::is_ignored_name(&name) {
                continue;
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && name.parse::<crate::model::names::Domain>().is_ok()
            {
                let has_any = std::fs::read_dir(e.path())
                    .map(|d| {
                        d.flatten()
                            .any(|f| !intake::is_ignored_name(&f.file_name().to_string_lossy()))
                    })
                    .unwrap_or(false);
                if has_any {
                    return false;
                }
                continue;
            }
            return false;
        }
        true
    }

    // ------------------------------------------------------------ points

    fn point(&mut self, key: &NodeKey, point: Kind) -> Point {
        let id = self
            .nodes
            .get(key)
            .map(|n| n.task.id.clone())
            .unwrap_or_else(|| key.exid.clone());
        Point::new(point, &id, &key.exid, &key.nid)
    }

    /// Logs a point after which the task waits (queued, parked, delayed):
    /// its log's handle is closed, so that only running tasks hold one.
    fn log_idle(&mut self, p: Point) {
        let exid = p.exid.clone();
        self.log(p);
        self.points.close(&exid);
    }

    /// Remembers an fsync failure: the loop stops the engine.
    fn note_fatal(&mut self, e: SpoolError) {
        if e.is_fatal() && self.fatal.is_none() {
            self.fatal = Some(e);
        }
    }

    fn log(&mut self, p: Point) {
        if let Err(e) = self.points.append(&p) {
            tracing::error!(
                "cannot append to {}: {e}",
                self.root.points_log(&p.exid).display()
            );
        }
    }

    // ------------------------------------------------------------ intake

    /// Takes everything in `in/` (at start-up, after a watcher overflow,
    /// and as the slow safety net), in name order.
    fn scan_in(&mut self) {
        if self.stopping.is_none() {
            self.scan_dir(&self.root.spool_in());
        }
    }

    /// Takes every entry of one directory of `in/`, in name order. Once
    /// the engine runs, a regular file modified in the last moments is
    /// left for its watcher event: it may still be being written in place
    /// (SPEC 3: taken once its writer has closed it). At start-up files are
    /// taken as they are.
    fn scan_dir(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        let now = std::time::SystemTime::now();
        for p in paths {
            if self.running {
                let young = std::fs::symlink_metadata(&p).is_ok_and(|m| {
                    m.is_file()
                        && m.modified()
                            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < SETTLE)
                });
                if young {
                    continue;
                }
            }
            self.take(&p);
        }
    }

    /// Looks at one path under `in/` and claims, rejects or ignores it.
    fn take(&mut self, path: &Path) {
        match intake::examine(&self.root, path, self.options.input_limit) {
            Intake::Ignore => {}
            Intake::Reject { path, reason } => self.reject(&path, &reason),
            Intake::DomainDir(dir) => self.scan_dir(&dir),
            Intake::Task {
                path,
                task,
                self_contained,
            } => self.claim(&path, *task, self_contained),
        }
    }

    fn reject(&mut self, path: &Path, reason: &str) {
        match spool::reject(path, &self.root.rejected(), reason) {
            Ok(to) => tracing::info!(
                "rejected {}: {reason} (now {})",
                self.root.relative(path).display(),
                self.root.relative(&to).display()
            ),
            Err(e) => {
                tracing::error!("cannot reject {}: {e}", path.display());
                self.note_fatal(e);
            }
        }
    }

    fn is_known(&self, id: &TaskId) -> bool {
        // A file in run/ is caught by the no-replace claim.
        self.nodes.contains_key(&root_key(id))
            || self.root.done_file(id).exists()
            || self.root.failed_file(id).exists()
    }

    fn claim(&mut self, path: &Path, task: Task, self_contained: bool) {
        if self.is_known(&task.id) {
            return self.reject(path, &format!("duplicate id {}", task.id));
        }
        let run_file = self.root.run_file(&task.id);
        let claimed = if self_contained {
            spool::rename_no_replace(path, &run_file)
        } else {
            // The file does not name its domain: write the completed task
            // into run/ durably, then remove the original.
            let bytes = task.to_file_json().to_string();
            spool::write_atomic(
                &self.root.run(),
                &format!("{}.json", task.id),
                bytes.as_bytes(),
                true,
                true,
            )
            .and_then(|_| {
                std::fs::remove_file(path).map_err(|source| SpoolError::Write {
                    path: path.to_path_buf(),
                    source,
                })
            })
        };
        match claimed {
            Ok(()) => {}
            Err(SpoolError::Exists(_)) => {
                return self.reject(path, &format!("duplicate id {}", task.id))
            }
            Err(e) => {
                tracing::error!("cannot claim {}: {e}", path.display());
                self.note_fatal(e);
                return;
            }
        }
        let key = root_key(&task.id);
        let mut p = self
            .point(&key, Kind::Created)
            .with("domain", task.domain.as_str())
            .with("priority", task.priority);
        p.id = task.id.clone();
        if let Some(t) = &task.tasker {
            p = p.with("tasker", t.as_str());
        }
        self.log_idle(p);
        let created_at = Utc::now();
        self.insert_node(task, created_at, 0, 0);
        if let Some((req, reason)) = self.pending_cancels.remove(&key.exid) {
            self.cancel(&key.exid, &reason, &req);
        }
    }

    fn insert_node(&mut self, task: Task, created_at: DateTime<Utc>, attempts: u32, offers: u32) {
        let key = root_key(&task.id);
        let start_timer = task.options.start_timeout.map(|st| {
            let elapsed = (Utc::now() - created_at).to_std().unwrap_or_default();
            let due = Instant::now() + st.0.saturating_sub(elapsed);
            self.sched.at(due, Timer::StartTimeout(key.clone()))
        });
        let node = Node {
            start_timer,
            task,
            gen: 0,
            phase: Phase::Queued,
            attempt: attempts + 1,
            offers,
            refusals: Vec::new(),
            uncompleted: 0,
            retries_done: 0,
            created_at,
            started_at: None,
            ever_started: false,
            taskee: None,
            tasker_path: None,
            config: None,
            suspended: false,
            cancel_reason: None,
        };
        self.nodes.insert(key.clone(), node);
        self.enqueue(&key);
    }

    /// Puts a node in the ready queue under a new generation.
    fn enqueue(&mut self, key: &NodeKey) {
        self.next_gen += 1;
        let gen = self.next_gen;
        if let Some(node) = self.nodes.get_mut(key) {
            node.gen = gen;
            node.phase = Phase::Queued;
            self.sched.push(node.task.priority, (key.clone(), gen));
        }
    }

    /// Queues a node again after `delay`.
    fn enqueue_after(&mut self, key: &NodeKey, delay: Duration) {
        if delay.is_zero() {
            return self.enqueue(key);
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        if let Some(node) = self.nodes.get_mut(key) {
            node.gen = gen;
            node.phase = Phase::Delayed;
            self.sched
                .at(Instant::now() + delay, Timer::Ready(key.clone(), gen));
        }
    }

    fn recover(&mut self) -> Result<(), EngineError> {
        let found = recovery::scan_run(&self.root, self.options.input_limit)?;
        for id in &found.finished {
            tracing::info!("run/{id}.json had a final record already; removed");
        }
        for (path, reason) in found.bad {
            self.reject(&path, &reason);
        }
        for r in found.tasks {
            let key = root_key(&r.task.id);
            let mut p = self
                .point(&key, Kind::Recovered)
                .with("attempt", r.attempts + 1);
            p.id = r.task.id.clone();
            self.log_idle(p);
            let created = r.created_at.unwrap_or_else(Utc::now);
            let id = r.task.id.clone();
            self.insert_node(r.task, created, r.attempts, r.offers);
            if let Some(node) = self.nodes.get_mut(&root_key(&id)) {
                node.retries_done = r.retries;
                node.ever_started = r.attempts > 0;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ watch

    fn on_watch(&mut self, ev: WatchEvent) -> Result<(), EngineError> {
        match ev {
            WatchEvent::Input(p) => {
                if self.stopping.is_none() {
                    self.take(&p)
                }
            }
            WatchEvent::Cancel(p) => self.take_cancel(&p),
            WatchEvent::Points(p) => {
                if let Some(key) = self.points_files.get(&p).cloned() {
                    self.copy_points(&key);
                }
            }
            WatchEvent::Rescan => {
                self.scan_in();
                self.scan_cancel();
            }
            WatchEvent::Error(e) => {
                tracing::error!("file watcher: {e}; rescanning the spool");
                self.scan_in();
            }
        }
        Ok(())
    }

    /// Copies the complete lines a tasker appended to its points file.
    fn copy_points(&mut self, key: &NodeKey) {
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        let Phase::Running(run) = &mut node.phase else {
            return;
        };
        if !run.started {
            // Copied once `started` is logged (see on_started).
            return;
        }
        let Ok(mut f) = File::open(&run.points_file) else {
            return;
        };
        if f.seek(SeekFrom::Start(run.points_offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        // Bound what one event reads; the rest comes with the next one.
        if f.take(1 << 20).read_to_end(&mut buf).is_err() {
            return;
        }
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            if buf.len() >= 1 << 20 {
                // A line longer than 1 MiB is no point: skip it.
                run.points_offset += buf.len() as u64;
            }
            return;
        };
        run.points_offset += end as u64 + 1;
        let (id, exid, nid) = (node.task.id.clone(), key.exid.clone(), key.nid.clone());
        let lines: Vec<Point> = buf[..end]
            .split(|b| *b == b'\n')
            .filter_map(|l| Point::informative(l, &id, &exid, &nid))
            .collect();
        for p in lines {
            self.log(p);
        }
    }

    // ------------------------------------------------------------ dispatch

    fn dispatch(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        while let Some(entry) = self.sched.pop() {
            let (key, gen) = entry.item.clone();
            let woken_by = entry.woken_by().cloned();
            let valid = self
                .nodes
                .get(&key)
                .is_some_and(|n| n.gen == gen && matches!(n.phase, Phase::Queued));
            if valid {
                self.offer(&key, entry);
            }
            // A unit this node was woken for and did not take goes on to
            // the next waiter.
            if let Some(limit) = woken_by {
                let nodes = &self.nodes;
                self.sched.wake_if_free(&limit, |item| is_live(nodes, item));
            }
        }
    }

    /// Asks the taskmaster, resolves the tasker, takes a worker slot and
    /// the limits, and starts the tasker.
    fn offer(&mut self, key: &NodeKey, entry: Entry<(NodeKey, u64)>) {
        if self.tsk_watch.changed() {
            self.taskmasters.invalidate();
            self.taskers.invalidate();
        }
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        let input = TaskmasterInput {
            id: &node.task.id,
            exid: &node.task.exid,
            nid: &node.task.nid,
            domain: &node.task.domain,
            tasker: node.task.tasker.as_ref(),
            attempt: node.attempt,
            offers: node.offers,
            headers: &node.task.headers,
            refusals: &node.refusals,
            payload: &node.task.payload,
        };
        let choice = self.taskmasters.choose(&input);
        node.offers += 1;
        let taskee = match choice {
            Ok(Choice::Taskee(t)) => t,
            Ok(Choice::Reject(reason)) => {
                return self.fail(
                    key,
                    TaskError::new(
                        ErrorKind::Config,
                        format!("rejected by the taskmaster: {reason}"),
                    ),
                );
            }
            Err(e) => return self.fail(key, TaskError::new(ErrorKind::Config, e.to_string())),
        };
        if let Some(r) = node.refusals.iter().find(|r| r.taskee == taskee) {
            let msg = format!("offered again to {taskee}, which refused it: {}", r.reason);
            return self.fail(key, TaskError::new(ErrorKind::Refused, msg));
        }
        let offers = node.offers;
        node.taskee = Some(taskee.clone());
        let p = self
            .point(key, Kind::Offered)
            .with("taskee", taskee.as_str())
            .with("offer", offers);
        self.log(p);

        let domain = self.nodes[key].task.domain.clone();
        let resolved = match self.taskers.resolve(&domain, &taskee) {
            Ok(r) => r,
            Err(e) => return self.fail(key, TaskError::new(ErrorKind::Config, e.to_string())),
        };
        let tasker_path = self.root.relative(&resolved.path).display().to_string();
        let limits = {
            let node = &self.nodes[key];
            limits_for(&tasker_path, &resolved.config, &node.task)
        };
        {
            let node = self.nodes.get_mut(key).expect("node checked above");
            node.tasker_path = Some(tasker_path.clone());
            node.config = Some(resolved.config.clone());
            // The tasker's start_timeout is known only now: if it has passed
            // already, the task fails; if not, a timer watches the rest.
            let tasker_start_timeout = resolved.config.start_timeout;
            if let (false, None, None, Some(st)) = (
                node.ever_started,
                node.task.options.start_timeout,
                node.start_timer,
                tasker_start_timeout,
            ) {
                let elapsed = (Utc::now() - node.created_at).to_std().unwrap_or_default();
                if elapsed >= st.0 {
                    let msg = format!("not started within start_timeout {st}");
                    return self.fail(key, TaskError::new(ErrorKind::Timeout, msg));
                }
                node.start_timer = Some(self.sched.at(
                    Instant::now() + (st.0 - elapsed),
                    Timer::StartTimeout(key.clone()),
                ));
            }
        }
        if let Err((full, limit)) = self.sched.try_start(&limits) {
            let node = self.nodes.get_mut(key).expect("node checked above");
            let first = !node.suspended;
            node.suspended = true;
            self.sched.park(entry, full.clone(), limit);
            if first {
                let reason = describe_limit(&full);
                let p = self.point(key, Kind::Suspended).with("reason", reason);
                self.log_idle(p);
            }
            return;
        }
        let attempt = self.nodes[key].attempt;
        let p = self
            .point(key, Kind::Allocated)
            .with("taskee", taskee.as_str())
            .with("tasker", tasker_path.as_str())
            .with("attempt", attempt);
        self.log(p);
        self.start(key, resolved, limits);
    }

    fn start(&mut self, key: &NodeKey, resolved: tasker::Resolved, limits: Vec<(LimitKey, u32)>) {
        let node = self
            .nodes
            .get_mut(key)
            .expect("start is called on a known node");
        let points_file = self
            .points_dir
            .join(format!("{}.{}.jsonl", key.exid, key.nid));
        let stdin = match resolved.config.input {
            Input::Payload => serde_json::to_vec(&node.task.payload),
            Input::Task => {
                let rec = record_of(node, State::Running, None, &node.task.payload);
                serde_json::to_vec(&rec)
            }
        }
        .expect("a JSON map serializes");
        let mut env = self.env_base.clone();
        for (k, v) in &resolved.config.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.into()));
        }
        let sf = |k: &str, v: &str| (k.to_string(), OsString::from(v));
        env.push((
            "SPOOLFLOW_ROOT".into(),
            self.root.dir().as_os_str().to_owned(),
        ));
        env.push(sf("SPOOLFLOW_ID", node.task.id.as_str()));
        env.push(sf("SPOOLFLOW_EXID", key.exid.as_str()));
        env.push(sf("SPOOLFLOW_NID", key.nid.as_str()));
        env.push(sf("SPOOLFLOW_DOMAIN", node.task.domain.as_str()));
        env.push(sf("SPOOLFLOW_TASKEE", resolved.taskee.as_str()));
        env.push(sf("SPOOLFLOW_ATTEMPT", &node.attempt.to_string()));
        env.push((
            "SPOOLFLOW_POINTS".into(),
            points_file.clone().into_os_string(),
        ));
        let timeout = node
            .task
            .options
            .timeout
            .or(resolved.config.timeout)
            .map(|d| d.0);
        let launch = Launch {
            argv: resolved.argv.clone(),
            dir: resolved.dir.clone(),
            env,
            stdin,
            stderr_path: self.root.stderr_log(&key.exid),
            stderr_prefix: node.task.id.to_string(),
            timeout,
            kill_grace: self.options.kill_grace,
        };
        // The node runs from now on (it holds its worker slot and limits);
        // `started` is logged once the process exists.
        node.suspended = false;
        node.phase = Phase::Running(Box::new(Running {
            stop: None,
            limits,
            points_file: points_file.clone(),
            points_offset: 0,
            stopping_for: None,
            taskee: resolved.taskee.clone(),
            tasker_path: self.root.relative(&resolved.path).display().to_string(),
            started: false,
        }));
        let gen = node.gen;
        self.points_files.insert(points_file, key.clone());
        // Spawning blocks until the child has exec'd (vfork): off the event
        // loop, so that other exits and starts go on meanwhile.
        let tx = self.exit_tx.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || match tasker::spawn(launch) {
            Ok((handle, driver)) => {
                // Sent before the driver exists, so it precedes `Exited`.
                let _ = tx.send(TaskerMsg::Started {
                    key: key.clone(),
                    gen,
                    pgid: handle.pgid,
                    stop: handle.stop,
                });
                tokio::spawn(async move {
                    let exit = driver.await;
                    let _ = tx.send(TaskerMsg::Exited { key, gen, exit });
                });
            }
            Err(exit) => {
                let _ = tx.send(TaskerMsg::Exited { key, gen, exit });
            }
        });
    }

    /// A tasker was spawned: log `started`, and pass on a stop asked for
    /// while it was being spawned.
    fn on_started(&mut self, key: NodeKey, gen: u64, pgid: i32, stop: oneshot::Sender<StopReason>) {
        let Some(node) = self.nodes.get_mut(&key).filter(|n| n.gen == gen) else {
            return;
        };
        let Phase::Running(run) = &mut node.phase else {
            return;
        };
        node.ever_started = true;
        node.started_at = Some(Utc::now());
        run.started = true;
        if let Some(timer) = node.start_timer.take() {
            self.sched.cancel(timer);
        }
        match run.stopping_for {
            Some(reason) => {
                let _ = stop.send(reason);
            }
            None => run.stop = Some(stop),
        }
        let p = Point::new(Kind::Started, &node.task.id, &key.exid, &key.nid)
            .with("taskee", run.taskee.as_str())
            .with("tasker", run.tasker_path.as_str())
            .with("attempt", node.attempt)
            .with("pid", pgid);
        self.log(p);
        // Points the tasker wrote before this message arrived.
        self.copy_points(&key);
    }

    /// Gives back a worker slot and limits; a parked node the engine
    /// dropped meanwhile (cancelled, timed out) is skipped.
    fn release(&mut self, limits: &[(LimitKey, u32)]) {
        let nodes = &self.nodes;
        self.sched.finish(limits, |item| is_live(nodes, item));
    }

    // ------------------------------------------------------------ exits

    fn on_exit(&mut self, key: NodeKey, gen: u64, exit: Exit) {
        let valid = self
            .nodes
            .get(&key)
            .is_some_and(|n| n.gen == gen && matches!(n.phase, Phase::Running(_)));
        if !valid {
            return;
        }
        self.copy_points(&key);
        let node = self.nodes.get_mut(&key).expect("checked above");
        let Phase::Running(run) = std::mem::replace(&mut node.phase, Phase::Queued) else {
            unreachable!("checked above");
        };
        self.release(&run.limits);
        self.points_files.remove(&run.points_file);
        let _ = std::fs::remove_file(&run.points_file);
        let node = self.nodes.get_mut(&key).expect("checked above");
        let taskee = node.taskee.clone();
        let Exit::Exited {
            status,
            stdout,
            oversized,
            stderr_tail,
            timed_out,
            stopped,
        } = exit
        else {
            let Exit::SpawnFailed { message, transient } = exit else {
                unreachable!("the other variant is matched above")
            };
            // A resource shortage is worth a retry; a missing or
            // non-executable program is not.
            let kind = if transient {
                ErrorKind::Work
            } else {
                ErrorKind::Config
            };
            return self.error(&key, TaskError::new(kind, message));
        };
        match stopped.or(run.stopping_for) {
            Some(StopReason::Shutdown) => {
                // Left in run/ for the next start.
                self.points.close(&key.exid);
                self.nodes.remove(&key);
                return;
            }
            Some(StopReason::Cancel) => {
                let reason = node
                    .cancel_reason
                    .clone()
                    .unwrap_or_else(|| "cancelled".into());
                return self.finish(
                    &key,
                    State::Aborted,
                    Some(TaskError::new(ErrorKind::Aborted, reason)),
                    None,
                );
            }
            None => {}
        }
        if timed_out {
            let t = node
                .task
                .options
                .timeout
                .or(node.config.as_ref().and_then(|c| c.timeout))
                .map(|d| d.to_string())
                .unwrap_or_default();
            return self.error(
                &key,
                TaskError::new(ErrorKind::Timeout, format!("run timed out after {t}")),
            );
        }
        if oversized {
            return self.error(
                &key,
                TaskError::new(
                    ErrorKind::User,
                    format!("reply larger than {} bytes", tasker::REPLY_LIMIT),
                ),
            );
        }
        let tail = if stderr_tail.is_empty() {
            String::new()
        } else {
            format!(": {}", stderr_tail.join(" | "))
        };
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => {}
            (Some(75), _) => {
                return self.error(
                    &key,
                    TaskError::new(
                        ErrorKind::Work,
                        format!("exit status 75 (temporary failure){tail}"),
                    ),
                )
            }
            (Some(n), _) => {
                return self.error(
                    &key,
                    TaskError::new(ErrorKind::User, format!("exit status {n}{tail}")),
                )
            }
            (None, sig) => {
                let name = sig
                    .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "an unknown signal".into());
                return self.error(
                    &key,
                    TaskError::new(ErrorKind::Work, format!("killed by {name}{tail}")),
                );
            }
        }
        match tasker::parse_reply(&stdout, &node.task.payload) {
            Reply::Completed(payload) => {
                node.uncompleted = 0;
                self.finish(&key, State::Completed, None, Some(payload))
            }
            Reply::Failed(reason) => self.error(&key, TaskError::new(ErrorKind::User, reason)),
            Reply::Invalid(reason) => self.error(&key, TaskError::new(ErrorKind::User, reason)),
            Reply::Refused(reason) => {
                let taskee = taskee.expect("a running node has a taskee");
                // A refusal breaks a row of `uncompleted` replies.
                node.uncompleted = 0;
                node.refusals.push(Refusal {
                    taskee: taskee.clone(),
                    reason: reason.clone(),
                });
                let n = node.refusals.len();
                let p = self
                    .point(&key, Kind::Refused)
                    .with("taskee", taskee.as_str())
                    .with("reason", reason.as_str());
                self.log_idle(p);
                if n >= MAX_REFUSALS {
                    return self.fail(
                        &key,
                        TaskError::new(
                            ErrorKind::Refused,
                            format!("refused {n} times; last by {taskee}: {reason}"),
                        ),
                    );
                }
                self.enqueue(&key);
            }
            Reply::Uncompleted { payload, after } => {
                node.uncompleted += 1;
                node.task.payload = payload;
                let n = node.uncompleted;
                let mut p = self
                    .point(&key, Kind::Uncompleted)
                    .with("taskee", taskee.map(|t| t.to_string()).unwrap_or_default());
                if let Some(a) = after {
                    p = p.with("after", a.to_string());
                }
                self.log_idle(p);
                if n >= MAX_UNCOMPLETED {
                    return self.fail(
                        &key,
                        TaskError::new(
                            ErrorKind::User,
                            format!("{n} uncompleted replies in a row"),
                        ),
                    );
                }
                self.persist_payload(&key);
                self.enqueue_after(&key, after.map(|a| a.0).unwrap_or_default());
            }
        }
    }

    /// Rewrites `run/<id>.json` with the node's current payload (after an
    /// `uncompleted` reply), so that a restart resumes from it.
    fn persist_payload(&mut self, key: &NodeKey) {
        let node = &self.nodes[key];
        let bytes = node.task.to_file_json().to_string();
        if let Err(e) = spool::write_atomic(
            &self.root.run(),
            &format!("{}.json", node.task.id),
            bytes.as_bytes(),
            false,
            true,
        ) {
            tracing::error!("{e}");
            self.note_fatal(e);
        }
    }

    /// A failed attempt: retried when its kind and the budget allow,
    /// failed otherwise (SPEC 7).
    fn error(&mut self, key: &NodeKey, err: TaskError) {
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        // A failed attempt breaks a row of `uncompleted` replies.
        node.uncompleted = 0;
        let cfg = node.config.clone().unwrap_or_default();
        let retries = node
            .task
            .options
            .retries
            .or(cfg.retries)
            .unwrap_or(DEFAULT_RETRIES);
        let retry_on_timeout = node
            .task
            .options
            .retry_on_timeout
            .or(cfg.retry_on_timeout)
            .unwrap_or(false);
        let retryable = match err.kind {
            ErrorKind::Work => true,
            ErrorKind::Timeout => retry_on_timeout,
            _ => false,
        };
        if !retryable || node.retries_done >= retries {
            return self.fail(key, err);
        }
        node.retries_done += 1;
        node.attempt += 1;
        let delay = backoff(node.retries_done);
        let attempt = node.attempt;
        let p = self
            .point(key, Kind::Retried)
            .with("reason", err.message.as_str())
            .with("kind", serde_json::to_value(err.kind).unwrap_or_default())
            .with("delay", crate::model::task::Dur(delay).to_string())
            .with("attempt", attempt);
        self.log_idle(p);
        self.enqueue_after(key, delay);
    }

    fn fail(&mut self, key: &NodeKey, err: TaskError) {
        let state = if err.kind == ErrorKind::Aborted {
            State::Aborted
        } else {
            State::Failed
        };
        self.finish(key, state, Some(err), None)
    }

    /// Ends a node: its record and final point go to the committer, which
    /// logs the point once the record is durable.
    fn finish(
        &mut self,
        key: &NodeKey,
        state: State,
        err: Option<TaskError>,
        payload: Option<Object>,
    ) {
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        if let Some(p) = payload {
            node.task.payload = p;
        }
        if let Phase::Running(run) = &mut node.phase {
            // Only reached for a running node being cancelled: it ends
            // through on_exit.
            run.stopping_for = Some(StopReason::Cancel);
            return;
        }
        node.phase = Phase::Committing;
        if let Some(timer) = node.start_timer.take() {
            self.sched.cancel(timer);
        }
        let record = record_of(node, state, err, &node.task.payload);
        let mut bytes = serde_json::to_vec_pretty(&record).expect("a record serializes");
        bytes.push(b'\n');
        let dir = if state == State::Completed {
            self.root.done()
        } else {
            self.root.failed()
        };
        self.committing += 1;
        self.committer.send(CommitJob {
            key: key.clone(),
            dir,
            name: format!("{}.json", node.task.id),
            bytes,
            points_log: self.root.points_log(&key.exid),
            final_point: Point::final_of(&record).to_line(),
            run_file: self.root.run_file(&node.task.id),
        });
    }

    fn on_committed(&mut self, batch: Vec<Committed>) -> Result<(), EngineError> {
        for c in batch {
            let key = match c {
                Committed::Done(k) | Committed::AlreadyFinal(k) => k,
                Committed::Fatal(e) => {
                    tracing::error!("{e}; stopping");
                    return Err(EngineError::Spool(e));
                }
            };
            // The committer logged the final point.
            self.committing = self.committing.saturating_sub(1);
            self.nodes.remove(&key);
            self.points.close(&key.exid);
        }
        Ok(())
    }

    // ------------------------------------------------------------ timers

    fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.sched.pop_due(now) {
            match t {
                Timer::Ready(key, gen) => {
                    let due = self
                        .nodes
                        .get(&key)
                        .is_some_and(|n| n.gen == gen && matches!(n.phase, Phase::Delayed));
                    if due {
                        self.enqueue(&key);
                    }
                }
                Timer::StartTimeout(key) => {
                    let Some(node) = self.nodes.get(&key) else {
                        continue;
                    };
                    if node.ever_started
                        || matches!(node.phase, Phase::Committing | Phase::Running(_))
                    {
                        continue;
                    }
                    let st = node
                        .task
                        .options
                        .start_timeout
                        .or(node.config.as_ref().and_then(|c| c.start_timeout))
                        .map(|d| d.to_string())
                        .unwrap_or_default();
                    // A parked or queued entry becomes stale: the node is gone.
                    self.fail(
                        &key,
                        TaskError::new(
                            ErrorKind::Timeout,
                            format!("not started within start_timeout {st}"),
                        ),
                    );
                }
            }
        }
    }

    // ------------------------------------------------------------ cancel

    fn scan_cancel(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.root.cancel()) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            self.take_cancel(&p);
        }
    }

    fn take_cancel(&mut self, path: &Path) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            return;
        };
        if intake::is_ignored_name(&name) {
            return;
        }
        let bytes = match spool::read_capped(path, CANCEL_LIMIT) {
            Ok(b) => b,
            Err(SpoolError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return
            }
            Err(e) => return self.reject(path, &format!("cancel request: {e}")),
        };
        let stem = name.strip_suffix(".json").unwrap_or(&name);
        let (id, reason) = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(o)) => (
                o.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or(stem)
                    .to_string(),
                o.get("reason").and_then(Value::as_str).map(str::to_owned),
            ),
            _ => {
                let text = String::from_utf8_lossy(&bytes).trim().to_string();
                (stem.to_string(), (!text.is_empty()).then_some(text))
            }
        };
        let reason = reason.unwrap_or_else(|| "cancelled".into());
        let id: TaskId = match id.parse() {
            Ok(id) => id,
            Err(e) => return self.reject(path, &format!("cancel request: {e}")),
        };
        if self.nodes.contains_key(&root_key(&id)) {
            self.cancel(&id, &reason, path);
        } else if self.root.done_file(&id).exists() || self.root.failed_file(&id).exists() {
            self.reject(path, &format!("task {id} has ended already"));
        } else if self.stopping.is_some() {
            // The engine lets go of queued tasks while it stops: the request
            // stays in cancel/ and applies at the next start.
        } else {
            // Perhaps still in in/: take what is there, then decide.
            self.pending_cancels
                .insert(id.clone(), (path.to_path_buf(), reason.clone()));
            self.scan_in();
            if let Some((p, _)) = self.pending_cancels.remove(&id) {
                self.reject(&p, &format!("unknown task id {id}"));
            }
        }
    }

    fn cancel(&mut self, id: &TaskId, reason: &str, request: &Path) {
        let key = root_key(id);
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        let _ = std::fs::remove_file(request);
        match &mut node.phase {
            Phase::Committing => {}
            Phase::Running(run) => {
                node.cancel_reason = Some(reason.to_string());
                run.stopping_for = Some(StopReason::Cancel);
                if let Some(stop) = run.stop.take() {
                    let _ = stop.send(StopReason::Cancel);
                }
            }
            Phase::Queued | Phase::Delayed => {
                // Its queue entries become stale.
                node.gen = u64::MAX;
                self.finish(
                    &key,
                    State::Aborted,
                    Some(TaskError::new(ErrorKind::Aborted, reason)),
                    None,
                );
            }
        }
    }

    // ------------------------------------------------------------ stop

    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            // A second signal: do not wait for the grace.
            return self.end_grace();
        }
        tracing::info!(
            "stopping: no new tasks; running taskers have {:?} to finish",
            self.options.grace
        );
        self.stopping = Some(Stopping {
            grace_end: Some(tokio::time::Instant::now() + self.options.grace),
        });
        // Queued nodes stay in run/ for the next start.
        let queued: Vec<NodeKey> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n.phase, Phase::Queued | Phase::Delayed))
            .map(|(k, _)| k.clone())
            .collect();
        for k in queued {
            self.nodes.remove(&k);
        }
    }

    fn end_grace(&mut self) {
        self.stopping = Some(Stopping { grace_end: None });
        for node in self.nodes.values_mut() {
            if let Phase::Running(run) = &mut node.phase {
                run.stopping_for.get_or_insert(StopReason::Shutdown);
                if let Some(stop) = run.stop.take() {
                    let _ = stop.send(StopReason::Shutdown);
                }
            }
        }
    }
}

/// Whether a queued or parked scheduler item is still wanted: its node
/// exists, is queued, and the item is of its current generation.
fn is_live(nodes: &HashMap<NodeKey, Node>, (key, gen): &(NodeKey, u64)) -> bool {
    nodes
        .get(key)
        .is_some_and(|n| n.gen == *gen && matches!(n.phase, Phase::Queued))
}

/// The limits a start takes: the tasker's `max_concurrent` and one per
/// `concurrency` key whose path the task has.
fn limits_for(tasker_path: &str, cfg: &TaskerConfig, task: &Task) -> Vec<(LimitKey, u32)> {
    let mut limits = Vec::new();
    if let Some(n) = cfg.max_concurrent {
        limits.push((format!("{tasker_path} max_concurrent"), n));
    }
    for c in &cfg.concurrency {
        let (root, path) = match c.key.split_once('.') {
            Some(("payload", rest)) => (&task.payload, rest),
            Some(("headers", rest)) => (&task.headers, rest),
            _ => continue,
        };
        let mut parts = path.split('.');
        let first = parts.next().unwrap_or_default();
        let mut v = root.get(first);
        for p in parts {
            v = v.and_then(|x| x.get(p));
        }
        if let Some(v) = v {
            limits.push((format!("{tasker_path} {}={}", c.key, v), c.limit));
        }
    }
    limits
}

fn describe_limit(key: &str) -> String {
    match key.split_once(' ') {
        Some((tasker, "max_concurrent")) => format!("{tasker} is at its max_concurrent"),
        Some((tasker, kv)) => format!("{tasker} is at its concurrency limit for {kv}"),
        None => format!("waiting for {key}"),
    }
}

fn record_of(node: &Node, state: State, error: Option<TaskError>, payload: &Object) -> Record {
    Record {
        id: node.task.id.clone(),
        exid: node.task.exid.clone(),
        nid: node.task.nid.clone(),
        domain: node.task.domain.clone(),
        tasker: node.task.tasker.clone(),
        taskee: node.taskee.clone(),
        tasker_path: node.tasker_path.clone(),
        state,
        reason: error.as_ref().map(|e| e.message.clone()),
        error,
        attempts: if node.ever_started {
            node.attempt
        } else {
            node.attempt.saturating_sub(1)
        },
        offers: node.offers,
        priority: node.task.priority,
        headers: node.task.headers.clone(),
        created_at: Some(timestamp(node.created_at)),
        started_at: node.started_at.map(timestamp),
        ended_at: if matches!(state, State::Running | State::Queued) {
            None
        } else {
            Some(timestamp(Utc::now()))
        },
        payload: payload.clone(),
    }
}
