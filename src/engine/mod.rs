//! The engine: one async task (an actor) that owns every piece of state —
//! the executions and their nodes, the scheduler, the running taskers — and
//! reacts, in one `select!` loop, to watcher events, offers, tasker exits,
//! durable writes, timers and stop signals. This file holds `run()` and the
//! loop; each reaction lives in the module of its concern:
//!
//! - `intake`: scans of `in/`, claims, rejections, cancel requests;
//! - `dispatch`: offers (taskmaster, off the loop in `offers`), starts
//!   (a local spawn on the loop, a Slurm submission off it), the
//!   tasker's own points;
//! - `exits`: a tasker's exit through `outcome` (pure) and `policy` (pure);
//! - `execution`: an execution's end — its record, through the durable
//!   writer — and cancels;
//! - `lock`: the engine lock (on the root directory) and the pid record;
//! - `recovery`: start-up (orphans, rebuilding from `run/`);
//! - `stop`: the graceful stop and its grace.
//!
//! A task's life here: claimed from `in/` → `created` → queued → offered
//! (taskmaster) → allocated (tasker resolved, worker slot and limits
//! taken) → started → exit → completed / failed / refused / uncompleted /
//! retried → record committed → final point.

mod body;
mod dispatch;
mod env;
mod execution;
mod exits;
mod flows;
mod history;
mod intake;
mod intern;
mod lock;
mod offers;
pub mod outcome;
pub mod policy;
mod reattach;
pub mod recovery;
mod registry;
mod remote;
mod replies;
mod report;
mod requests;
pub mod state;
mod stop;
mod task;
mod tasker_points;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::layout::{Root, RootError};
use crate::model::names::{Exid, TaskId};
use crate::model::point::Point;
use crate::scheduler::{NodeKey, Scheduler};
use crate::store::points::PointsLog;
use crate::store::spool::SpoolError;
use crate::store::writer::{Done, Probe, Writer, WriterEnd};

use crate::watch::{self, WatchEvent};
use recovery::RecoveryError;
pub use report::{outcome_line, Counts, Progress};
use state::{Execution, Item, Mode, Node};
pub use task::{run, run_blocking};

/// The default limit on a task file's size (SPEC 10).
pub const INPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// The slow safety-net rescan of the spool (DESIGN: "about every 30 s"),
/// the default of [`Options::rescan`].
pub const SAFETY_RESCAN: Duration = Duration::from_secs(30);

/// How to run the engine.
#[derive(Debug, Clone)]
pub struct Options {
    /// Taskers running at once on this machine.
    pub workers: usize,
    /// This engine's Slurm jobs pending or running at once (SPEC 14).
    pub slurm_jobs: u32,
    /// How often the engine asks Slurm about its jobs.
    pub slurm_poll: Duration,
    /// Exit once `in/` and `run/` are empty.
    pub drain: bool,
    /// On SIGINT/SIGTERM, how long running taskers may go on.
    pub grace: Duration,
    /// Between SIGTERM and SIGKILL of a tasker's group.
    pub kill_grace: Duration,
    /// The largest task file accepted.
    pub input_limit: u64,
    /// A test seam: told of every job the durable writer made durable.
    pub writer_probe: Option<Probe>,
    /// Counters the engine keeps up to date for a progress display
    /// (`spoolflow run --drain` on a terminal).
    pub progress: Option<std::sync::Arc<Progress>>,
    /// The period of the safety-net rescan of the spool (default
    /// [`SAFETY_RESCAN`]); tests set it far longer than themselves, so
    /// that a pass cannot come from it.
    pub rescan: Duration,
    /// A test seam on the watcher of the spool (lost and injected events).
    pub watch_seam: Option<watch::Seam>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            slurm_jobs: 100,
            slurm_poll: crate::tasker::slurm::POLL,
            drain: false,
            grace: Duration::from_secs(10),
            kill_grace: Duration::from_secs(5),
            input_limit: INPUT_LIMIT,
            writer_probe: None,
            progress: None,
            rescan: SAFETY_RESCAN,
            watch_seam: None,
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
    /// Stopped on a failed write (logged, with what happens next).
    #[error("stopped on a failed write to {at}: the log says why and what happens next")]
    Stopped { at: String },
    #[error("cannot start the runtime or its threads: {0}")]
    Runtime(std::io::Error),
    #[error("the durable writer's thread panicked; what it had not made durable stays in in/ or run/ for the next start")]
    WriterPanicked,
    /// The runtime shut down under the engine's task.
    #[error("the engine's runtime shut down while it ran; what it had not made durable stays in in/ or run/ for the next start")]
    Cancelled,
}

