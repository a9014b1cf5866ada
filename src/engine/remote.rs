//! The engine's side of the executor seam (SPEC 14): which executor runs
//! a node, the events of a run (placed, submitted, running on a node,
//! waiting for the cluster, exited) turned into points, and the points
//! files of Slurm jobs read at each tick. The decisions on a run's end
//! are `exits`', the same for both executors.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::state::{NodeState, Process};
use super::Engine;
use crate::model::point::Kind;
use crate::scheduler::NodeKey;
use crate::tasker::slurm::{job, Slurm};
use crate::tasker::Placement;
use crate::tasker::{Executor, JobSpec, Local, Resolved, RunEvent, StopReason};

/// The executors a node's tasker may run on.
pub(super) struct Executors {
    local: Arc<Local>,
    /// Made at the first Slurm run (its poller runs from then on).
    slurm: Option<Arc<Slurm>>,
    poll: Duration,
}

impl Executors {
    pub(super) fn new(poll: Duration) -> Executors {
        Executors {
            local: Arc::new(Local),
            slurm: None,
            poll,
        }
    }

    pub(super) fn slurm(&mut self) -> Arc<Slurm> {
        let poll = self.poll;
        self.slurm
            .get_or_insert_with(|| Arc::new(Slurm::new(poll)))
            .clone()
    }
}

impl Engine {
    /// The executor of a run: local, or Slurm.
    pub(super) fn executor(&mut self, local: bool) -> Arc<dyn Executor> {
        if local {
            self.executors.local.clone()
        } else {
            self.executors.slurm()
        }
    }

    /// A Slurm run's directory and job name: named after its attempt and
    /// its offer (a refusal or an `uncompleted` reply runs an attempt
    /// again; a `retry` counts offers from 1 again, in a new attempt).
    pub(super) fn job_spec(
        &self,
        key: &NodeKey,
        (attempt, offer): (u32, u32),
        resolved: &Resolved,
    ) -> JobSpec {
        let dir = self.root.slurm_job_dir(&key.exid, &key.nid, attempt, offer);
        JobSpec {
            name: job::name_of(&dir),
            dir,
            slurm: resolved.config.slurm.clone(),
        }
    }

    /// One event of a node's run.
    pub(super) fn on_run_event(&mut self, key: NodeKey, gen: u64, event: RunEvent) {
        match event {
            RunEvent::Placed { at, stop } => self.on_placed(key, gen, at, stop),
            RunEvent::Held { stop } => self.on_held(&key, gen, stop),
            RunEvent::Running { job, node } => self.on_job_running(&key, gen, job, node),
            RunEvent::Waiting(why) => self.on_waiting(&key, gen, why),
            RunEvent::Exited(exit) => self.on_exit(key, gen, exit),
            RunEvent::Vanished => self.on_vanished(key, gen),
        }
    }

    /// The cluster accepted the job (its id durable in its directory):
    /// `submitted`, with the job id.
    pub(super) fn on_submitted(&mut self, key: &NodeKey, job: u64) {
        let Some(node) = self.node(key) else {
            return;
        };
        let p = self
            .point(key, Kind::Submitted)
            .with("job_id", job)
            .with("attempt", node.attempt);
        self.log_required(p);
        self.slurm_running.insert(key.clone());
    }

    /// The job runs on a node: `started`, with the job id and the node.
    fn on_job_running(&mut self, key: &NodeKey, gen: u64, job: u64, on: String) {
        let Some(node) = self.node_mut(key).filter(|n| n.gen == gen) else {
            return;
        };
        let NodeState::Running(run) = &mut node.state else {
            return;
        };
        match std::mem::replace(&mut run.process, Process::Spawning) {
            Process::Pending { job, stop } => {
                run.process = Process::Live {
                    at: Placement::Job(job),
                    stop,
                }
            }
            // Asked to stop meanwhile, or re-attached running already.
            other => {
                let started = other.started();
                run.process = other;
                if started {
                    return;
                }
            }
        }
        self.on_running(
            key,
            vec![("job_id", job.into()), ("node", on.clone().into())],
        );
        if let Some(a) = self
            .node_mut(key)
            .and_then(|n| n.past_mut().attempts_log.last_mut())
        {
            a.job_id = Some(job);
            a.node = Some(on);
        }
    }

    /// The cluster cannot be reached (`Some`), or can be again: the node
    /// waits, never failed for it; a `suspended` point says why.
    fn on_waiting(&mut self, key: &NodeKey, gen: u64, why: Option<String>) {
        if self.node(key).is_none_or(|n| n.gen != gen) {
            return;
        }
        match why {
            Some(reason) => {
                tracing::warn!("task {}: {reason}", key.exid);
                let p = self.point(key, Kind::Suspended).with("reason", reason);
                self.log(p);
            }
            None => tracing::info!("task {}: Slurm answers again", key.exid),
        }
    }

    /// A submission waits for the cluster to take more jobs: its stop
    /// handle is kept, or used at once if a stop was asked meanwhile.
    /// A submission no node waits for any more ends (never left to
    /// submit a job nobody follows).
    fn on_held(&mut self, key: &NodeKey, gen: u64, stop: oneshot::Sender<StopReason>) {
        let run = self
            .node_mut(key)
            .filter(|n| n.gen == gen)
            .and_then(|n| match &mut n.state {
                NodeState::Running(run) => Some(run),
                _ => None,
            });
        match run {
            Some(run) if matches!(run.process, Process::Spawning) => {
                run.process = Process::Held { stop }
            }
            Some(run) => {
                let why = run
                    .process
                    .stop_asked()
                    .map_or(StopReason::Cancel, |w| w.reason());
                let _ = stop.send(why);
            }
            None => {
                let _ = stop.send(StopReason::Cancel);
            }
        }
    }

    /// Reads the points files of the nodes running as Slurm jobs.
    pub(super) fn copy_slurm_points(&mut self) {
        let keys: Vec<NodeKey> = self.slurm_running.iter().cloned().collect();
        for key in keys {
            self.copy_points(&key);
        }
    }
}
