//! A tasker's exit and the timers: what ended is read by `outcome` (pure),
//! what follows is decided by `policy` (pure), and this file carries it
//! out — queue again, retry later, fail, abort or let go.

use std::time::Instant;

use super::outcome::{outcome, Outcome};
use super::policy::{self, AfterError};
use super::state::{NodeState, Process, Stop};
use super::{Engine, Timer};
use crate::model::names::Taskee;
use crate::model::point::Kind;
use crate::model::task::{Dur, ErrorKind, Object, Refusal, State, TaskError};
use crate::scheduler::NodeKey;
use crate::store::writer::Job;
use crate::tasker::Exit;

impl Engine {
    pub(super) fn on_exit(&mut self, key: NodeKey, gen: u64, exit: Exit) {
        // Points the tasker wrote last are copied while it is still running.
        self.finish_points(&key, gen);
        let Some(run) = self.take_run(&key, gen) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        let asked = run.process.stop_asked().cloned();
        // A running node's body is in memory (it was offered).
        let no_payload = Object::new();
        let payload = node.task.loaded().map_or(&no_payload, |b| &b.payload);
        let result = outcome(
            exit,
            asked.as_ref().map(Stop::reason),
            payload,
            node.effective().timeout,
        );
        self.release(&run.limits, run.slot.is_some());
        // Emptied: a slot that names a group at the next start is a tasker
        // that ran when the engine died (see `recovery::kill_orphans`).
        if let Some(slot) = run.slot {
            self.registry.writer().clear(slot);
            self.registry.give_slot(slot);
        }
        self.slurm_running.remove(&key);
        self.points_files.remove(run.points.path());
        // Most taskers write no point: the last look found no file.
        if !run.points.gone() {
            if let Some(left) = super::tasker_points::remove_entry(run.points.path()) {
                tracing::warn!("{left}");
            }
        }
        match result {
            Outcome::Stopped(_) => self.stopped(&key, asked),
            Outcome::Completed(payload) => {
                // Kept where a crash of the engine cannot lose it, until
                // its record (or its flow's progress) is durable.
                let created = self.executions.get(&key.exid).map(|e| e.created_at);
                if let (Some(node), Some(created)) = (self.nodes.get(&key), created) {
                    let life = (node.attempt, crate::model::task::timestamp(created));
                    self.replies.append(&key.exid, &key.nid, life, &payload);
                }
                if let Some(node) = self.node_mut(&key) {
                    node.uncompleted = 0;
                    node.task.set_payload(payload);
                }
                if matches!(asked, Some(Stop::Cancel(_))) && !self.is_flow(&key.exid) {
                    self.too_late_to_cancel(&key.exid);
                }
                self.finish(&key, State::Completed, None);
            }
            Outcome::Error(err) => self.error(&key, err),
            Outcome::Refused(reason) => self.refused(&key, run.taskee, reason),
            Outcome::Uncompleted { payload, after } => {
                self.uncompleted(&key, &run.taskee, payload, after)
            }
        }
    }

    /// The run of a node of generation `gen`, taken out of its state (the
    /// node is left queued, for what follows to decide); `None` for a
    /// stale message (not this node's run: nothing changes).
    pub(super) fn take_run(&mut self, key: &NodeKey, gen: u64) -> Option<Box<super::state::Run>> {
        let node = self.nodes.get_mut(key).filter(|n| n.gen == gen)?;
        match std::mem::replace(&mut node.state, NodeState::Queued { waited: false }) {
            NodeState::Running(run) => Some(run),
            other => {
                node.state = other;
                None
            }
        }
    }

    /// A run that ended as the engine asked (see [`Self::stopped`]).
    pub(super) fn on_stopped_run(&mut self, key: &NodeKey, why: Stop) {
        self.stopped(key, Some(why));
    }

    /// The engine stopped the tasker: a cancel aborts the task; a shutdown
    /// leaves it in `run/` for the next start.
    fn stopped(&mut self, key: &NodeKey, asked: Option<Stop>) {
        match asked {
            Some(Stop::Cancel(reason)) => {
                let err = TaskError::new(ErrorKind::Aborted, reason);
                self.finish(key, State::Aborted, Some(err));
            }
            Some(Stop::Fail(err)) => self.fail(key, err),
            // Stopped by the shutdown (or by a stop the driver saw first).
            _ => self.let_go(key),
        }
    }

