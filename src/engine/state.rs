//! The engine's state: [`Execution`]s (one exid each: its `run/` file,
//! points log, record, cancel, recovery) above [`Node`]s (one nid each:
//! queueing, offering, spawning, points), each lifecycle one enum, and the
//! engine's own [`Mode`].
//!
//! A standalone task is an execution with the single node `0`; flows add
//! nodes to the same execution.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::policy::Effective;
use crate::model::names::{Exid, Nid, Taskee};
use crate::model::task::{timestamp, AttemptLog, ErrorKind, Refusal, Task};
use crate::scheduler::{Entry, Limit, NodeKey, TimerId};
use crate::tasker::{StopReason, TaskerConfig};

/// A queued item of the scheduler: a node and the generation it was
/// queued under (an item of an older generation is stale and dropped).
pub type Item = (NodeKey, u64);

/// Why the engine stops a running tasker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A cancel request, with its reason (SPEC 8).
    Cancel(String),
    /// The engine stops; the task stays in `run/` for the next start.
    Shutdown,
}

impl Stop {
    pub fn reason(&self) -> StopReason {
        match self {
            Stop::Cancel(_) => StopReason::Cancel,
            Stop::Shutdown => StopReason::Shutdown,
        }
    }
}

/// The process of a running node.
#[derive(Debug)]
pub enum Process {
    /// Being spawned off the loop; `started` is not logged yet.
    Spawning,
    /// Being spawned, and already asked to stop: the stop is passed on once
    /// the process exists.
    SpawningToStop(Stop),
    /// Runs (`started` logged); `stop` asks its driver to end it.
    Live {
        pgid: i32,
        stop: oneshot::Sender<StopReason>,
    },
    /// Runs and was asked to stop; its exit is awaited.
    Stopping { pgid: i32, why: Stop },
}

impl Process {
    /// Whether `started` is logged (the tasker's own points may follow).
    pub fn started(&self) -> bool {
        matches!(self, Process::Live { .. } | Process::Stopping { .. })
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
            (Process::Spawning, why) => Process::SpawningToStop(why),
            (Process::Live { pgid, stop }, why) => {
                let _ = stop.send(why.reason());
                Process::Stopping { pgid, why }
            }
            (Process::SpawningToStop(Stop::Shutdown), cancel @ Stop::Cancel(_)) => {
                Process::SpawningToStop(cancel)
            }
            (
                Process::Stopping {
                    pgid,
                    why: Stop::Shutdown,
                },
                cancel @ Stop::Cancel(_),
            ) => Process::Stopping { pgid, why: cancel },
            (other, _) => other,
        };
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
    /// Its slot in the taskers registry (see `registry`).
    pub slot: usize,
    /// `$SPOOLFLOW_POINTS`, and how much of it was copied.
    pub points_file: PathBuf,
    pub points_offset: u64,
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
    /// Its `run/` file is being rewritten (after `uncompleted`); queued
    /// again, after `after`, once that is durable.
    Saving { after: std::time::Duration },
    /// Its taskmaster runs off the loop; the node holds a worker slot.
    Offering(Box<Offer>),
    /// A tasker runs it.
    Running(Box<Run>),
    /// Its record is being committed.
    Committing,
}

/// A node: one task of an execution, with its own attempts and points.
#[derive(Debug)]
pub struct Node {
    pub task: Task,
    /// Bumped whenever the node is queued again, so stale scheduler
    /// entries and timers are recognised.
    pub gen: u64,
    pub state: NodeState,
    /// The `start_timeout` timer, removed once the node starts or ends.
    pub start_timer: Option<TimerId>,
    /// The attempt under way or next (1 for the first).
    pub attempt: u32,
    pub offers: u32,
    pub refusals: Vec<Refusal>,
    /// `uncompleted` replies in a row.
    pub uncompleted: u32,
    pub retries_done: u32,
    /// Taskers started for it so far, over every engine start (a
    /// recovered node counts the attempts that ran before the crash).
    pub starts: u32,
    /// When its latest tasker started (`None`: none in this engine).
    pub started_at: Option<DateTime<Utc>>,
    /// The taskee and tasker of the latest offer.
    pub taskee: Option<Taskee>,
    pub tasker_path: Option<String>,
    pub config: Option<Arc<TaskerConfig>>,
    /// The options in force: the task's over its tasker's over defaults,
    /// computed at allocation (before it, the task's over defaults).
    pub effective: Effective,
    /// A flow node whose payload is built from its flow when it is first
    /// offered (`task.payload` is empty until then).
    pub payload_from_flow: bool,
    /// Each attempt that started (the last one open while it runs): the
    /// record's `attempts_log` and `first_started_at`.
    pub attempts_log: Vec<AttemptLog>,
}

impl Node {
    pub fn new(task: Task) -> Node {
        let effective = Effective::of_task(&task.options);
        Node {
            task,
            gen: 0,
            state: NodeState::Queued { waited: false },
            start_timer: None,
            attempt: 1,
            offers: 0,
            refusals: Vec::new(),
            uncompleted: 0,
            retries_done: 0,
            starts: 0,
            started_at: None,
            taskee: None,
            tasker_path: None,
            config: None,
            effective,
            payload_from_flow: false,
            attempts_log: Vec::new(),
        }
    }

    /// The attempt under way has started (at `at`).
    pub fn begin_attempt(&mut self, at: DateTime<Utc>) {
        self.attempts_log.push(AttemptLog {
            attempt: self.attempt,
            started_at: timestamp(at),
            ended_at: None,
            outcome: None,
            kind: None,
        });
    }

    /// The attempt under way, if one started and is still open, ended
    /// (at `at`) with `outcome`.
    pub fn end_attempt(&mut self, at: DateTime<Utc>, outcome: &str, kind: Option<ErrorKind>) {
        if let Some(a) = self.attempts_log.last_mut().filter(|a| a.outcome.is_none()) {
            a.ended_at = Some(timestamp(at));
            a.outcome = Some(outcome.to_string());
            a.kind = kind;
        }
    }

    /// The attempts a record counts: the one under way counts once a
    /// tasker started for it.
    pub fn attempts(&self) -> u32 {
        if self.starts > 0 {
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

/// An execution: one exid, its task file in `run/`, its points log and,
/// at the end, its record. Its nodes live in the engine's one map of nodes
/// (a map per execution would cost a table per task); `nids` names the
/// live ones.
pub struct Execution {
    /// When the engine took the task (its `created` point; what
    /// `start_timeout` counts from).
    pub created_at: DateTime<Utc>,
    /// When the task file was written into `in/` (its modification time),
    /// the record's `created_at`; `None`: unknown, `created_at` stands.
    pub submitted_at: Option<DateTime<Utc>>,
    pub nids: Vec<Nid>,
    /// A flow's tree, progress and life (`None`: a standalone task).
    pub flow: Option<Box<super::flows::FlowExec>>,
}

impl Execution {
    /// A standalone task: an execution of the single node `0`.
    pub fn standalone(task: Task, created_at: DateTime<Utc>) -> (Execution, Node) {
        let exec = Execution {
            created_at,
            submitted_at: None,
            nids: vec![task.nid.clone()],
            flow: None,
        };
        (exec, Node::new(task))
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
