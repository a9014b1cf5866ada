//! The engine's state: [`Execution`]s (one exid each: its `run/` file,
//! points log, record, cancel, recovery) above [`Node`]s (one nid each:
//! queueing, offering, spawning, points), each lifecycle one enum, and the
//! engine's own [`Mode`].
//!
//! A standalone task is an execution with the single node `0`; flows add
//! nodes to the same execution.
//!
//! The engine may hold a great many queued nodes (100 000 is a tested
//! size), so a node is kept small: its task as a [`NodeTask`] (shared
//! names, options boxed only when set, the payload and headers left in
//! `run/` while it waits: see [`Body`]), what its offers and attempts
//! leave in a boxed [`Past`] made on its first offer. About 520 bytes of
//! heap per queued task in all (node, maps, scheduler entry), down from
//! about 2.5 KB when each node held its whole task.

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::policy::Effective;
use crate::model::names::{Domain, Exid, Nid, TaskId, Taskee};
use crate::model::task::{timestamp, AttemptLog, ErrorKind, Object, Refusal, Task, TaskOptions};
use crate::scheduler::{Entry, Limit, NodeKey, TimerId};
use crate::tasker::{Placement, StopReason};

/// A queued item of the scheduler: a node and the generation it was
/// queued under (an item of an older generation is stale and dropped).
pub type Item = (NodeKey, u64);

/// Why the engine stops a running tasker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A cancel request, with its reason (SPEC 8).
    Cancel(String),
    /// The engine ends the run and fails the attempt with this error (a
    /// Slurm job still pending at its `start_timeout`).
    Fail(crate::model::task::TaskError),
    /// The engine stops; the task stays in `run/` for the next start.
    Shutdown,
}

impl Stop {
    pub fn reason(&self) -> StopReason {
        match self {
            Stop::Cancel(_) | Stop::Fail(_) => StopReason::Cancel,
            Stop::Shutdown => StopReason::Shutdown,
        }
    }
}

/// The process of a running node.
#[derive(Debug)]
pub enum Process {
    /// Being spawned (or submitted) off the loop; `started` is not logged
    /// yet.
    Spawning,
    /// Being spawned, and already asked to stop: the stop is passed on once
    /// the process exists.
    SpawningToStop(Stop),
    /// A Slurm submission the cluster refused for now (at its submit
    /// limit), tried again until it is taken; `stop` ends it (nothing
    /// exists on the cluster yet).
    Held { stop: oneshot::Sender<StopReason> },
    /// A Slurm job of a dead engine being re-attached; `started`: its
    /// `started` point is in the log already.
    Adopting { started: bool },
    /// A Slurm job the cluster accepted, pending (`submitted` logged, not
    /// `started`); `stop` asks its driver to end it.
    Pending {
        job: u64,
        stop: oneshot::Sender<StopReason>,
    },
    /// Runs (`started` logged); `stop` asks its driver to end it.
    Live {
        at: Placement,
        stop: oneshot::Sender<StopReason>,
    },
    /// Runs (or is pending) and was asked to stop; its exit is awaited.
    Stopping { at: Placement, why: Stop },
}

impl Process {
    /// Whether `started` is logged (the tasker's own points may follow).
    pub fn started(&self) -> bool {
        matches!(
            self,
            Process::Live { .. } | Process::Stopping { .. } | Process::Adopting { started: true }
        )
    }

    /// The stop asked for, if any.
    pub fn stop_asked(&self) -> Option<&Stop> {
        match self {
            Process::SpawningToStop(why) | Process::Stopping { why, .. } => Some(why),
            _ => None,
        }
    }