/// Why the running engine should stop (sent by the CLI's signal handler
/// or by tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// SIGINT/SIGTERM: finish within the grace, leave the rest in `run/`.
    Graceful,
}

/// What executors and the taskers' drivers report.
pub(crate) enum TaskerMsg {
    /// What happened to a node's run (see `tasker::executor`).
    Event {
        key: NodeKey,
        gen: u64,
        event: crate::tasker::RunEvent,
    },
}

/// A timer event.
#[derive(Debug)]
pub(crate) enum Timer {
    /// A delayed node (backoff, `uncompleted` with `after`) is due.
    Ready(NodeKey, u64),
    /// A node's `start_timeout` is due.
    StartTimeout(NodeKey),
    /// A flow's sleeping node is due.
    Wake(NodeKey),
}

/// The channels into the loop.
struct Inbox {
    watch: UnboundedReceiver<WatchEvent>,
    taskers: UnboundedReceiver<TaskerMsg>,
    offers: UnboundedReceiver<offers::PoolAnswer>,
    written: UnboundedReceiver<Vec<Done>>,
    stop: Option<UnboundedReceiver<StopRequest>>,
}

/// The actor: all the engine's state, owned by the loop.
pub(crate) struct Engine {
    root: Root,
    options: Options,
    mode: Mode,
    sched: Scheduler<Item, Timer>,
    points: PointsLog,
    offers: offers::Offers,
    executions: HashMap<Exid, Execution>,
    /// Every live node of every execution (boxed: the map's spare
    /// capacity then costs a pointer per slot, not a node).
    nodes: HashMap<NodeKey, Box<Node>>,
    /// The shared copies of the domains and taskees of the nodes.
    names: intern::Names,
    /// Domain-less claims being made durable by the writer.
    claiming: HashMap<
        Exid,
        (
            crate::model::task::Task,
            Option<chrono::DateTime<chrono::Utc>>,
        ),
    >,
    /// Paths of `in/` and `cancel/` handed to the writer (claims,
    /// rejections) and not done yet: a rescan leaves them alone.
    in_flight: HashSet<PathBuf>,
    /// `$SPOOLFLOW_POINTS` path → the node it belongs to.
    points_files: HashMap<PathBuf, NodeKey>,
    /// Records being committed.
    committing: usize,
    next_gen: u64,
    tasker_tx: UnboundedSender<TaskerMsg>,
    writer: Writer,
    registry: registry::Registry,
    /// Entries of `in/` still to look at (a scan in progress), taken a
    /// bounded number per turn of the loop.
    scan: VecDeque<PathBuf>,
    /// Entries a scan found still changing: each looked at again at its
    /// own deadline, never left to the slow safety rescan.
    settling: intake::Settling,
    /// Cancel requests for ids not seen yet: id → (request path, reason);
    /// settled once the scan they asked for is over.
    pending_cancels: HashMap<TaskId, (PathBuf, String)>,
    /// Cancel requests applied to a live execution: request path → its
    /// exid. Each is removed once that execution's record is durable, so
    /// that a crash before re-applies it at the next start.
    held_cancels: HashMap<PathBuf, Exid>,
    /// Priority requests for ids not seen yet: id → (request path,
    /// priority); settled with the cancel requests (see `requests`).
    pending_priorities: HashMap<TaskId, (PathBuf, i32)>,
    /// Priority requests applied, removed once the rewritten `run/` file
    /// is durable (a crash before re-applies them at the next start).
    /// (request path, priority, the rewrite carrying it).
    priority_saving: HashMap<NodeKey, (PathBuf, i32, u64)>,
    /// The number of the latest rewrite of a `run/` file sent to the
    /// writer (see [`Done::Rewritten`](crate::store::writer::Done)).
    rewrites: u64,
    /// Changes under `tsk/`, which spoil cached lookups.
    tsk_watch: watch::TskWatch,
    /// The watcher of the spool (new directories of `in/` are watched
    /// before they are listed).
    watcher: watch::SpoolWatcher,
    /// An fsync failed: the page cache can no longer be trusted, so the
    /// engine stops (at the top of its loop).
    fatal: Option<SpoolError>,
    /// The sandbox that flows' `if` expressions run in.
    conditions: std::sync::Arc<rhai::Engine>,
    /// Completing replies not yet in a durable record.
    replies: replies::Replies,
    /// How taskers' descendants are tracked (a cgroup or the subreaper).
    contain: crate::tasker::Contain,
    /// `var/run/engine.lock`, written again when it goes.
    pid_record: lock::PidRecord,
    /// Where taskers run: this machine, or a Slurm cluster.
    executors: remote::Executors,
    /// Nodes running as Slurm jobs: their points files are read at each
    /// tick (no file event crosses a cluster's shared filesystem).
    slurm_running: HashSet<NodeKey>,
}

