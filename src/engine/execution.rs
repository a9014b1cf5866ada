//! The execution layer: an execution (one exid) is created when its task
//! is claimed, ends when its nodes are done — its record goes to the
//! durable writer, which logs the final point once the record is durable —
//! and is cancelled or let go as a whole. Nothing outside this file
//! assumes how many nodes an execution has.

use chrono::{DateTime, Utc};

use super::state::{key, Execution, Loaded, Node, NodeState, Stop};
use super::{Engine, EngineError};
use crate::model::names::Exid;
use crate::model::point::Point;
use crate::model::task::{timestamp, ErrorKind, Record, State, TaskError};
use crate::scheduler::NodeKey;
use crate::store::writer::{Done, RecordJob};

impl Engine {
    /// Adds a standalone task's execution and queues its node, with its
    /// `start_timeout` watched from the execution's creation.
    pub(super) fn insert_execution(&mut self, exid: Exid, exec: Execution, mut node: Box<Node>) {
        let created_at = exec.created_at;
        let k = key(&exid, &node.task.nid);
        self.executions.insert(exid, exec);
        self.names.share(&mut node.task);
        self.nodes.insert(k.clone(), node);
        self.watch_node_start_timeout(&k, created_at);
        self.enqueue(&k);
    }

    /// Whether an execution is a flow.
    pub(super) fn is_flow(&self, exid: &Exid) -> bool {
        self.executions.get(exid).is_some_and(|e| e.flow.is_some())
    }

    /// Sets a node's `start_timeout` timer when its task file has one.
    pub(super) fn watch_node_start_timeout(&mut self, k: &NodeKey, created_at: DateTime<Utc>) {
        let Some(st) = self.node(k).and_then(|n| n.task.options().start_timeout) else {
            return;
        };
        self.arm_start_timeout(k, st, created_at, std::time::Duration::ZERO);
    }

    /// When a node's `start_timeout` started counting: when its flow
    /// reached it, else its execution's creation.
    pub(super) fn start_clock(&self, k: &NodeKey) -> Option<DateTime<Utc>> {
        let exec = self.executions.get(&k.exid)?;
        Some(self.node(k)?.reached_at.unwrap_or(exec.created_at))
    }

    /// Sets the `start_timeout` timer (the task's, else its tasker's) of a
    /// re-attached Slurm job that had not started: the engine's restart
    /// does not stop the clock, which runs from `created` (a flow's node:
    /// from when the restart reached it again, as for a node queued again
    /// after a crash, since its progress keeps no time for it). It fires no
    /// sooner than two polls of Slurm from now, so that a job that started
    /// while the engine was down is seen running first.
    pub(super) fn watch_adopted_start_timeout(&mut self, k: &NodeKey) {
        let Some(created_at) = self.start_clock(k) else {
            return;
        };
        let Some(node) = self.node(k) else {
            return;
        };
        if node.starts != 0 || node.start_timer.is_some() {
            return;
        }
        if let Some(st) = node.effective().start_timeout {
            let polls = self.options.slurm_poll.saturating_mul(2);
            self.arm_start_timeout(k, st, created_at, polls);
        }
    }

    fn arm_start_timeout(
        &mut self,
        k: &NodeKey,
        st: crate::model::task::Dur,
        created_at: DateTime<Utc>,
        at_least: std::time::Duration,
    ) {
        let elapsed = (Utc::now() - created_at).to_std().unwrap_or_default();
        // Passed already: the timer fires at once (or `at_least` from
        // now) and fails the node.
        let left = super::policy::start_time_left(st, elapsed)
            .unwrap_or_default()
            .max(at_least);
        let timer = self.sched.at(
            std::time::Instant::now() + left,
            super::Timer::StartTimeout(k.clone()),
        );
        if let Some(node) = self.node_mut(k) {
            node.start_timer = Some(timer);
        }
    }

    /// A node leaves the queue or the pool: its queue entries go stale,
    /// and a worker slot it held for an offer goes back.
    fn leave_waiting(&mut self, k: &NodeKey) {
        let Some(node) = self.node_mut(k) else {
            return;
        };
        let state = std::mem::replace(&mut node.state, NodeState::Committing);
        let timer = node.start_timer.take();
        if let Some(timer) = timer {
            self.sched.cancel(timer);
        }
        if let NodeState::Offering(offer) = state {
            self.sched.unreserve();
            self.pass_on(offer.entry.woken_by());
        }
    }