    /// Asks the process to stop. A cancel wins over a shutdown asked
    /// before it (the task is aborted, not left for the next start); a
    /// later shutdown does not undo a cancel.
    pub fn ask_stop(&mut self, why: Stop) {
        let current = std::mem::replace(self, Process::Spawning);
        *self = match (current, why) {
            (Process::Spawning | Process::Adopting { .. }, why) => Process::SpawningToStop(why),
            (Process::Held { stop }, why) => {
                let _ = stop.send(why.reason());
                Process::SpawningToStop(why)
            }
            (Process::Live { at, stop }, why) => {
                let _ = stop.send(why.reason());
                Process::Stopping { at, why }
            }
            (Process::Pending { job, stop }, why) => {
                let _ = stop.send(why.reason());
                Process::Stopping {
                    at: Placement::Job(job),
                    why,
                }
            }
            (Process::SpawningToStop(Stop::Shutdown), cancel @ Stop::Cancel(_)) => {
                Process::SpawningToStop(cancel)
            }
            (
                Process::Stopping {
                    at,
                    why: Stop::Shutdown,
                },
                cancel @ Stop::Cancel(_),
            ) => Process::Stopping { at, why: cancel },
            (other, _) => other,
        };
    }

    /// The local process group, once the process exists.
    pub fn group(&self) -> Option<i32> {
        match self {
            Process::Live {
                at: Placement::Group(g),
                ..
            }
            | Process::Stopping {
                at: Placement::Group(g),
                ..
            } => Some(*g),
            _ => None,
        }
    }
}

/// A node's run of a tasker: what it holds while it runs.
#[derive(Debug)]
pub struct Run {
    /// The taskee this run was offered to.
    pub taskee: Taskee,
    pub process: Process,
    /// The worker slot's limits, given back at exit.
    pub limits: Vec<(Limit, u32)>,
    /// Its slot in the taskers registry (see `registry`); a Slurm job
    /// holds none (and no worker).
    pub slot: Option<usize>,
    /// `$SPOOLFLOW_POINTS`, and how much of it was copied.
    pub points: super::tasker_points::PointsTail,
}

/// A node being offered: its scheduler entry (given back to the scheduler
/// if a limit holds the node back) and whether it waited already.
#[derive(Debug)]
pub struct Offer {
    pub entry: Entry<Item>,
    pub waited: bool,
}

/// Where a node is in its life. One enum: every fact that depends on the
/// phase lives in its variant.
#[derive(Debug)]
pub enum NodeState {
    /// In the ready queue, or parked on a limit. `waited`: a `suspended`
    /// point was logged since the node last started (it is logged once).
    Queued { waited: bool },
    /// Waiting for a timer (backoff, `uncompleted` with `after`).
    Delayed,
    /// Its `run/` file is being rewritten (after `uncompleted`) by the
    /// rewrite numbered `seq`; queued again, after `after`, once that is
    /// durable.
    Saving {
        after: std::time::Duration,
        seq: u64,
    },
    /// Its taskmaster runs off the loop; the node holds a worker slot.
    Offering(Box<Offer>),
    /// A tasker runs it.
    Running(Box<Run>),
    /// Its record is being committed.
    Committing,
}

/// A node: one task of an execution, with its own attempts and points.
///
/// A queued task is mostly this struct, so it holds only what the engine
/// decides with while the node waits (see [`NodeTask`]); what its offers
/// and attempts leave is in a [`Past`], boxed and absent until the node is
/// first offered. The engine keeps each node boxed in its map, so that the
/// map's spare capacity costs a pointer per slot, not a node.
#[derive(Debug)]
pub struct Node {
    pub task: NodeTask,
    /// Bumped whenever the node is queued again, so stale scheduler
    /// entries and timers are recognised.
    pub gen: u64,
    pub state: NodeState,
    /// The `start_timeout` timer, removed once the node starts or ends.
    pub start_timer: Option<TimerId>,
    /// The attempt under way or next (1 for the first).
    pub attempt: u32,
    pub offers: u32,
    /// `uncompleted` replies in a row.
    pub uncompleted: u32,
    pub retries_done: u32,
    /// Taskers started for it so far, over every engine start (a
    /// recovered node counts the attempts that ran before the crash).
    pub starts: u32,
    /// A flow node whose payload is built from its flow when it is first
    /// offered (its payload is empty until then).
    pub payload_from_flow: bool,
    /// A flow's task node: when the flow reached it, which its
    /// `start_timeout` counts from (a standalone node's counts from its
    /// execution's creation).
    pub reached_at: Option<DateTime<Utc>>,
    past: Option<Box<Past>>,
}