/// What comes before the engine's state: the root checked and its layout
/// made whole (an operator may have removed `var/run/`), the lock taken
/// (held until the engine returns) and the pid record written, what a dead
/// engine left behind cleaned up, and how taskers will be contained.
async fn start_up(
    root: &Root,
    workers: usize,
) -> Result<(lock::EngineLock, lock::PidRecord, crate::tasker::Contain), EngineError> {
    root.ensure_exists()?;
    root.make_var()?;
    let mut lock = lock::lock(root).await?;
    let record = lock::PidRecord::write(root, workers, &mut lock);
    // Said only once the lock is ours: a second engine never claims to
    // have started.
    tracing::info!(
        "engine started on {} (pid {}, {})",
        root.dir().display(),
        std::process::id(),
        crate::text::count(workers, "worker")
    );
    // Only now: holding the lock proves that no engine of this root runs,
    // so the groups its registry names are a dead engine's.
    recovery::kill_orphans(root);
    let contain = crate::tasker::Contain::detect(root);
    recovery::clean_temporaries(root);
    crate::tasker::close_inherited_descriptors();
    Ok((lock, record, contain))
}

/// Runs the engine on the calling task.
pub(super) async fn run_here(
    root: Root,
    options: Options,
    stop: Option<UnboundedReceiver<StopRequest>>,
) -> Result<(), EngineError> {
    let (_lock, pid_record, contain) = start_up(&root, options.workers).await?;
    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let watcher = watch::SpoolWatcher::start(
        &root,
        &root.points_dir(),
        watch_tx,
        options.watch_seam.clone(),
    )?;
    let tsk_watch = watch::TskWatch::new(&root.tsk())?;
    let (tasker_tx, tasker_rx) = mpsc::unbounded_channel();
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let (offered_tx, offered_rx) = mpsc::unbounded_channel();
    let writer = start_writer(&root, &options, written_tx)?;
    let drain = options.drain;

    let mut engine = Engine {
        sched: Scheduler::new(options.workers),
        // Handles stay open only while a task is offered or runs (see
        // `log_idle`): open descriptors are copied into every spawn.
        points: PointsLog::new(root.log_tsk(), options.workers + 8),
        offers: offers::Offers::start(
            &root,
            options.workers,
            body::limit(options.input_limit),
            offered_tx,
        )
        .map_err(EngineError::Runtime)?,
        registry: registry::Registry::open(&root.taskers_registry(), options.workers),
        executions: HashMap::new(),
        nodes: HashMap::new(),
        names: intern::Names::default(),
        claiming: HashMap::new(),
        in_flight: HashSet::new(),
        points_files: HashMap::new(),
        committing: 0,
        next_gen: 0,
        tasker_tx,
        writer,
        mode: Mode::Starting,
        scan: VecDeque::new(),
        settling: intake::Settling::default(),
        pending_cancels: HashMap::new(),
        held_cancels: HashMap::new(),
        pending_priorities: HashMap::new(),
        priority_saving: HashMap::new(),
        rewrites: 0,
        tsk_watch,
        watcher,
        fatal: None,
        conditions: std::sync::Arc::new(crate::sandbox::sandbox_engine()),
        replies: replies::Replies::open(&root),
        contain,
        pid_record,
        executors: remote::Executors::new(options.slurm_poll),
        slurm_running: HashSet::new(),
        options,
        root,
    };
    engine.first_look()?;
    engine.mode = if drain { Mode::Draining } else { Mode::Running };
    engine
        .run_until_stopped(Inbox {
            watch: watch_rx,
            taskers: tasker_rx,
            offers: offered_rx,
            written: written_rx,
            stop,
        })
        .await
}

/// The durable writer of `root`, recycling `run/` files through `.spare/`.
fn start_writer(
    root: &Root,
    options: &Options,
    written_tx: UnboundedSender<Vec<Done>>,
) -> Result<Writer, EngineError> {
    let dirs = crate::store::writer::SpareDirs {
        spares: root.spares(),
        run: root.run(),
    };
    Writer::start(written_tx, dirs, options.writer_probe.clone()).map_err(EngineError::Runtime)
}

