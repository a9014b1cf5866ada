//! The progress of one flow: a pure state machine. The engine tells a
//! [`Flow`] what happened (started, a task node completed or failed, a
//! sleep's deadline passed, a cancel) and gets back a [`Step`]: the
//! [`Action`]s to take (queue a task node, arm a timer, stop a task node)
//! and, once the root node has finished, the flow's [`End`].
//!
//! Everything needed to go on lies in [`Progress`], which the engine
//! writes into the flow's `run/` file at every node's end: after a crash,
//! deserialize it, build the [`Flow`] again and call [`Flow::resume`] for
//! the actions in flight; finished nodes never run again.
//!
//! Semantics where SPEC 12 is silent:
//! - a node that fails with `on_error` `continue` is recorded
//!   [`NodeProgress::Failed`] (its task run kept), its input passes through
//!   as its output, and `errors` gets `{ nid, kind, message }` with the nid
//!   of that node (which may be a container) and the kind and message of
//!   the failure that reached it;
//! - a container fails with the kind and message of the failure that
//!   reached it, and [`End::Failed`] names the node where the failure began
//!   (a task node, or the `if`/`each`/… node that failed by itself);
//! - nodes stopped because a sibling failed are recorded failed with kind
//!   `aborted` ("cancelled because node N failed"); a task node among them
//!   gets [`Action::Cancel`], a sleeping one nothing (its wake-up is
//!   ignored); children never started are [`NodeProgress::Skipped`], as is
//!   the branch of an `if` not taken;
//! - a root with `on_error` `continue` that fails ends the flow completed,
//!   with the flow's input as its payload;
//! - a late report of a cancelled task node changes nothing but keeps its
//!   [`TaskRun`] for the record;
//! - an `if` whose expression fails to evaluate fails with kind `user`;
//! - `each` reads the top-level payload key; its runs start in element
//!   order, the next as soon as one finishes;
//! - a `sleep` is always an action, even of zero length (the engine's
//!   timer fires at once).

use serde::{Deserialize, Serialize};

use super::cursor::{aborted, is_each_run, is_task, task_action, Failure, Machine, Outcome};
use super::journal::{Journaled, JournaledVec};
use super::tree::{self, FlowNode, Kind};
use crate::model::names::{Nid, Taskee};
use crate::model::task::{ErrorKind, Object, TaskOptions};

/// Everything a flow has done so far; serializable, and enough to go on
/// after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// Each node entered, skipped or finished, keyed by nid.
    #[serde(default)]
    pub nodes: Journaled<NodeProgress>,
    /// The failures let through by `on_error` `continue`, in the order they
    /// happened.
    #[serde(default)]
    pub errors: JournaledVec<NodeError>,
    /// Nodes added by `each` expansions so far (runs × the body's count),
    /// for the [`MAX_NODES`](super::tree::MAX_NODES) limit.
    #[serde(default)]
    pub spawned: usize,
    /// The cursor of each running `concurrence` and `each`: how many of its
    /// children or runs were started and have finished, so that an event
    /// costs O(log n) however many runs an `each` has. A cache: rebuilt
    /// from `nodes` when missing.
    #[serde(default, skip_serializing_if = "Journaled::is_empty")]
    pub cursors: Journaled<Cursor>,
    /// How the flow ended, once it has (the root finished, or
    /// [`Flow::cancel`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Ended>,
    /// How many journal deltas this progress holds (see
    /// [`journal`](super::journal)).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a flow ended, as kept in its [`Progress`] (see [`End`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Ended {
    Completed {
        payload: Object,
    },
    Failed {
        nid: String,
        kind: ErrorKind,
        message: String,
    },
}

impl From<&Ended> for End {
    fn from(e: &Ended) -> End {
        match e {
            Ended::Completed { payload } => End::Completed(payload.clone()),
            Ended::Failed { nid, kind, message } => End::Failed {
                nid: nid.parse().unwrap_or_else(|_| Nid::root()),
                kind: *kind,
                message: message.clone(),
            },
        }
    }
}