/// What a node's offers and attempts left behind: the record's `taskee`,
/// `tasker_path`, `started_at` and `attempts_log`, the refusals the
/// taskmaster sees, and the options in force once a tasker was resolved.
#[derive(Debug, Default)]
pub struct Past {
    /// The taskee and tasker of the latest offer.
    pub taskee: Option<Taskee>,
    pub tasker_path: Option<String>,
    /// The task's options over its tasker's over the defaults, computed at
    /// allocation (`None` before: the task's over the defaults).
    pub effective: Option<Effective>,
    /// When its latest tasker started (`None`: none in this engine).
    pub started_at: Option<DateTime<Utc>>,
    pub refusals: Vec<Refusal>,
    /// Each attempt that started (the last one open while it runs): the
    /// record's `attempts_log` and `first_started_at`.
    pub attempts_log: Vec<AttemptLog>,
}

/// The past of a node that has none yet.
static NO_PAST: Past = Past {
    taskee: None,
    tasker_path: None,
    effective: None,
    started_at: None,
    refusals: Vec::new(),
    attempts_log: Vec::new(),
};

impl Node {
    pub fn new(task: NodeTask) -> Node {
        Node {
            task,
            gen: 0,
            state: NodeState::Queued { waited: false },
            start_timer: None,
            attempt: 1,
            offers: 0,
            uncompleted: 0,
            retries_done: 0,
            starts: 0,
            payload_from_flow: false,
            reached_at: None,
            past: None,
        }
    }

    /// What its offers and attempts left (empty before the first).
    pub fn past(&self) -> &Past {
        self.past.as_deref().unwrap_or(&NO_PAST)
    }

    /// Its past, made on first use.
    pub fn past_mut(&mut self) -> &mut Past {
        self.past.get_or_insert_with(Box::default)
    }

    /// The options in force: the task's over its tasker's over the
    /// defaults once a tasker was resolved, the task's over the defaults
    /// before.
    pub fn effective(&self) -> Effective {
        self.past()
            .effective
            .unwrap_or_else(|| Effective::of_task(self.task.options()))
    }

    /// The attempt under way has started (at `at`).
    pub fn begin_attempt(&mut self, at: DateTime<Utc>) {
        let attempt = self.attempt;
        self.past_mut().attempts_log.push(AttemptLog {
            attempt,
            started_at: timestamp(at),
            ended_at: None,
            outcome: None,
            kind: None,
            job_id: None,
            node: None,
        });
    }

    /// Opens the attempts log's last attempt again (a restore after a
    /// crash ended it `interrupted`): its run goes on (a Slurm job
    /// followed again), or its reply, kept through the crash, completes
    /// it. Its start is the node's `started_at` again.
    pub fn reopen_last_attempt(&mut self) {
        let past = self.past_mut();
        if let Some(a) = past.attempts_log.last_mut() {
            a.ended_at = None;
            a.outcome = None;
            past.started_at = chrono::DateTime::parse_from_rfc3339(&a.started_at)
                .ok()
                .map(|t| t.with_timezone(&Utc));
        }
    }

    /// The attempt under way, if one started and is still open, ended
    /// (at `at`) with `outcome`.
    pub fn end_attempt(&mut self, at: DateTime<Utc>, outcome: &str, kind: Option<ErrorKind>) {
        let Some(past) = self.past.as_deref_mut() else {
            return;
        };
        if let Some(a) = past.attempts_log.last_mut().filter(|a| a.outcome.is_none()) {
            a.ended_at = Some(timestamp(at));
            a.outcome = Some(outcome.to_string());
            a.kind = kind;
        }
    }