impl Engine {
    /// The loop until the engine stops, then the threads beside it ended.
    /// A disk failure the writer met after the loop's last look (an fsync
    /// of run/ while the engine was ending, or its last one) is the exit's,
    /// unless the engine stopped on one already.
    async fn run_until_stopped(mut self, mut inbox: Inbox) -> Result<(), EngineError> {
        let result = self.event_loop(&mut inbox).await;
        let finished = self.finish_threads();
        result
            .and(finished)
            .and_then(|()| late_failure(&mut inbox.written))
    }

    /// What the engine finds at its start: `run/` recovered, then what
    /// waits in `in/`, `cancel/` and `priority/`.
    fn first_look(&mut self) -> Result<(), EngineError> {
        self.recover()?;
        self.scan_in();
        self.take_scan(usize::MAX);
        self.scan_cancel();
        self.scan_priority();
        Ok(())
    }

    /// Ends what runs beside the loop: the offer pool, the writer (its
    /// queue written out, `run/` fsynced), and the containment of taskers.
    fn finish_threads(self) -> Result<(), EngineError> {
        let Engine {
            writer,
            offers,
            contain,
            root,
            ..
        } = self;
        offers.finish();
        let written = writer.finish();
        contain.finish(&root);
        written.map_err(|e| match e {
            WriterEnd::Disk(e) => stop::disk_failure(&e),
            WriterEnd::Panicked => EngineError::WriterPanicked,
        })
    }
}

