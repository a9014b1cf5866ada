//! A flow found in `run/` at start-up (SPEC 10, 12, 14): its progress
//! read back and resumed; its task nodes that were running queued again
//! as `recovered`, or, run as Slurm jobs that can be followed, re-attached;
//! those whose tasker had replied completed from the replies journal; and
//! those a failure stopped, whose end the engine never saw, kept in the
//! record as `aborted`.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::super::replies::Replied;
use super::super::state::key;
use super::super::Engine;
use super::{run_file_head, Conds, FlowExec, FlowLife, ProgressDisk};
use crate::flow::run::{Action, Flow, NodeProgress, Step};
use crate::model::names::{Exid, Nid, TaskId};
use crate::model::point::{Kind, Point};
use crate::model::task::{ErrorKind, Object, State, Task};
use crate::scheduler::NodeKey;

/// A running node of a recovered flow, its past read from the points
/// log, and the Slurm job it is re-attached to, if any.
type NodePast = (
    NodeKey,
    super::super::history::History,
    Option<(super::super::history::OpenRun, crate::tasker::slurm::Adopt)>,
);

impl Engine {
    /// A flow found in `run/` at start-up: its progress read back, the task
    /// nodes that were running `recovered` and queued again (but those
    /// whose tasker had replied, as the replies journal tells, which are
    /// completed with that reply), the sleeps' deadlines kept.
    pub(in crate::engine) fn recover_flow(
        &mut self,
        task: Task,
        progress: Option<Value>,
        created_at: DateTime<Utc>,
        replied: &mut HashMap<(Exid, Nid), Replied>,
    ) {
        let Some(flow) = task.flow.clone() else {
            return;
        };
        let progress = match crate::store::flows::load_progress(&self.root, &task.id, progress) {
            Ok(p) => p,
            Err(reason) => return self.fail_flow_at_start(task, reason),
        };
        let (tree, conds) = match self.prepare_flow(&flow) {
            Ok(x) => x,
            Err(reason) => return self.fail_flow_at_start(task, reason),
        };
        let exid = task.exid.clone();
        let Some(progress) = progress else {
            // It never got past its start: start it again.
            return self.start_flow(task, tree, conds, created_at);
        };
        let mut flow = Flow::new(tree);
        flow.progress = progress;
        let mut conds = conds;
        let points = super::super::history::histories(&self.root, &exid);
        keep_stopped_runs(&mut flow, &mut conds, &points, &task.id);
        let step = flow.resume();
        let life = crate::model::task::timestamp(created_at);
        let (pasts, completed) = self.running_pasts(&task, &step, &points, (&life, replied));
        let fx = FlowExec {
            head: run_file_head(&task),
            task,
            flow,
            conds,
            life: FlowLife::Running,
            pending: Vec::new(),
            queued: Vec::new(),
            saving: 0,
            disk: ProgressDisk::recovered(),
        };
        self.insert_flow(exid.clone(), fx, created_at);
        self.act(&exid, step);
        for (k, history, job) in pasts {
            if let Some(node) = self.nodes.get_mut(&k) {
                history.restore(node);
            }
            if let Some((open, found)) = job {
                self.adopt_node(&k, open, found);
            }
        }
        // Each reply waits for the progress write that holds its node's
        // end: held only as that end is applied, or an earlier write
        // (for another node's end) would be taken to cover it.
        for (k, reply) in completed {
            self.replies.hold(&k.exid, reply.gen);
            self.complete_replied_node(&k, reply.payload);
        }
        self.maybe_end_flow(&exid);
    }

    /// The task nodes of a recovered flow that were running, each with
    /// its past: those whose tasker had replied (the journal holds its
    /// reply for this life and attempt) apart, to complete; the others are
    /// new attempts, logged `recovered` (SPEC 10), but for Slurm jobs that
    /// can be followed again (SPEC 14).
    fn running_pasts(
        &mut self,
        task: &Task,
        step: &Step,
        points: &[Point],
        (life, replied): (&str, &mut HashMap<(Exid, Nid), Replied>),
    ) -> (Vec<NodePast>, Vec<(NodeKey, Replied)>) {
        let mut pasts = Vec::new();
        let mut jobs = super::super::reattach::Jobs::default();
        let mut completed = Vec::new();
        for action in &step.actions {
            let Action::Task { nid, .. } = action else {
                continue;
            };
            let history = super::super::history::node_history(points, &task.id, nid);
            let k = key(&task.exid, nid);
            let reply = replied
                .remove(&(task.exid.clone(), nid.clone()))
                .filter(|r| r.ended(history.attempts, life));
            if let Some(reply) = reply {
                completed.push((k.clone(), reply));
                pasts.push((k, history, None));
                continue;
            }
            let job = history
                .open_run()
                .and_then(|o| Some((o, self.slurm_job_of(&k, o, &mut jobs)?)));
            if job.is_none() {
                let p = Point::new(Kind::Recovered, &task.id, &task.exid, nid)
                    .with("attempt", history.next_attempt());
                self.log_idle(p);
            }
            pasts.push((k, history, job));
        }
        (pasts, completed)
    }

    /// A node of a recovered flow whose tasker had replied before the
    /// engine stopped (the replies journal says so) but whose end was not
    /// yet in the flow's durable progress: completed with that reply, not
    /// run again.
    fn complete_replied_node(&mut self, k: &NodeKey, payload: Object) {
        tracing::info!(
            "flow {}: node {}'s tasker had replied before the engine stopped; completed from the replies journal",
            k.exid,
            k.nid
        );
        let Some(node) = self.nodes.get_mut(k) else {
            return;
        };
        // The attempt that replied is the last one, and it completed.
        node.attempt = node.starts;
        node.reopen_last_attempt();
        node.task.set_payload(payload);
        self.finish(k, State::Completed, None);
    }
}

/// The task nodes a flow's failure or cancel stopped while their tasker
/// ran, whose end the engine did not see (it died first): their progress
/// says `aborted` without a run. Their run, from the points log, goes to
/// the flow's record's `nodes`, as when the engine sees them end.
fn keep_stopped_runs(flow: &mut Flow, conds: &mut Conds, points: &[Point], id: &TaskId) {
    let stopped: Vec<Nid> = flow
        .progress
        .nodes
        .iter()
        .filter(|(_, p)| {
            matches!(
                p,
                NodeProgress::Failed {
                    kind: ErrorKind::Aborted,
                    task: None,
                    ..
                }
            )
        })
        .filter_map(|(nid, _)| nid.parse().ok())
        .collect();
    if stopped.is_empty() {
        return;
    }
    // Only those a tasker was given to (one pass over the points, not one
    // per node); the history says whether it ran in this life.
    let started: HashSet<&Nid> = points
        .iter()
        .filter(|p| matches!(p.kind(), Some(Kind::Started | Kind::Allocated)))
        .map(|p| &p.nid)
        .collect();
    for nid in stopped.iter().filter(|n| started.contains(n)) {
        let history = super::super::history::node_history(points, id, nid);
        if let Some(run) = history.last_run() {
            let now = super::now_ms();
            flow.task_failed(nid, ErrorKind::Aborted, "aborted".into(), run, now, conds);
        }
    }
}