    /// The attempts a record counts: the one under way counts once a
    /// tasker started for it (its entry opens the attempts log). One queued
    /// again for a retry, or after a crash, and never started again counts
    /// the attempts before it only, as its attempts log does.
    pub fn attempts(&self) -> u32 {
        let started = self
            .past
            .as_deref()
            .and_then(|p| p.attempts_log.last())
            .is_some_and(|a| a.attempt == self.attempt);
        if started {
            self.attempt
        } else {
            self.attempt.saturating_sub(1)
        }
    }

    /// Whether a scheduler item is this node's current queue entry.
    pub fn is_queued_as(&self, gen: u64) -> bool {
        self.gen == gen && matches!(self.state, NodeState::Queued { .. })
    }
}

/// What a node holds of its task: the ids, domain, requested taskee,
/// priority and options that the engine decides with while the node
/// waits. The payload and headers are in its [`Body`]: a standalone task
/// leaves them in its `run/` file until it is offered.
#[derive(Debug)]
pub struct NodeTask {
    pub id: TaskId,
    pub nid: Nid,
    pub domain: Domain,
    /// The requested taskee.
    pub tasker: Option<Taskee>,
    pub priority: i32,
    /// The task's own options; `None` when it sets none (most tasks).
    options: Option<Box<TaskOptions>>,
    pub body: Body,
}

/// The options of a task that sets none.
static NO_OPTIONS: TaskOptions = TaskOptions {
    timeout: None,
    start_timeout: None,
    retries: None,
    retry_on_timeout: None,
};

impl NodeTask {
    /// A task whose payload and headers stay in memory (a flow's node: the
    /// flow's `run/` file holds the flow, not its nodes).
    pub fn in_memory(mut task: Task) -> NodeTask {
        let body = Body::Loaded(Box::new(Loaded {
            payload: std::mem::take(&mut task.payload),
            headers: std::mem::take(&mut task.headers),
        }));
        NodeTask::of(task, body)
    }

    /// A standalone task in `run/`: its payload and headers are dropped
    /// here, and read back from its `run/` file when it is offered.
    pub fn on_disk(task: Task) -> NodeTask {
        NodeTask::of(task, Body::OnDisk)
    }

    /// The task's scheduling fields, with `body` for its payload and
    /// headers.
    fn of(task: Task, body: Body) -> NodeTask {
        NodeTask::with_body(
            task.id,
            task.nid,
            task.domain,
            task.tasker,
            task.priority,
            task.options,
            body,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_body(
        id: TaskId,
        nid: Nid,
        domain: Domain,
        tasker: Option<Taskee>,
        priority: i32,
        options: TaskOptions,
        body: Body,
    ) -> NodeTask {
        NodeTask {
            id,
            nid,
            domain,
            tasker,
            priority,
            options: (options != TaskOptions::default()).then(|| Box::new(options)),
            body,
        }
    }

    /// The task's own options (`timeout`, `start_timeout`, `retries`,
    /// `retry_on_timeout`).
    pub fn options(&self) -> &TaskOptions {
        self.options.as_deref().unwrap_or(&NO_OPTIONS)
    }

    /// The payload and headers, when in memory.
    pub fn loaded(&self) -> Option<&Loaded> {
        match &self.body {
            Body::Loaded(l) => Some(l),
            Body::OnDisk => None,
        }
    }

    /// The payload and headers in memory, taken out (the node is ending:
    /// its record takes them).
    pub fn take_loaded(&mut self) -> Option<Loaded> {
        match std::mem::replace(&mut self.body, Body::OnDisk) {
            Body::Loaded(l) => Some(*l),
            Body::OnDisk => None,
        }
    }

    /// Sets the payload (a reply's); the headers stay. Only a node whose
    /// body is in memory has a payload to replace (a running node's is).
    pub fn set_payload(&mut self, payload: Object) {
        if let Body::Loaded(l) = &mut self.body {
            l.payload = payload;
        }
    }

    /// The task as its `run/` file holds it, with `body` as its payload
    /// and headers.
    pub fn to_file_json(&self, body: &Loaded) -> serde_json::Value {
        crate::model::task::file_json(&crate::model::task::FileParts {
            id: &self.id,
            domain: &self.domain,
            tasker: self.tasker.as_ref(),
            priority: self.priority,
            payload: &body.payload,
            headers: &body.headers,
            options: self.options(),
            flow: None,
        })
    }
}

/// Where a node's payload and headers are.
#[derive(Debug)]
pub enum Body {
    /// In the task's `run/` file, which is current (no rewrite of it is in
    /// flight): read back when the node is offered (see `body`).
    OnDisk,
    /// In memory: from its offer until it ends or waits again, and always
    /// for a flow's node.
    Loaded(Box<Loaded>),
}

/// A task's payload and headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub payload: Object,
    pub headers: Object,
}

/// The live nodes of an execution: a standalone task's one node `0`
/// needs no vector.
#[derive(Debug)]
pub enum Nids {
    /// The root node `0` alone (a standalone task).
    Root,
    /// Any number (a flow's task nodes).
    List(Vec<Nid>),
}

impl Nids {
    pub fn is_empty(&self) -> bool {
        matches!(self, Nids::List(v) if v.is_empty())
    }

