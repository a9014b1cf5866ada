//! Flows in the engine (SPEC 12). A flow is one execution; the pure
//! `flow::run::Flow` says which of its nodes run next, and this file carries
//! its steps out: task nodes become engine nodes (queued, offered, run,
//! retried exactly as standalone tasks), sleeps become timers, a failure
//! stops the running siblings. The flow's progress is made durable in its
//! `run/` file (through the writer) before the step that follows a node's
//! end is acted on, so a finished node never runs again after a crash.
//! One record ends the flow, once none of its taskers runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rhai::{Dynamic, Engine as Rhai, Scope, AST};
use serde_json::Value;

use super::state::{key, Execution, Nids, Node, NodeState, NodeTask, Stop};
use super::{Engine, Timer};
use crate::flow::journal::should_snapshot;
use crate::flow::run::{Action, Conditions, End, Flow, Progress, Step, TaskRun};
use crate::flow::tree::{self, FlowNode};
use crate::model::names::{Exid, Nid};
use crate::model::point::Point;
use crate::model::task::{timestamp, ErrorKind, Object, State, Task, TaskError};
use crate::scheduler::NodeKey;
use crate::store::writer::{Job, RecordJob};
use crate::text::quoted;

#[path = "flow_life.rs"]
mod life;
pub use life::FlowLife;

#[path = "flows_record.rs"]
mod record;
#[path = "flows_recovery.rs"]
mod recovery;
use record::flow_record;

/// A flow being run: its task file, its tree and progress, its compiled
/// `if` expressions, and where it is in its own life.
pub struct FlowExec {
    /// The flow's task file (id, domain, payload = its input, options,
    /// priority and headers that its task nodes default to).
    pub task: Task,
    /// That task file as JSON without its closing brace: the part of the
    /// `run/` file that never changes.
    head: String,
    pub flow: Flow,
    pub conds: Conds,
    pub life: FlowLife,
    /// Steps to act on once the progress write in flight is durable.
    pub pending: Vec<Step>,
    /// Steps that came while a write was in flight: the next write's.
    pub queued: Vec<Step>,
    /// Progress writes in flight (0 or 1).
    pub saving: usize,
    /// What is on disk of the progress: the next write's kind.
    pub disk: ProgressDisk,
}

/// The sizes of a flow's progress snapshot (in its `run/` file) and
/// journal, which decide whether the next write appends a delta or folds
/// the journal into a new snapshot (see `flow::journal`).
#[derive(Debug, Clone, Default)]
pub struct ProgressDisk {
    snapshot_bytes: u64,
    journal_bytes: u64,
    /// The next write must be a snapshot: the journal read back at a
    /// restart may end in a torn line, or an append failed.
    snapshot_next: bool,
}

impl ProgressDisk {
    /// A flow read back at a restart.
    fn recovered() -> ProgressDisk {
        ProgressDisk {
            snapshot_next: true,
            ..ProgressDisk::default()
        }
    }
}

impl FlowExec {
    /// Whether the flow's end is decided (SPEC 8: too late to cancel); see
    /// [`FlowLife::too_late_to_cancel`].
    pub fn has_ended(&self) -> bool {
        self.life.too_late_to_cancel(self.flow.is_ended())
    }
}

/// The compiled `if` expressions of one flow, run in the taskmaster's
/// sandbox (same bounds, same deadline); each compiled once.
pub struct Conds {
    rhai: Arc<Rhai>,
    asts: HashMap<String, AST>,
}

impl Conds {
    /// Compiles every `if` of `tree`; the first that does not compile is
    /// the error.
    pub fn compile(rhai: Arc<Rhai>, tree: &FlowNode) -> Result<Conds, String> {
        let mut asts = HashMap::new();
        for expr in tree::conditions(tree) {
            if asts.contains_key(expr) {
                continue;
            }
            let ast = rhai
                .compile_expression(expr)
                .map_err(|e| format!("`if` expression {} does not compile: {e}", quoted(expr)))?;
            asts.insert(expr.to_string(), ast);
        }
        Ok(Conds { rhai, asts })
    }
}