/// See [`Progress::cursors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub started: usize,
    pub finished: usize,
}

/// The state of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum NodeProgress {
    /// Entered (a container), or its task queued or running (a task node).
    Running {
        input: Object,
        /// The payload a task node's `uncompleted` reply gave it, to run
        /// with again (its `input` stays what the flow gave it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        again: Option<Object>,
    },
    /// A `sleep` waiting for its deadline (ms since the epoch).
    Sleeping { input: Object, until_ms: i64 },
    Done {
        output: Object,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskRun>,
    },
    Failed {
        kind: ErrorKind,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskRun>,
    },
    /// Never started: the branch of an `if` not taken, or a node after (or
    /// beside) a failure.
    Skipped,
}

impl NodeProgress {
    /// Whether the node has finished (done, failed or skipped).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            NodeProgress::Done { .. } | NodeProgress::Failed { .. } | NodeProgress::Skipped
        )
    }
}

/// What the record's `nodes[]` needs of a task node's run; the engine
/// fills it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    pub taskee: Option<String>,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

/// An entry of the record's `errors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeError {
    pub nid: String,
    pub kind: ErrorKind,
    pub message: String,
}

/// What the engine must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue task node `nid` with `payload`; `options`, `priority` and
    /// `headers` as written on the node (the engine applies the flow's
    /// where they are `None`). A `None` payload is [`Flow::input_of`] the
    /// node, to be built when the node is about to run (a run of an
    /// `each`: its input holds the whole array, and 10 000 queued runs
    /// must not each hold a copy).
    Task {
        nid: Nid,
        taskee: Taskee,
        payload: Option<Object>,
        options: TaskOptions,
        priority: Option<i32>,
        headers: Option<Object>,
    },
    /// Call [`Flow::woke`] for `nid` once `until_ms` has passed.
    Sleep { nid: Nid, until_ms: i64 },
    /// Stop task node `nid` (a sibling failed, or the flow is cancelled);
    /// what it reports afterwards is ignored.
    Cancel { nid: Nid },
    /// Queue task node `nid` again, `after_ms` from now, with the payload
    /// of its `uncompleted` reply (see [`Flow::task_uncompleted`]).
    Again { nid: Nid, after_ms: u64 },
}

/// How a flow ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The root finished; its output is the flow's payload.
    Completed(Object),
    /// The root failed; `nid` is the node where the failure began.
    Failed {
        nid: Nid,
        kind: ErrorKind,
        message: String,
    },
}

/// The answer to one event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub actions: Vec<Action>,
    pub end: Option<End>,
}

/// Evaluates an `if` expression against a payload: `Ok(true/false)`, or
/// `Err(message)` (the `if` node then fails, kind `user`).
pub trait Conditions {
    fn eval(&mut self, nid: &Nid, expr: &str, payload: &Object) -> Result<bool, String>;
}

impl<F> Conditions for F
where
    F: FnMut(&Nid, &str, &Object) -> Result<bool, String>,
{
    fn eval(&mut self, nid: &Nid, expr: &str, payload: &Object) -> Result<bool, String> {
        self(nid, expr, payload)
    }
}

/// One flow: its (resolved) tree and its progress. After a restart, build
/// it as `Flow { tree, progress }` from the stored tree and progress.
#[derive(Debug, Clone)]
pub struct Flow {
    pub tree: FlowNode,
    pub progress: Progress,
}

impl Flow {
    /// A flow not started yet.
    pub fn new(tree: FlowNode) -> Flow {
        Flow {
            tree,
            progress: Progress::default(),
        }
    }

    /// Enters the root with the flow's payload. Does nothing on a flow
    /// already started.
    pub fn start(&mut self, input: Object, now_ms: i64, cond: &mut dyn Conditions) -> Step {
        if !self.progress.nodes.is_empty() || self.is_ended() {
            return Step::default();
        }
        let mut m = self.machine(now_ms, cond);
        if let Some(r) = m.enter(&Nid::root(), m.tree, input) {
            m.finish_root(r);
        }
        m.step
    }