    /// Ends a node. A standalone task's execution ends with it: its record
    /// and final point go to the writer.
    pub(super) fn finish(&mut self, k: &NodeKey, state: State, err: Option<TaskError>) {
        if self
            .node(k)
            .is_some_and(|n| matches!(n.state, NodeState::Running(_)))
        {
            // A running node ends through its tasker's exit.
            tracing::error!("{}/{} ended while its tasker runs; ignored", k.exid, k.nid);
            return;
        }
        self.leave_waiting(k);
        if self.is_flow(&k.exid) {
            return self.flow_node_ended(k, state, err);
        }
        let Some(exec) = self.executions.get(&k.exid) else {
            return;
        };
        let created_at = exec.submitted_at.unwrap_or(exec.created_at);
        let body = self.body_for_record(k);
        let Some(node) = self.node_mut(k) else {
            return;
        };
        let now = Utc::now();
        node.end_attempt(now, state.as_str(), err.as_ref().map(|e| e.kind));
        let mut record = record_of(node, &k.exid, created_at, state, body);
        record.reason = err.as_ref().map(|e| e.message.clone());
        record.error = err;
        // The last attempt ends when the task does.
        record.ended_at = Some(timestamp(now));
        let id = node.task.id.clone();
        let mut bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
        bytes.push(b'\n');
        let dir = if state == State::Completed {
            self.root.done()
        } else {
            self.root.failed()
        };
        self.ended(&record);
        self.committing += 1;
        let company = self.company_may_come();
        let job = RecordJob {
            key: k.clone(),
            dir,
            name: format!("{id}.json"),
            bytes,
            points_log: self.root.points_log(&k.exid),
            final_point: Point::final_of(&record).to_line(),
            run_file: self.root.run_file(&id),
            journal: None,
        };
        self.writer.send_record(job, company);
    }

    /// Whether a record just sent (and counted in `committing`) may wait
    /// for others to commit with it (see [`record_may_have_company`]).
    /// Nodes whose records are on their way (this one among them) are no
    /// company: their records were sent already. A flow's record has no
    /// node of its own, so this counts one node too few for each flow
    /// record in flight: a record then only shares less, it never waits
    /// for nothing.
    pub(super) fn company_may_come(&self) -> bool {
        let others = self.nodes.len().saturating_sub(self.committing);
        record_may_have_company(others, !self.claiming.is_empty() || !self.scan.is_empty())
    }

    /// The payload and headers of a node's record, taken from it: in
    /// memory once it was offered; read back from its `run/` file when it
    /// ends while waiting (cancelled, timed out). A file that cannot be
    /// read leaves them empty: the task ends all the same, and the log
    /// says why they are missing.
    fn body_for_record(&mut self, k: &NodeKey) -> Loaded {
        let limit = super::body::limit(self.options.input_limit);
        let Some(node) = self.node_mut(k) else {
            return Loaded::default();
        };
        if let Some(body) = node.task.take_loaded() {
            return body;
        }
        let id = node.task.id.clone();
        super::body::read(&self.root, &id, limit).unwrap_or_else(|e| {
            tracing::warn!("task {id}: its record goes without payload and headers: {e}");
            Loaded::default()
        })
    }

    /// Lets go of a node without a record (the engine stops): its task
    /// stays in `run/` for the next start.
    pub(super) fn let_go(&mut self, k: &NodeKey) {
        self.leave_waiting(k);
        self.remove_node(k);
    }

    fn remove_node(&mut self, k: &NodeKey) {
        self.nodes.remove(k);
        let Some(exec) = self.executions.get_mut(&k.exid) else {
            return;
        };
        exec.nids.remove(&k.nid);
        if exec.nids.is_empty() {
            self.executions.remove(&k.exid);
            self.points.close(&k.exid);
            self.release_cancels(&k.exid);
        }
    }