    fn refused(&mut self, key: &NodeKey, taskee: Taskee, reason: String) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        // A refusal breaks a row of `uncompleted` replies.
        node.uncompleted = 0;
        node.end_attempt(chrono::Utc::now(), "refused", None);
        let refusals = &mut node.past_mut().refusals;
        refusals.push(Refusal {
            taskee: taskee.clone(),
            reason: reason.clone(),
        });
        let limit = policy::after_refusal(refusals);
        let p = self
            .point(key, Kind::Refused)
            .with("taskee", taskee.as_str())
            .with("reason", reason.as_str());
        self.log_idle(p);
        match limit {
            Some(err) => self.fail(key, err),
            None => self.enqueue(key),
        }
    }

    fn uncompleted(&mut self, key: &NodeKey, taskee: &Taskee, payload: Object, after: Option<Dur>) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        node.uncompleted += 1;
        node.end_attempt(chrono::Utc::now(), "uncompleted", None);
        node.task.set_payload(payload);
        let limit = policy::after_uncompleted(node.uncompleted);
        let mut p = self
            .point(key, Kind::Uncompleted)
            .with("taskee", taskee.as_str());
        if let Some(a) = after {
            p = p.with("after", a.to_string());
        }
        self.log_idle(p);
        if let Some(err) = limit {
            return self.fail(key, err);
        }
        if self.is_flow(&key.exid) {
            // A flow's run/ file is the flow's: the new payload goes to its
            // progress, and the node runs again once that is durable.
            let after = after.map(|a| a.0).unwrap_or_default();
            return self.flow_node_uncompleted(key, after);
        }
        // The new payload is made durable in run/ before the node runs
        // again, so that a restart resumes from it (and so that the node
        // may leave it there while it waits: see `rest_body`).
        let Some(node) = self.node_mut(key) else {
            return;
        };
        let after = after.map(|a| a.0).unwrap_or_default();
        let Some(body) = node.task.loaded() else {
            // Not expected: a node that ran was offered, with its body.
            let err = TaskError::new(ErrorKind::Work, "its payload was lost before it was saved");
            return self.fail(key, err);
        };
        let bytes = node.task.to_file_json(body).to_string().into_bytes();
        let name = format!("{}.json", node.task.id);
        let seq = self.rewrite(key, name, bytes);
        if let Some(node) = self.node_mut(key) {
            node.state = NodeState::Saving { after, seq };
        }
    }

    /// Sends a node's new `run/<name>` to the writer; returns the
    /// rewrite's number.
    pub(super) fn rewrite(&mut self, key: &NodeKey, name: String, bytes: Vec<u8>) -> u64 {
        self.rewrites += 1;
        self.writer.send(Job::Rewrite {
            key: key.clone(),
            seq: self.rewrites,
            dir: self.root.run(),
            name,
            bytes,
        });
        self.rewrites
    }

    /// Rewrite `seq` of a node's `run/` file is durable: a node saving its
    /// `uncompleted` payload by that rewrite or an earlier one is queued
    /// again (not on an earlier rewrite's end: a priority change's, say).
    pub(super) fn on_rewritten(&mut self, key: &NodeKey, seq: u64) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        if let NodeState::Saving { after, seq: saving } = node.state {
            if saving <= seq {
                self.enqueue_after(key, after);
            }
        }
    }

    /// A failed attempt: retried when its kind and the budget allow,
    /// failed otherwise (SPEC 7).
    pub(super) fn error(&mut self, key: &NodeKey, err: TaskError) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        // A failed attempt breaks a row of `uncompleted` replies.
        node.uncompleted = 0;
        let (delay, err) = match policy::after_error(err, node.retries_done, &node.effective()) {
            AfterError::Fail(err) => return self.fail(key, err),
            AfterError::Retry { delay, error } => (delay, error),
        };
        node.end_attempt(chrono::Utc::now(), "retried", Some(err.kind));
        node.retries_done += 1;
        node.attempt += 1;
        let attempt = node.attempt;
        let p = self
            .point(key, Kind::Retried)
            .with("reason", err.message.as_str())
            .with("kind", serde_json::to_value(err.kind).unwrap_or_default())
            .with("delay", Dur(delay).to_string())
            .with("attempt", attempt);
        self.log_idle(p);
        self.enqueue_after(key, delay);
    }

    /// Fails a node for good (aborted for `aborted` errors).
    pub(super) fn fail(&mut self, key: &NodeKey, err: TaskError) {
        let state = if err.kind == ErrorKind::Aborted {
            State::Aborted
        } else {
            State::Failed
        };
        self.finish(key, state, Some(err))
    }

    pub(super) fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.sched.pop_due(now) {
            match t {
                Timer::Ready(key, gen) => {
                    let due = self
                        .node(&key)
                        .is_some_and(|n| n.gen == gen && matches!(n.state, NodeState::Delayed));
                    if due {
                        self.enqueue(&key);
                    }
                }
                Timer::StartTimeout(key) => self.start_timed_out(&key),
                Timer::Wake(key) => self.flow_woke(&key.exid, &key.nid),
            }
        }
    }

    /// A node's `start_timeout` fired: unless it started meanwhile, it
    /// fails (a queue entry it leaves becomes stale).
    fn start_timed_out(&mut self, key: &NodeKey) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        node.start_timer = None;
        // A Slurm job still pending on the cluster, still being submitted
        // (`sbatch` waiting for the controller) or re-attached before it
        // started: its start timeout covers that wait too (SPEC 14); the
        // job is cancelled first, once it exists. A local spawn under way
        // is let start.
        let err = policy::start_timed_out(node.effective().start_timeout);
        let first = node.starts == 0;
        if let NodeState::Running(run) = &mut node.state {
            let remote = run.slot.is_none();
            let not_started = match run.process {
                Process::Pending { .. } => true,
                Process::Spawning | Process::Held { .. } | Process::Adopting { started: false } => {
                    remote
                }
                _ => false,
            };
            if first && not_started {
                run.process.ask_stop(Stop::Fail(err));
            }
            return;
        }
        let waiting = matches!(
            node.state,
            NodeState::Queued { .. }
                | NodeState::Delayed
                | NodeState::Saving { .. }
                | NodeState::Offering(_)
        );
        if node.starts > 0 || !waiting {
            return;
        }
        let err = policy::start_timed_out(node.effective().start_timeout);
        self.fail(key, err);
    }
}