    /// Task node `nid` completed with `output`. Ignored (an empty step)
    /// unless the node is running: a late reply of a cancelled node only
    /// has its `run` kept for the record.
    pub fn task_completed(
        &mut self,
        nid: &Nid,
        output: Object,
        run: TaskRun,
        now_ms: i64,
        cond: &mut dyn Conditions,
    ) -> Step {
        self.task_ended(nid, Ok(output), run, now_ms, cond)
    }

    /// Task node `nid` replied `uncompleted` with `payload`: it runs again
    /// with it, `after_ms` from now. The payload is kept in the progress
    /// (so that a restart runs the node from it, not from its input), and
    /// the step queues the node again once that is durable. Ignored (an
    /// empty step) unless the node is a running task node of a flow that
    /// has not ended.
    pub fn task_uncompleted(&mut self, nid: &Nid, payload: Object, after_ms: u64) -> Step {
        if self.is_ended() || !is_task(&self.tree, nid) {
            return Step::default();
        }
        match self.progress.nodes.get_mut(nid.as_str()) {
            Some(NodeProgress::Running { again, .. }) => *again = Some(payload),
            _ => return Step::default(),
        }
        Step {
            actions: vec![Action::Again {
                nid: nid.clone(),
                after_ms,
            }],
            end: None,
        }
    }

    /// Task node `nid` failed for good (retries are the engine's). Ignored
    /// as [`Flow::task_completed`] is.
    pub fn task_failed(
        &mut self,
        nid: &Nid,
        kind: ErrorKind,
        message: String,
        run: TaskRun,
        now_ms: i64,
        cond: &mut dyn Conditions,
    ) -> Step {
        let failure = Failure {
            nid: nid.clone(),
            kind,
            message,
        };
        self.task_ended(nid, Err(failure), run, now_ms, cond)
    }

    fn task_ended(
        &mut self,
        nid: &Nid,
        result: Outcome,
        run: TaskRun,
        now_ms: i64,
        cond: &mut dyn Conditions,
    ) -> Step {
        let on_error = match tree::at(&self.tree, nid) {
            Some(n) if matches!(n.kind, Kind::Task { .. }) => n.on_error,
            _ => return Step::default(),
        };
        let derived = super::cursor::input_of(&self.tree, &self.progress, nid);
        let input = match self.progress.nodes.get_mut(nid.as_str()) {
            // (No node runs once the flow has ended.)
            Some(NodeProgress::Running { .. }) if self.progress.end.is_none() => derived,
            Some(NodeProgress::Failed {
                kind: ErrorKind::Aborted,
                task: task @ None,
                ..
            }) => {
                *task = Some(run);
                return Step::default();
            }
            _ => return Step::default(),
        };
        let mut m = self.machine(now_ms, cond);
        let r = m.settle(nid, on_error, input, result, Some(run));
        m.bubble(nid.clone(), r);
        m.step
    }

    /// Sleep node `nid`'s deadline passed: it completes with its input as
    /// output. Called early, it answers the same [`Action::Sleep`] again;
    /// for a node not sleeping it does nothing.
    pub fn woke(&mut self, nid: &Nid, now_ms: i64, cond: &mut dyn Conditions) -> Step {
        if self.is_ended() {
            return Step::default();
        }
        let on_error = match tree::at(&self.tree, nid) {
            Some(n) if matches!(n.kind, Kind::Sleep(_)) => n.on_error,
            _ => return Step::default(),
        };
        let input = match self.progress.nodes.get_mut(nid.as_str()) {
            Some(NodeProgress::Sleeping { until_ms, .. }) if now_ms < *until_ms => {
                return Step {
                    actions: vec![Action::Sleep {
                        nid: nid.clone(),
                        until_ms: *until_ms,
                    }],
                    end: None,
                }
            }
            Some(NodeProgress::Sleeping { input, .. }) => std::mem::take(input),
            _ => return Step::default(),
        };
        let mut m = self.machine(now_ms, cond);
        let r = m.settle(nid, on_error, input.clone(), Ok(input), None);
        m.bubble(nid.clone(), r);
        m.step
    }