    /// The nids, cloned (a clone shares the text).
    pub fn to_vec(&self) -> Vec<Nid> {
        match self {
            Nids::Root => vec![Nid::root()],
            Nids::List(v) => v.clone(),
        }
    }

    pub fn push(&mut self, nid: Nid) {
        match self {
            Nids::Root => *self = Nids::List(vec![Nid::root(), nid]),
            Nids::List(v) => v.push(nid),
        }
    }

    pub fn remove(&mut self, nid: &Nid) {
        match self {
            Nids::Root if *nid == Nid::root() => *self = Nids::List(Vec::new()),
            Nids::Root => {}
            Nids::List(v) => v.retain(|n| n != nid),
        }
    }
}

/// An execution: one exid, its task file in `run/`, its points log and,
/// at the end, its record. Its nodes live in the engine's one map of nodes
/// (a map per execution would cost a table per task); `nids` names the
/// live ones.
pub struct Execution {
    /// When the engine took the task (its `created` point; what a
    /// standalone task's `start_timeout` counts from; a flow's task nodes
    /// count from when each is queued).
    pub created_at: DateTime<Utc>,
    /// When the task file was written into `in/` (its modification time),
    /// the record's `created_at`; `None`: unknown, `created_at` stands.
    pub submitted_at: Option<DateTime<Utc>>,
    pub nids: Nids,
    /// A flow's tree, progress and life (`None`: a standalone task).
    pub flow: Option<Box<super::flows::FlowExec>>,
}

impl Execution {
    /// A standalone task's: an execution of the single node `0`.
    pub fn standalone(created_at: DateTime<Utc>) -> Execution {
        Execution {
            created_at,
            submitted_at: None,
            nids: Nids::Root,
            flow: None,
        }
    }
}

/// The engine's own lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Rebuilding from disk; scans take every file as it is.
    Starting,
    /// Claiming and running tasks.
    Running,
    /// `--drain`: running, and exiting once `in/` and `run/` are empty.
    Draining,
    /// SIGINT/SIGTERM: no new claims or starts; running taskers may finish
    /// until `grace_end`.
    Stopping { grace_end: tokio::time::Instant },
    /// The grace is over: running taskers were asked to stop.
    Ending,
}

impl Mode {
    pub fn is_stopping(self) -> bool {
        matches!(self, Mode::Stopping { .. } | Mode::Ending)
    }
}

/// The address of a node.
pub fn key(exid: &Exid, nid: &Nid) -> NodeKey {
    NodeKey {
        exid: exid.clone(),
        nid: nid.clone(),
    }
}