/// A disk failure the writer reported once the loop had stopped looking.
fn late_failure(written: &mut UnboundedReceiver<Vec<Done>>) -> Result<(), EngineError> {
    while let Ok(batch) = written.try_recv() {
        for done in batch {
            if let Done::Fatal(e) = done {
                return Err(stop::disk_failure(&e));
            }
        }
    }
    Ok(())
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

/// Entries of a scan looked at per turn of the loop: a flood of files
/// never keeps the loop from a stop signal, a timer or an exit for long.
const SCAN_CHUNK: usize = 64;

impl Engine {
    /// The loop. Every branch handles one message (or one bounded chunk of
    /// a scan) per turn, and `select!` picks among the ready branches at
    /// random: no source can starve another.
    async fn event_loop(&mut self, inbox: &mut Inbox) -> Result<(), EngineError> {
        let mut safety = tokio::time::interval(self.options.rescan.max(Duration::from_secs(1)));
        safety.tick().await;
        let mut upkeep = tokio::time::interval(lock::UPKEEP);
        upkeep.tick().await;
        // With --drain: when in/ still holds something after a scan (an
        // entry that cannot be moved, say), look again a second later
        // rather than spin.
        let mut drain_recheck: Option<tokio::time::Instant> = None;
        loop {
            if let Some(e) = self.fatal.take() {
                return Err(self.stop_on_disk_failure(e));
            }
            self.dispatch();
            self.count_live();
            if self.mode.is_stopping() && self.nothing_running() {
                // Queued and delayed tasks stay in run/ for the next start.
                return Ok(());
            }
            if self.mode == Mode::Draining
                && self.is_idle()
                && inbox.watch.is_empty()
                && drain_recheck.is_none_or(|t| t <= tokio::time::Instant::now())
            {
                if self.in_is_drained() {
                    return Ok(());
                }
                // Something is in in/ that no event announced (yet): take
                // it, and look again a second later at the earliest.
                self.scan_in();
                drain_recheck = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                continue;
            }
            let next_timer = self.sched.next_due().map(tokio::time::Instant::from_std);
            let grace_end = match self.mode {
                Mode::Stopping { grace_end } => Some(grace_end),
                _ => None,
            };
            let scanning = !self.scan.is_empty();
            let settle_at = self.settling.next_due();
            tokio::select! {
                Some(batch) = inbox.written.recv() => self.on_written(batch)?,
                Some(msg) = inbox.taskers.recv() => match msg {
                    TaskerMsg::Event { key, gen, event } => self.on_run_event(key, gen, event),
                },
                Some((domain, offered)) = inbox.offers.recv() => self.on_pool_answer(domain, offered),
                Some(ev) = inbox.watch.recv() => self.on_watch(ev),
                () = std::future::ready(()), if scanning => self.take_scan(SCAN_CHUNK),
                _ = sleep_until(next_timer), if next_timer.is_some() => self.on_timers(),
                req = recv_stop(&mut inbox.stop), if inbox.stop.is_some() => match req {
                    Some(StopRequest::Graceful) => self.begin_stop(),
                    None => inbox.stop = None,
                },
                _ = sleep_until(grace_end), if grace_end.is_some() => self.end_grace(),
                _ = sleep_until(drain_recheck), if drain_recheck.is_some() => drain_recheck = None,
                _ = sleep_until(settle_at), if settle_at.is_some() => self.settled(),
                _ = upkeep.tick() => {
                    self.keep_var_run();
                    self.copy_slurm_points();
                }
                _ = safety.tick() => {
                    self.scan_in();
                    self.scan_cancel();
                    self.scan_priority();
                }
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.executions.is_empty()
            && self.claiming.is_empty()
            && self.committing == 0
            && self.scan.is_empty()
    }

    /// Whether no tasker runs and no record is being committed (what a stop waits for; O(nodes), looked at only while
    /// stopping).
    fn nothing_running(&self) -> bool {
        use state::NodeState;
        self.committing == 0
            && self.claiming.is_empty()
            && !self
                .nodes
                .values()
                .any(|n| matches!(n.state, NodeState::Running(_) | NodeState::Committing))
    }

    fn on_watch(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Input(p) => self.take(&p),
            WatchEvent::Cancel(p) => self.take_cancel(&p),
            WatchEvent::Priority(p) => self.take_priority(&p),
            WatchEvent::Made(role, p) => self.made(role, &p),
            WatchEvent::Points(p) => {
                self.watcher.points_taken(&p);
                if let Some(key) = self.points_files.get(&p).cloned() {
                    self.points_announced(&key);
                }
            }
            WatchEvent::Rescan => {
                tracing::warn!("file watcher overflowed; rescanning the spool");
                self.rescan_in();
                self.scan_cancel();
                self.scan_priority();
            }
            WatchEvent::DirGone(dir) => self.dir_gone(&dir),
            WatchEvent::DirBack(dir) => self.dir_back(&dir),
            WatchEvent::Error(e) => {
                tracing::error!("file watcher: {e}; rescanning the spool");
                self.rescan_in();
            }
        }
    }

    // ------------------------------------------------------------ lookups

    fn node(&self, key: &NodeKey) -> Option<&Node> {
        self.nodes.get(key).map(|n| &**n)
    }

    fn node_mut(&mut self, key: &NodeKey) -> Option<&mut Node> {
        self.nodes.get_mut(key).map(|n| &mut **n)
    }

    // ------------------------------------------------------------ points

    fn point(&self, key: &NodeKey, kind: crate::model::point::Kind) -> Point {
        let id = self
            .node(key)
            .map(|n| n.task.id.clone())
            .unwrap_or_else(|| key.exid.clone());
        Point::new(kind, &id, &key.exid, &key.nid)
    }

    /// Logs a point after which the task waits (queued, parked, delayed):
    /// its log's handle is closed, so that only running tasks hold one.
    fn log_idle(&mut self, p: Point) {
        let exid = p.exid.clone();
        self.log(p);
        self.points.close(&exid);
    }

    fn log(&mut self, p: Point) {
        if let Err(e) = self.points.append(&p) {
            tracing::error!(
                "cannot append to {}: {e}",
                self.root.points_log(&p.exid).display()
            );
        }
    }

    /// Appends a point that `attempts` rests on (SPEC 10): `allocated`,
    /// written before a tasker is spawned, and `started`. When it cannot
    /// be written (a full disk, say), the engine stops at the top of its
    /// loop (killing what runs): no tasker runs that the points log does
    /// not count, so a restart never runs a task again under the same
    /// attempt number. Returns whether it was written (never once the
    /// engine is stopping on a failure: no tasker starts then).
    fn log_required(&mut self, p: Point) -> bool {
        use crate::store::spool::{fault, Op};
        if self.fatal.is_some() {
            return false;
        }
        let path = self.root.points_log(&p.exid);
        let mut written =
            fault::inject(Op::Write, &path, None).and_then(|()| self.points.append(&p));
        if matches!(&written, Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
            // var/log/tsk/ was removed: made again.
            let _ = std::fs::create_dir_all(self.root.log_tsk());
            written = self.points.append(&p);
        }
        match written {
            Ok(()) => true,
            Err(source) => {
                if self.fatal.is_none() {
                    self.fatal = Some(SpoolError::Write { path, source });
                }
                false
            }
        }
    }

    /// Remembers an fsync failure: the loop stops the engine (and logs it,
    /// once).
    fn note_fatal(&mut self, e: SpoolError) {
        if e.is_fatal() && self.fatal.is_none() {
            self.fatal = Some(e);
        }
    }

    /// A claim (`in/` → `run/`) that failed: the disk failing stops the
    /// engine, which logs it then; anything else is logged here.
    fn claim_failed(&mut self, path: &std::path::Path, e: SpoolError) {
        if e.is_fatal() {
            self.note_fatal(e);
        } else {
            tracing::error!("cannot claim {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod run_tests;
