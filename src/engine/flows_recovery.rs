//! A flow found in `run/` at start-up (SPEC 10, 12, 14): its progress
//! read back and resumed; its task nodes that were running queued again
//! as `recovered`, or, run as Slurm jobs that can be followed, re-attached.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::super::state::key;
use super::super::Engine;
use super::{run_file_head, FlowExec, FlowLife, ProgressDisk};
use crate::flow::run::{Action, Flow};
use crate::model::point::{Kind, Point};
use crate::model::task::Task;

impl Engine {
    /// A flow found in `run/` at start-up: its progress read back, the task
    /// nodes that were running `recovered` and queued again, the sleeps'
    /// deadlines kept.
    pub(in crate::engine) fn recover_flow(
        &mut self,
        task: Task,
        progress: Option<Value>,
        created_at: DateTime<Utc>,
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
        let step = flow.resume();
        // The task nodes that were running are new attempts (SPEC 10),
        // but for Slurm jobs that can be followed again (SPEC 14).
        let points = super::super::history::histories(&self.root, &exid);
        let mut pasts = Vec::new();
        let mut jobs = super::super::reattach::Jobs::default();
        for action in &step.actions {
            if let Action::Task { nid, .. } = action {
                let history = super::super::history::node_history(&points, &task.id, nid);
                let k = key(&exid, nid);
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
        }
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
        self.maybe_end_flow(&exid);
    }
}