    /// An execution's record is durable: the cancel requests applied to it
    /// have done their work and go. (A crash before leaves them in
    /// `cancel/`: the next start applies them again, or rejects them as
    /// too late once the record is there.)
    fn release_cancels(&mut self, exid: &Exid) {
        if self.held_cancels.is_empty() {
            return;
        }
        for path in self.take_held_cancels(exid) {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove the cancel request {}: {e}", path.display());
                }
            }
        }
    }

    /// A task completed before the cancel accepted for it reached its
    /// tasker: the requests go to `rejected/` with why, not silently.
    pub(super) fn too_late_to_cancel(&mut self, exid: &Exid) {
        for path in self.take_held_cancels(exid) {
            let why = format!("task {exid} completed before the cancel reached its tasker");
            self.reject(&path, &why);
        }
    }

    /// The cancel requests held for `exid`, no longer held.
    fn take_held_cancels(&mut self, exid: &Exid) -> Vec<std::path::PathBuf> {
        let held: Vec<std::path::PathBuf> = self
            .held_cancels
            .iter()
            .filter(|(_, e)| *e == exid)
            .map(|(p, _)| p.clone())
            .collect();
        for path in &held {
            self.held_cancels.remove(path);
        }
        held
    }

    /// What the durable writer finished.
    pub(super) fn on_written(&mut self, batch: Vec<Done>) -> Result<(), EngineError> {
        for done in batch {
            match done {
                Done::Record { key, .. } => {
                    // The writer logged the final point.
                    self.committing = self.committing.saturating_sub(1);
                    self.replies.forget(&key.exid);
                    self.remove_node(&key);
                }
                Done::Claimed { exid, from } => {
                    self.on_claimed(&exid);
                    self.path_done(&from);
                }
                Done::ClaimTaken { exid, from } => self.on_claim_taken(&exid, &from),
                Done::Rewritten(key, seq) => {
                    self.priority_saved(&key, seq);
                    self.on_rewritten(&key, seq);
                }
                Done::Progress { exid } => self.on_progress_saved(&exid),
                Done::Rejected { path, retake: true } => self.path_done(&path),
                Done::Rejected {
                    path,
                    retake: false,
                } => self.unmovable(&path),
                Done::Fatal(e) => return Err(self.stop_on_disk_failure(e)),
            }
        }
        Ok(())
    }

    /// Cancels an execution (SPEC 8): its running taskers are stopped (and
    /// their nodes aborted when they exit), its waiting nodes aborted now.
    /// One that has ended already (its record being written, or a flow
    /// that failed or completed and waits for its last taskers to stop)
    /// keeps its end: the request goes to `rejected/`.
    pub(super) fn cancel(
        &mut self,
        exid: &crate::model::names::Exid,
        reason: &str,
        request: &std::path::Path,
    ) {
        if self.has_ended(exid) {
            return self.reject(request, &format!("task {exid} has ended already"));
        }
        let Some(exec) = self.executions.get(exid) else {
            return;
        };
        // Kept until the record is durable (see release_cancels).
        self.held_cancels
            .insert(request.to_path_buf(), exid.clone());
        if exec.flow.is_some() {
            return self.cancel_flow(exid, reason);
        }
        let keys: Vec<NodeKey> = exec
            .nids
            .to_vec()
            .iter()
            .map(|nid| key(exid, nid))
            .collect();
        let mut waiting = Vec::new();
        for k in keys {
            let Some(node) = self.nodes.get_mut(&k) else {
                continue;
            };
            match &mut node.state {
                NodeState::Committing => {}
                NodeState::Running(run) => run.process.ask_stop(Stop::Cancel(reason.to_string())),
                _ => waiting.push(k),
            }
        }
        for k in waiting {
            let err = TaskError::new(ErrorKind::Aborted, reason);
            self.finish(&k, State::Aborted, Some(err));
        }
    }

    /// Whether an execution's end is decided (SPEC 8: too late to cancel):
    /// a flow that completed, failed or is being recorded; a standalone
    /// task whose record is being committed.
    fn has_ended(&self, exid: &Exid) -> bool {
        let Some(exec) = self.executions.get(exid) else {
            return false;
        };
        match exec.flow.as_ref() {
            Some(fx) => fx.has_ended(),
            None => exec.nids.to_vec().iter().all(|nid| {
                self.nodes
                    .get(&key(exid, nid))
                    .is_some_and(|n| matches!(n.state, NodeState::Committing))
            }),
        }
    }
}

/// Whether a final record may wait for company (`store::writer::LINGER`):
/// only when something else may end — another node not yet recorded
/// (queued, running, offered, parked, delayed for a retry: any of them
/// counts, even one that will not end within the wait) or task files
/// being taken in. A record with nothing else in the engine is written
/// at once.
pub(super) fn record_may_have_company(other_nodes: usize, taking_in: bool) -> bool {
    other_nodes > 0 || taking_in
}

/// A node's record (SPEC 9) in `state`, with `body` as its payload and
/// headers (and no error: the caller sets it).
pub(super) fn record_of(
    node: &Node,
    exid: &Exid,
    created_at: DateTime<Utc>,
    state: State,
    body: Loaded,
) -> Record {
    let past = node.past();
    Record {
        id: node.task.id.clone(),
        exid: exid.clone(),
        nid: node.task.nid.clone(),
        domain: node.task.domain.clone(),
        tasker: node.task.tasker.clone(),
        taskee: past.taskee.clone(),
        tasker_path: past.tasker_path.clone(),
        state,
        reason: None,
        error: None,
        attempts: node.attempts(),
        offers: node.offers,
        priority: node.task.priority,
        headers: body.headers,
        created_at: Some(timestamp(created_at)),
        started_at: past.started_at.map(timestamp),
        ended_at: if matches!(state, State::Running | State::Queued) {
            None
        } else {
            Some(timestamp(Utc::now()))
        },
        payload: body.payload,
        flow: None,
        errors: None,
        nodes: None,
        first_started_at: past.attempts_log.first().map(|a| a.started_at.clone()),
        attempts_log: past.attempts_log.clone(),
        options: node.task.options().to_record(),
    }
}

#[cfg(test)]
mod tests {
    use super::record_may_have_company;

    #[test]
    fn a_record_waits_for_company_only_when_something_else_may_end() {
        assert!(!record_may_have_company(0, false));
        assert!(record_may_have_company(1, false));
        assert!(record_may_have_company(0, true));
        assert!(record_may_have_company(7, true));
    }
}