    /// After a restart: an [`Action::Task`] for every running task node
    /// (with its stored input) and an [`Action::Sleep`] for every sleeping
    /// node, in nid order, and the [`End`] if the flow had ended; nothing
    /// changes. A flow never started gives an empty step: call
    /// [`Flow::start`].
    pub fn resume(&self) -> Step {
        let mut actions = Vec::new();
        for (key, p) in &self.progress.nodes {
            let Ok(nid) = key.parse::<Nid>() else {
                continue;
            };
            match p {
                NodeProgress::Running { input, again } => {
                    if let Some(node) = tree::at(&self.tree, &nid) {
                        // A run of an `each` stores no input: it is derived.
                        let derived = input.is_empty() && is_each_run(&self.tree, &nid);
                        let payload = match again {
                            Some(again) => Some(again.clone()),
                            None => (!derived).then(|| input.clone()),
                        };
                        if let Some(a) = task_action(&nid, node, payload) {
                            actions.push(a);
                        }
                    }
                }
                NodeProgress::Sleeping { until_ms, .. } => actions.push(Action::Sleep {
                    nid,
                    until_ms: *until_ms,
                }),
                _ => {}
            }
        }
        Step {
            actions,
            end: self.end(),
        }
    }

    /// Cancels the flow: an [`Action::Cancel`] for every running task node;
    /// every unfinished node (the root included) is recorded failed, kind
    /// `aborted`, and later events are ignored. The step has no `end`: the
    /// engine aborts the flow itself (afterwards [`Flow::end`] reports it
    /// failed, kind `aborted`, at the root).
    pub fn cancel(&mut self) -> Step {
        let mut step = Step::default();
        if self.is_ended() {
            return step;
        }
        let message = "cancelled".to_string();
        let tree = &self.tree;
        self.progress.nodes.update_prefix("", |key, p| {
            if p.is_final() {
                return false;
            }
            if let (NodeProgress::Running { .. }, Ok(nid)) = (&*p, key.parse::<Nid>()) {
                if is_task(tree, &nid) {
                    step.actions.push(Action::Cancel { nid });
                }
            }
            *p = aborted(&message);
            true
        });
        self.progress.nodes.insert("0".into(), aborted(&message));
        self.progress.cursors.clear();
        self.progress.end = Some(Ended::Failed {
            nid: "0".into(),
            kind: ErrorKind::Aborted,
            message,
        });
        step
    }

    /// The input of running node `nid` (the payload of its task): what
    /// its progress stores, or for a run of an `each` the `each`'s input
    /// with `item` and `index` set. Empty for a node not running.
    pub fn input_of(&self, nid: &Nid) -> Object {
        super::cursor::input_of(&self.tree, &self.progress, nid)
    }

    /// The task nodes running (queued, offered or running in the engine).
    pub fn running_tasks(&self) -> Vec<Nid> {
        self.progress
            .nodes
            .iter()
            .filter(|(_, p)| matches!(p, NodeProgress::Running { .. }))
            .filter_map(|(k, _)| k.parse::<Nid>().ok())
            .filter(|nid| is_task(&self.tree, nid))
            .collect()
    }

    /// Whether the flow has ended (its root finished, or it was
    /// cancelled).
    pub fn is_ended(&self) -> bool {
        self.progress.end.is_some()
    }

    /// The flow's end, once it has ended.
    pub fn end(&self) -> Option<End> {
        self.progress.end.as_ref().map(End::from)
    }

    fn machine<'a>(&'a mut self, now_ms: i64, cond: &'a mut dyn Conditions) -> Machine<'a> {
        Machine {
            tree: &self.tree,
            progress: &mut self.progress,
            cond,
            now_ms,
            step: Step::default(),
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