impl Conditions for Conds {
    fn eval(&mut self, nid: &Nid, expr: &str, payload: &Object) -> Result<bool, String> {
        let ast = match self.asts.get(expr) {
            Some(ast) => ast,
            None => {
                let ast = self
                    .rhai
                    .compile_expression(expr)
                    .map_err(|e| e.to_string())?;
                self.asts.entry(expr.to_string()).or_insert(ast)
            }
        };
        let mut scope = Scope::new();
        let payload = rhai::serde::to_dynamic(payload).map_err(|e| e.to_string())?;
        scope.push("payload", payload);
        let label = format!("`if` of node {nid}");
        let value = crate::sandbox::with_deadline(&label, crate::sandbox::RUN_DEADLINE, || {
            self.rhai.eval_ast_with_scope::<Dynamic>(&mut scope, ast)
        })
        .map_err(|e| match crate::sandbox::limit_exceeded(&e) {
            Some(limit) => format!("`if` {} exceeded the sandbox's {limit}", quoted(expr)),
            None => format!("`if` {}: {e}", quoted(expr)),
        })?;
        value
            .as_bool()
            .map_err(|t| format!("`if` {} gave {t}, not a boolean", quoted(expr)))
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Engine {
    /// A flow's resolved tree, read back, with its `if` expressions
    /// compiled: what a flow needs to run (an error rejects its file).
    pub(super) fn prepare_flow(&self, flow: &Value) -> Result<(FlowNode, Conds), String> {
        let tree = tree::parse(flow).map_err(|e| format!("flow: {e}"))?;
        let conds =
            Conds::compile(self.conditions.clone(), &tree).map_err(|e| format!("flow: {e}"))?;
        Ok((tree, conds))
    }

    /// A flow's task is in `run/`: make its execution and start it.
    pub(super) fn start_flow(
        &mut self,
        task: Task,
        tree: FlowNode,
        conds: Conds,
        created_at: DateTime<Utc>,
    ) {
        let exid = task.exid.clone();
        let input = task.payload.clone();
        let mut fx = FlowExec {
            head: run_file_head(&task),
            task,
            flow: Flow::new(tree),
            conds,
            life: FlowLife::Running,
            pending: Vec::new(),
            queued: Vec::new(),
            saving: 0,
            disk: ProgressDisk::default(),
        };
        let step = fx.flow.start(input, now_ms(), &mut fx.conds);
        self.insert_flow(exid.clone(), fx, created_at);
        // The first nodes run once the progress naming them is durable: a
        // crash before that starts the flow again with nothing run, a
        // crash after it recovers them as any later node.
        self.save_progress(&exid, step);
    }

    fn insert_flow(&mut self, exid: Exid, fx: FlowExec, created_at: DateTime<Utc>) {
        self.executions.insert(
            exid,
            Execution {
                submitted_at: None,
                created_at,
                nids: Nids::List(Vec::new()),
                flow: Some(Box::new(fx)),
            },
        );
    }

    /// A flow in `run/` that cannot run (its tree or an `if` no longer
    /// reads back): it fails `config` with the reason.
    pub(super) fn fail_flow_at_start(&mut self, task: Task, reason: String) {
        let exid = task.exid.clone();
        let fx = FlowExec {
            head: run_file_head(&task),
            task,
            flow: Flow::new(FlowNode {
                kind: tree::Kind::Sequence(Vec::new()),
                on_error: tree::OnError::Fail,
            }),
            conds: Conds {
                rhai: self.conditions.clone(),
                asts: HashMap::new(),
            },
            life: FlowLife::Ending(End::Failed {
                nid: Nid::root(),
                kind: ErrorKind::Config,
                message: reason,
            }),
            pending: Vec::new(),
            queued: Vec::new(),
            saving: 0,
            disk: ProgressDisk::default(),
        };
        self.insert_flow(exid.clone(), fx, Utc::now());
        self.maybe_end_flow(&exid);
    }

    /// A task node of a flow ended: the flow learns it, its progress goes
    /// to the writer, and what follows waits until that is durable.
    pub(super) fn flow_node_ended(&mut self, k: &NodeKey, state: State, err: Option<TaskError>) {
        let Some(mut node) = self.nodes.remove(k) else {
            return;
        };
        let Some(exec) = self.executions.get_mut(&k.exid) else {
            return;
        };
        exec.nids.remove(&k.nid);
        let Some(fx) = exec.flow.as_mut() else {
            return;
        };
        let run = TaskRun {
            taskee: node.past().taskee.as_ref().map(|t| t.to_string()),
            attempts: node.attempts(),
            started_at: node.past().started_at.map(timestamp),
            ended_at: Some(timestamp(Utc::now())),
        };
        let payload = node.task.take_loaded().unwrap_or_default().payload;
        // The flow learns of every end, even once it is ending or aborted
        // (it then only keeps the run for the record's `nodes`).
        {
            let now = now_ms();
            let step = match (state, err) {
                (State::Completed, _) => {
                    fx.flow
                        .task_completed(&k.nid, payload, run, now, &mut fx.conds)
                }
                (_, Some(e)) => {
                    fx.flow
                        .task_failed(&k.nid, e.kind, e.message, run, now, &mut fx.conds)
                }
                (_, None) => fx.flow.task_failed(
                    &k.nid,
                    ErrorKind::Aborted,
                    "aborted".into(),
                    run,
                    now,
                    &mut fx.conds,
                ),
            };
            if fx.life == FlowLife::Running {
                self.save_progress(&k.exid, step);
            }
        }
        self.maybe_end_flow(&k.exid);
    }

    /// A task node of a flow replied `uncompleted` (its payload is the
    /// reply's): the flow keeps the payload in its progress, and the node
    /// is queued again, after `after`, once that is durable. In a flow
    /// that is over it is queued again at once: such a flow starts nothing,
    /// and its end stops the node.
    pub(super) fn flow_node_uncompleted(&mut self, k: &NodeKey, after: Duration) {
        let payload = self
            .nodes
            .get(k)
            .and_then(|n| n.task.loaded())
            .map(|b| b.payload.clone());
        let Some(fx) = self
            .executions
            .get_mut(&k.exid)
            .and_then(|e| e.flow.as_mut())
        else {
            return;
        };
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        if payload.is_none() {
            // Not expected: a node that ran was offered, with its payload.
            tracing::warn!(
                "flow {}: node {}'s uncompleted payload was lost; it runs again from its input",
                k.exid,
                k.nid
            );
        }
        let step = match (&fx.life, payload) {
            (FlowLife::Running, Some(p)) => fx.flow.task_uncompleted(&k.nid, p, after_ms),
            _ => Step::default(),
        };
        if step.actions.is_empty() {
            return self.enqueue_after(k, after);
        }
        if let Some(node) = self.nodes.get_mut(k) {
            node.state = NodeState::Delayed;
        }
        self.save_progress(&k.exid, step);
    }

    /// Whether `exid` is a flow that starts no more taskers: its end is
    /// decided (a failure, say, whose progress is still being saved) or
    /// it is being cancelled. Its waiting nodes end with its next step.
    pub(super) fn flow_is_over(&self, exid: &Exid) -> bool {
        self.executions
            .get(exid)
            .and_then(|e| e.flow.as_ref())
            .is_some_and(|fx| fx.life != FlowLife::Running || fx.flow.is_ended())
    }

    /// A sleeping node's deadline came.
    pub(super) fn flow_woke(&mut self, exid: &Exid, nid: &Nid) {
        let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) else {
            return;
        };
        if fx.life != FlowLife::Running {
            return;
        }
        let step = fx.flow.woke(nid, now_ms(), &mut fx.conds);
        self.save_progress(exid, step);
    }

    /// Makes the flow's progress durable before `step` is acted on: one
    /// rewrite of its `run/` file at a time; steps that come while one is
    /// being written wait for the next, which covers them all (group
    /// commit within a flow: a busy `each` does not rewrite its progress
    /// once per run).
    fn save_progress(&mut self, exid: &Exid, step: Step) {
        let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) else {
            return;
        };
        if fx.saving > 0 {
            fx.queued.push(step);
            return;
        }
        fx.pending.push(step);
        self.write_progress(exid);
    }

    /// Sends the progress' changes to the writer: a journal line, or,
    /// once the journal has grown as large as the last snapshot, a new
    /// snapshot in the `run/` file (which removes the journal).
    fn write_progress(&mut self, exid: &Exid) {
        let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) else {
            return;
        };
        fx.saving = 1;
        // The replies of its nodes that ended so far are in this write.
        self.replies.writing(exid);
        let disk = &mut fx.disk;
        let journal = self.root.journal_file(&fx.task.id);
        if disk.snapshot_next || should_snapshot(disk.journal_bytes, disk.snapshot_bytes) {
            fx.flow.progress.mark_written();
            let bytes = run_file_bytes(&fx.head, &fx.flow.progress);
            *disk = ProgressDisk {
                snapshot_bytes: bytes.len() as u64,
                ..ProgressDisk::default()
            };
            self.writer.send(Job::Progress {
                exid: exid.clone(),
                dir: self.root.run(),
                name: format!("{}.json", fx.task.id),
                bytes,
                journal,
            });
        } else {
            let mut bytes = serde_json::to_vec(&fx.flow.progress.take_delta()).unwrap_or_default();
            bytes.push(b'\n');
            disk.journal_bytes += bytes.len() as u64;
            self.writer.send(Job::Journal {
                exid: exid.clone(),
                path: journal,
                bytes,
            });
        }
    }

    /// A progress write is durable: the steps it covers go on, and those
    /// that came meanwhile get the next write.
    pub(super) fn on_progress_saved(&mut self, exid: &Exid) {
        self.replies.written(exid);
        let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) else {
            return;
        };
        fx.saving = 0;
        let steps = std::mem::take(&mut fx.pending);
        if !fx.queued.is_empty() {
            fx.pending = std::mem::take(&mut fx.queued);
            self.write_progress(exid);
        }
        for step in steps {
            self.act(exid, step);
        }
        self.maybe_end_flow(exid);
    }

    /// Carries out a step of a flow.
    fn act(&mut self, exid: &Exid, step: Step) {
        for action in step.actions {
            match action {
                Action::Task {
                    nid,
                    taskee,
                    payload,
                    options,
                    priority,
                    headers,
                } => self.add_task_node(exid, nid, taskee, payload, options, priority, headers),
                Action::Sleep { nid, until_ms } => {
                    let left = until_ms.saturating_sub(now_ms()).max(0);
                    let due = Instant::now() + Duration::from_millis(left as u64);
                    self.sched.at(due, Timer::Wake(key(exid, &nid)));
                }
                Action::Cancel { nid } => {
                    let k = key(exid, &nid);
                    self.stop_flow_node(&k, "a sibling node failed");
                }
                Action::Again { nid, after_ms } => {
                    self.enqueue_after(&key(exid, &nid), Duration::from_millis(after_ms))
                }
            }
        }
        if let Some(end) = step.end {
            if let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) {
                if fx.life == FlowLife::Running {
                    fx.life = FlowLife::Ending(end);
                }
            }
            // Nodes still waiting are not needed any more.
            let waiting: Vec<NodeKey> = self.flow_nodes(exid, false);
            for k in waiting {
                self.stop_flow_node(&k, "the flow ended");
            }
        }
    }

    /// A task node of a flow: a task of the flow's domain whose options,
    /// priority and headers default to the flow's.
    #[allow(clippy::too_many_arguments)]
    fn add_task_node(
        &mut self,
        exid: &Exid,
        nid: Nid,
        taskee: crate::model::names::Taskee,
        payload: Option<Object>,
        options: crate::model::task::TaskOptions,
        priority: Option<i32>,
        headers: Option<Object>,
    ) {
        let Some(exec) = self.executions.get_mut(exid) else {
            return;
        };
        let Some(fx) = exec.flow.as_ref() else {
            return;
        };
        let flow = &fx.task;
        let task = Task {
            id: flow.id.clone(),
            exid: flow.exid.clone(),
            nid: nid.clone(),
            domain: flow.domain.clone(),
            tasker: Some(taskee),
            payload: Object::new(),
            priority: priority.unwrap_or(flow.priority),
            headers: headers.unwrap_or_else(|| flow.headers.clone()),
            options: crate::model::task::TaskOptions {
                timeout: options.timeout.or(flow.options.timeout),
                start_timeout: options.start_timeout.or(flow.options.start_timeout),
                retries: options.retries.or(flow.options.retries),
                retry_on_timeout: options.retry_on_timeout.or(flow.options.retry_on_timeout),
            },
            flow: None,
        };
        exec.nids.push(nid.clone());
        let k = key(exid, &nid);
        let mut node = Node::new(NodeTask::in_memory(task));
        let now = Utc::now();
        node.reached_at = Some(now);
        match payload {
            Some(p) => node.task.set_payload(p),
            None => node.payload_from_flow = true,
        }
        self.nodes.insert(k.clone(), Box::new(node));
        // A task node is created when the flow reaches it: its
        // `start_timeout` counts from now, not from the flow's claim (a
        // later stage may wait on earlier ones far longer). A node queued
        // again after a crash counts from its new queueing too.
        self.watch_node_start_timeout(&k, now);
        self.enqueue(&k);
    }

    /// Builds the payload of a flow node queued without one (a run of an
    /// `each`), now that it is offered: only the nodes about to run hold
    /// theirs.
    pub(super) fn build_flow_payload(&mut self, k: &NodeKey) {
        let Some(node) = self.nodes.get_mut(k) else {
            return;
        };
        if !std::mem::take(&mut node.payload_from_flow) {
            return;
        }
        if let Some(fx) = self.executions.get(&k.exid).and_then(|e| e.flow.as_ref()) {
            node.task.set_payload(fx.flow.input_of(&k.nid));
        }
    }

    /// Stops one task node of a flow: a running tasker is asked to stop
    /// (its node ends when it exits), a waiting node ends now.
    fn stop_flow_node(&mut self, k: &NodeKey, reason: &str) {
        let Some(node) = self.nodes.get_mut(k) else {
            return;
        };
        match &mut node.state {
            NodeState::Committing => {}
            NodeState::Running(run) => run.process.ask_stop(Stop::Cancel(reason.to_string())),
            _ => {
                let err = TaskError::new(ErrorKind::Aborted, reason);
                self.finish(k, State::Aborted, Some(err));
            }
        }
    }

    /// The live task nodes of a flow (`running`: those with a tasker; else
    /// those without).
    fn flow_nodes(&self, exid: &Exid, running: bool) -> Vec<NodeKey> {
        let Some(exec) = self.executions.get(exid) else {
            return Vec::new();
        };
        exec.nids
            .to_vec()
            .iter()
            .map(|nid| key(exid, nid))
            .filter(|k| {
                self.nodes
                    .get(k)
                    .is_some_and(|n| matches!(n.state, NodeState::Running(_)) == running)
            })
            .collect()
    }

    /// Cancels a flow (SPEC 12): its running taskers are stopped, its
    /// waiting nodes end, and once none runs the flow is aborted.
    pub(super) fn cancel_flow(&mut self, exid: &Exid, reason: &str) {
        let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) else {
            return;
        };
        if matches!(fx.life, FlowLife::Aborting(_)) {
            return;
        }
        fx.life = FlowLife::Aborting(reason.to_string());
        fx.pending.clear();
        fx.queued.clear();
        // Every unfinished node is marked aborted; the runs of those that
        // still end are kept for the record.
        let _ = fx.flow.cancel();
        let keys: Vec<NodeKey> = self
            .executions
            .get(exid)
            .map(|e| e.nids.to_vec().iter().map(|nid| key(exid, nid)).collect())
            .unwrap_or_default();
        for k in keys {
            self.stop_flow_node(&k, reason);
        }
        self.maybe_end_flow(exid);
    }

    /// Writes the flow's record once it ended and none of its nodes is
    /// left (and its last progress is durable).
    fn maybe_end_flow(&mut self, exid: &Exid) {
        let Some(exec) = self.executions.get(exid) else {
            return;
        };
        let Some(fx) = exec.flow.as_ref() else {
            return;
        };
        if !exec.nids.is_empty()
            || fx.saving > 0
            || matches!(fx.life, FlowLife::Running | FlowLife::Recording)
        {
            return;
        }
        let (state, error, payload) = match &fx.life {
            FlowLife::Ending(End::Completed(payload)) => (State::Completed, None, payload.clone()),
            FlowLife::Ending(End::Failed { nid, kind, message }) => (
                State::Failed,
                Some(TaskError::new(*kind, format!("node {nid}: {message}"))),
                fx.task.payload.clone(),
            ),
            FlowLife::Aborting(reason) => (
                State::Aborted,
                Some(TaskError::new(ErrorKind::Aborted, reason.clone())),
                fx.task.payload.clone(),
            ),
            FlowLife::Running | FlowLife::Recording => return,
        };
        let mut record = flow_record(fx, exec.created_at, state, error, payload);
        // Each life of the flow (a `retry`) is one attempt of it; its
        // nodes count their own.
        record.attempts = crate::store::history::attempts_before(&self.root, &fx.task.id) + 1;
        if let Some(t) = exec.submitted_at {
            record.created_at = Some(timestamp(t));
        }
        let mut bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        bytes.push(b'\n');
        let dir = if state == State::Completed {
            self.root.done()
        } else {
            self.root.failed()
        };
        let id = fx.task.id.clone();
        let root_key = key(exid, &Nid::root());
        self.ended(&record);
        self.committing += 1;
        let company = self.company_may_come();
        let job = RecordJob {
            key: root_key,
            dir,
            name: format!("{id}.json"),
            bytes,
            points_log: self.root.points_log(exid),
            final_point: Point::final_of(&record).to_line(),
            run_file: self.root.run_file(&id),
            journal: Some(self.root.journal_file(&id)),
        };
        self.writer.send_record(job, company);
        // The record's commit removes the execution (see on_written).
        if let Some(fx) = self.executions.get_mut(exid).and_then(|e| e.flow.as_mut()) {
            fx.life = FlowLife::Recording;
        }
    }
}

/// A flow's `run/` file: its task file (with the resolved tree) and its
/// progress. The task file part never changes, so it is serialized once
/// (`head`, see [`run_file_head`]) and only the progress each time.
fn run_file_bytes(head: &str, progress: &Progress) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(head.len() + 4096);
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(b",\"progress\":");
    // Serializing a struct of strings, maps and numbers cannot fail.
    let _ = serde_json::to_writer(&mut bytes, progress);
    bytes.push(b'}');
    bytes
}

/// The task file of a flow as JSON, without its closing brace.
fn run_file_head(task: &Task) -> String {
    let mut head = task.to_file_json().to_string();
    head.pop();
    head
}
