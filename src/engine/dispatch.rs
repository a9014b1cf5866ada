//! Dispatch: queueing nodes, offering them (the taskmaster runs off the
//! loop, see `offers`), allocating (tasker resolved, worker slot and
//! limits taken) and starting their taskers (spawned off the loop), and
//! starting to follow the taskers' own points (see `tasker_points`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::body;
use super::offers::{Answer, OfferInput, Offered};
use super::policy::{self, Effective};
use super::state::{Body, Item, Loaded, Node, NodeState, Offer, Process, Run};
use super::tasker_points::PointsTail;
use super::{env, Engine, TaskerMsg, Timer};
use crate::model::names::{Domain, Exid};
use crate::model::point::{Kind, Point};
use crate::model::task::{ErrorKind, Object, State, TaskError};
use crate::scheduler::{Entry, Limit, NodeKey};
use crate::tasker::{
    self, ExecutorKind, Input, Launch, Placement, Report, Resolved, RunEvent, StopReason,
    TaskerConfig,
};
use crate::taskmaster::Choice;

/// Whether a queued or parked scheduler item is still wanted: its node
/// exists, is queued, and the item is of its current generation.
pub(super) fn is_live(nodes: &HashMap<NodeKey, Box<Node>>, (key, gen): &Item) -> bool {
    nodes.get(key).is_some_and(|n| n.is_queued_as(*gen))
}

impl Engine {
    /// Puts a node in the ready queue under a new generation.
    pub(super) fn enqueue(&mut self, key: &NodeKey) {
        self.next_gen += 1;
        let gen = self.next_gen;
        let Some(node) = self.node_mut(key) else {
            return;
        };
        node.gen = gen;
        let waited = matches!(node.state, NodeState::Queued { waited: true });
        node.state = NodeState::Queued { waited };
        let priority = node.task.priority;
        self.sched.push(priority, (key.clone(), gen));
        self.rest_body(key);
    }

    /// A standalone node waits again: its payload and headers are left to
    /// its `run/` file, read back at its next offer. Called only where
    /// that file is current (nothing changed them since they were read, or
    /// their rewrite is durable). A flow's node keeps its own: the flow's
    /// `run/` file holds the flow, not its nodes.
    pub(super) fn rest_body(&mut self, key: &NodeKey) {
        if self.is_flow(&key.exid) {
            return;
        }
        if let Some(node) = self.node_mut(key) {
            node.task.body = Body::OnDisk;
        }
    }

    /// Queues a node again after `delay`.
    pub(super) fn enqueue_after(&mut self, key: &NodeKey, delay: Duration) {
        if delay.is_zero() {
            return self.enqueue(key);
        }
        self.next_gen += 1;
        let gen = self.next_gen;
        let Some(node) = self.node_mut(key) else {
            return;
        };
        node.gen = gen;
        node.state = NodeState::Delayed;
        self.sched
            .at(Instant::now() + delay, Timer::Ready(key.clone(), gen));
        self.rest_body(key);
    }

    /// Offers every node the scheduler lets go, while a worker is free.
    pub(super) fn dispatch(&mut self) {
        if self.mode.is_stopping() {
            return;
        }
        while let Some(entry) = self.sched.pop() {
            let (key, gen) = entry.item.clone();
            if self.node(&key).is_some_and(|n| n.is_queued_as(gen)) {
                self.offer(&key, entry);
            } else {
                // A unit this stale entry was woken for goes on to the next
                // waiter.
                self.pass_on(entry.woken_by());
            }
        }
    }

    /// Passes a unit of `limit` that a woken item did not take to the next
    /// live waiter.
    pub(super) fn pass_on(&mut self, limit: Option<&Limit>) {
        if let Some(limit) = limit {
            let nodes = &self.nodes;
            self.sched.wake_if_free(limit, |item| is_live(nodes, item));
        }
    }

    /// Asks for a node's taskee; from now until it starts, parks on a
    /// limit or ends, the node holds a worker slot. Offers that need the
    /// taskmaster pool go there one domain at a time (the domain's turn, a
    /// limit of one that holds no worker), so that equal priorities still
    /// start in arrival order and a slow taskmaster holds up only its own
    /// domain; an offer the caches can answer is made at once.
    fn offer(&mut self, key: &NodeKey, mut entry: Entry<Item>) {
        let Some(node) = self.node(key) else {
            return self.pass_on(entry.woken_by());
        };
        if self.flow_is_over(&key.exid) {
            // Its flow's end is decided, or it is being cancelled: the
            // node ends with the flow's next step, never offered.
            return self.pass_on(entry.woken_by());
        }
        let turn = Limit::Offer {
            domain: node.task.domain.clone(),
        };
        if self.sched.in_use(&turn) > 0 {
            // Parked entries keep their place; the turn wakes them in order.
            // A unit this entry was woken for goes on to the next waiter.
            let woken_by = entry.woken_by().cloned();
            self.sched.park(entry, turn, 1);
            return self.pass_on(woken_by.as_ref());
        }
        if self.tsk_watch.changed() {
            self.offers.invalidate();
        }
        self.build_flow_payload(key);
        let Some(node) = self.node(key) else {
            return;
        };
        let gen = node.gen;
        // Known at once: the body is read back here, a small bounded
        // read; otherwise the pool reads it, off the loop.
        let limit = body::limit(self.options.input_limit);
        let known = self
            .offers
            .known(&node.task.domain, node.task.tasker.as_ref())
            .map(|mut answer| {
                if node.task.loaded().is_none() {
                    answer.body = Some(body::read(&self.root, &node.task.id, limit)?);
                }
                Ok(answer)
            });
        let input = match known {
            Some(_) => None,
            None => Some(OfferInput {
                id: node.task.id.clone(),
                exid: key.exid.clone(),
                nid: node.task.nid.clone(),
                domain: node.task.domain.clone(),
                tasker: node.task.tasker.clone(),
                attempt: node.attempt,
                offers: node.offers,
                refusals: node.past().refusals.clone(),
                body: node.task.loaded().cloned(),
            }),
        };
        if input.is_some() {
            self.sched.try_take(&turn, 1);
            if entry.woken_by() == Some(&turn) {
                entry.took_woken_unit();
            }
        }
        let Some(node) = self.node_mut(key) else {
            return;
        };
        let waited = matches!(node.state, NodeState::Queued { waited: true });
        node.state = NodeState::Offering(Box::new(Offer { entry, waited }));
        self.sched.reserve();
        match (known, input) {
            (Some(answer), _) => self.on_offered(Offered {
                key: key.clone(),
                gen,
                answer,
            }),
            (None, Some(input)) => self.offers.send(key.clone(), gen, input),
            (None, None) => {}
        }
    }

    /// The pool answered an offer of `domain`: the domain's turn passes to
    /// its next offer, and the answer is acted on.
    pub(super) fn on_pool_answer(&mut self, domain: Domain, offered: Offered) {
        let nodes = &self.nodes;
        self.sched
            .give_back(&Limit::Offer { domain }, |item| is_live(nodes, item));
        self.on_offered(offered);
    }

    /// An offer's answer: fail, or allocate and start.
    fn on_offered(&mut self, offered: Offered) {
        let Offered { key, gen, answer } = offered;
        let Some(node) = self.node_mut(&key).filter(|n| n.gen == gen) else {
            return;
        };
        let offer = match std::mem::replace(&mut node.state, NodeState::Queued { waited: false }) {
            NodeState::Offering(offer) => offer,
            other => {
                // Cancelled, timed out or let go while offered (its slot
                // went back then): its state stays what it is, a record
                // being written included.
                node.state = other;
                return;
            }
        };
        let Offer { entry, waited } = *offer;
        node.state = NodeState::Queued { waited };
        self.sched.unreserve();
        let woken_by = entry.woken_by().cloned();
        if self.flow_is_over(&key.exid) {
            // Its flow ended while the taskmaster chose: nothing starts.
            return self.pass_on(woken_by.as_ref());
        }
        match answer {
            Ok(mut answer) => {
                if let (Some(b), Some(node)) = (answer.body.take(), self.node_mut(&key)) {
                    node.task.body = Body::Loaded(Box::new(b));
                }
                self.answered(&key, entry, answer);
            }
            // Its run/ file turned bad (or cannot be read now): a work
            // error, retried as SPEC 7 says, then failed with the reason.
            Err(e) => self.error(&key, TaskError::new(ErrorKind::Work, e.to_string())),
        }
        self.pass_on(woken_by.as_ref());
    }

    fn answered(&mut self, key: &NodeKey, entry: Entry<Item>, answer: Answer) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        node.offers += 1;
        let taskee = match answer.choice {
            Ok(Choice::Taskee(t)) => t,
            Ok(Choice::Reject(reason)) => {
                let msg = format!("rejected by the taskmaster: {reason}");
                return self.fail(key, TaskError::new(ErrorKind::Config, msg));
            }
            Err(e) => return self.fail(key, TaskError::new(ErrorKind::Config, e.to_string())),
        };
        // Offered, even to a taskee that refused it already: the offer
        // is made (and counted), then fails the task.
        let refused_before = policy::check_offer(&taskee, &node.past().refusals);
        let offers = node.offers;
        node.past_mut().taskee = Some(taskee.clone());
        let p = self
            .point(key, Kind::Offered)
            .with("taskee", taskee.as_str())
            .with("offer", offers);
        self.log(p);
        if let Err(e) = refused_before {
            return self.fail(key, e);
        }
        match answer.resolved {
            Some(Ok(resolved)) => self.allocate(key, entry, resolved),
            Some(Err(e)) => self.fail(key, TaskError::new(ErrorKind::Config, e.to_string())),
            None => {
                let msg = format!("no resolution for taskee {taskee}");
                self.fail(key, TaskError::new(ErrorKind::Config, msg))
            }
        }
    }

    /// The taskee is resolved: compute the node's effective options, take
    /// a worker slot and the limits (or park on the first full one), start.
    fn allocate(&mut self, key: &NodeKey, entry: Entry<Item>, resolved: Resolved) {
        let tasker_path = self.root.relative(&resolved.path).display().to_string();
        let slurm_jobs = self.options.slurm_jobs;
        let Some(node) = self.node_mut(key) else {
            return;
        };
        let mut limits = limits_for(&tasker_path, &resolved.config, node.task.loaded());
        let local = resolved.config.executor == ExecutorKind::Local;
        if !local {
            limits.push((Limit::SlurmJobs, slurm_jobs));
        }
        let effective = Effective::of(node.task.options(), &resolved.config);
        let past = node.past_mut();
        past.tasker_path = Some(tasker_path.clone());
        past.effective = Some(effective);
        let attempt = node.attempt;
        if let Err(e) = self.watch_tasker_start_timeout(key, &resolved.config) {
            return self.fail(key, e);
        }
        if let Err((full, limit)) = self.sched.try_start(&limits, local) {
            let reason = full.describe();
            self.sched.park(entry, full, limit);
            let Some(node) = self.node_mut(key) else {
                return;
            };
            let first = !matches!(node.state, NodeState::Queued { waited: true });
            node.state = NodeState::Queued { waited: true };
            // Parked nodes may be many: each leaves its body to run/.
            self.rest_body(key);
            if first {
                let p = self.point(key, Kind::Suspended).with("reason", reason);
                self.log_idle(p);
            }
            return;
        }
        let p = self
            .point(key, Kind::Allocated)
            .with("taskee", resolved.taskee.as_str())
            .with("tasker", tasker_path.as_str())
            .with("attempt", attempt);
        // Written before the spawn, or no tasker runs (see log_required).
        if !self.log_required(p) {
            return self.release(&limits, local);
        }
        self.start(key, resolved, limits);
    }

    /// A `start_timeout` known only from `tasker.json`: if it has passed
    /// already, the node fails; if not, a timer watches the rest.
    fn watch_tasker_start_timeout(
        &mut self,
        key: &NodeKey,
        config: &TaskerConfig,
    ) -> Result<(), TaskError> {
        let Some(created_at) = self.start_clock(key) else {
            return Ok(());
        };
        let Some(node) = self.node(key) else {
            return Ok(());
        };
        let (0, None, None, Some(st)) = (
            node.starts,
            node.task.options().start_timeout,
            node.start_timer,
            config.start_timeout,
        ) else {
            return Ok(());
        };
        let elapsed = (Utc::now() - created_at).to_std().unwrap_or_default();
        let left = policy::start_time_left(st, elapsed)?;
        let timer = self
            .sched
            .at(Instant::now() + left, Timer::StartTimeout(key.clone()));
        if let Some(node) = self.node_mut(key) {
            node.start_timer = Some(timer);
        }
        Ok(())
    }

    /// Starts the tasker off the loop, through its executor; the node
    /// holds its limits (and, run locally, a worker slot) from now on, and
    /// `started` is logged once the process exists (or the job runs).
    fn start(&mut self, key: &NodeKey, resolved: Resolved, limits: Vec<(Limit, u32)>) {
        let local = resolved.config.executor == ExecutorKind::Local;
        let Some(run) = self.node(key).map(|n| (n.attempt, n.offers)) else {
            return self.release(&limits, local);
        };
        let job = (!local).then(|| self.job_spec(key, run, &resolved));
        let points_file = match &job {
            Some(job) => job.dir.join(tasker::slurm::job::POINTS),
            None => self.root.node_points_file(&key.exid, &key.nid),
        };
        let slot = local.then(|| self.registry.take_slot());
        let launch = self.launch(key, &resolved, &points_file, slot);
        let (Some(launch), Some(node)) = (launch, self.nodes.get_mut(key)) else {
            // Allocated just now, so both exist; give all back if not.
            if let Some(slot) = slot {
                self.registry.give_slot(slot);
            }
            return self.release(&limits, local);
        };
        node.state = NodeState::Running(Box::new(Run {
            taskee: resolved.taskee.clone(),
            process: Process::Spawning,
            limits,
            slot,
            points: PointsTail::new(points_file.clone()),
        }));
        let gen = node.gen;
        // What an earlier run's escaped writer may have left there is not
        // this run's.
        if let Some(left) = super::tasker_points::remove_entry(&points_file) {
            tracing::warn!("{left}");
        }
        self.points_files.insert(points_file, key.clone());
        let report = self.report_to_loop(key, gen, slot);
        let executor = self.executor(local);
        // A local spawn (`tasker::vfork`: the loop waits only until the
        // child has exec'd) runs on the loop: handing it to a blocking
        // thread cost more (two wake-ups per task) than the wait. A
        // Slurm submission waits for `sbatch`: off the loop.
        if local {
            executor.start(launch, job, report);
        } else {
            tokio::task::spawn_blocking(move || executor.start(launch, job, report));
        }
    }

    /// What the executor needs to run a node's tasker.
    fn launch(
        &mut self,
        key: &NodeKey,
        resolved: &Resolved,
        points_file: &std::path::Path,
        slot: Option<usize>,
    ) -> Option<Launch> {
        let created_at = self.executions.get(&key.exid)?.created_at;
        let root_dir = self.root.dir().to_path_buf();
        let stderr_path = self.root.stderr_log(&key.exid);
        let kill_grace = self.options.kill_grace;
        let node = self.nodes.get(key)?;
        // A Slurm job's processes are the cluster's to track.
        let tracked = match slot {
            Some(slot) => self
                .contain
                .track(slot, key.exid.as_str(), key.nid.as_str()),
            None => crate::tasker::Tracked::Groups,
        };
        Some(Launch {
            env: env::tasker_env(
                &root_dir,
                node,
                key,
                &resolved.taskee,
                &resolved.config,
                points_file,
            ),
            argv: resolved.argv.clone(),
            dir: resolved.dir.clone(),
            stdin: stdin_of(node, &key.exid, created_at, resolved.config.input),
            stderr_path,
            stderr_prefix: node.task.id.to_string(),
            timeout: node.effective().timeout.map(|d| d.0),
            kill_grace,
            tracked,
        })
    }

    /// Where a run's events go: to the loop, as messages of this node's
    /// generation. A local process group is recorded in the taskers
    /// registry first, on the spawning thread.
    pub(super) fn report_to_loop(&self, key: &NodeKey, gen: u64, slot: Option<usize>) -> Report {
        let tx = self.tasker_tx.clone();
        let key = key.clone();
        let registry = self.registry.writer();
        if let Some(slot) = slot {
            registry.spawning(slot);
        }
        Box::new(move |event| {
            match (&event, slot) {
                (
                    RunEvent::Placed {
                        at: Placement::Group(pgid),
                        ..
                    },
                    Some(slot),
                ) => registry.record(slot, *pgid),
                (RunEvent::Exited(_), Some(slot)) => registry.clear(slot),
                _ => {}
            }
            let _ = tx.send(TaskerMsg::Event {
                key: key.clone(),
                gen,
                event,
            });
        })
    }

    /// A run was placed: a local process runs (`started`), or the cluster
    /// accepted a job (`submitted`); a stop asked meanwhile is passed on.
    pub(super) fn on_placed(
        &mut self,
        key: NodeKey,
        gen: u64,
        at: Placement,
        stop: oneshot::Sender<StopReason>,
    ) {
        let Some(node) = self.node_mut(&key).filter(|n| n.gen == gen) else {
            return;
        };
        let NodeState::Running(run) = &mut node.state else {
            return;
        };
        let was = std::mem::replace(&mut run.process, Process::Spawning);
        if let Process::Adopting { started } = was {
            // Re-attached: its points are in the log already.
            run.process = match (at, started) {
                (Placement::Job(job), false) => Process::Pending { job, stop },
                (at, _) => Process::Live { at, stop },
            };
            return;
        }
        run.process = match (at, was) {
            (at, Process::SpawningToStop(why)) => {
                let _ = stop.send(why.reason());
                Process::Stopping { at, why }
            }
            (Placement::Job(job), _) => Process::Pending { job, stop },
            (at @ Placement::Group(_), _) => Process::Live { at, stop },
        };
        match at {
            Placement::Group(pgid) => self.on_running(&key, vec![("pid", pgid.into())]),
            // A re-attached job (stopped while being adopted) was
            // submitted before.
            Placement::Job(_) if self.slurm_running.contains(&key) => {}
            Placement::Job(job) => self.on_submitted(&key, job),
        }
    }

    /// The tasker runs: `started` is logged, the attempt begins, the
    /// start timeout is over, and the points it wrote so far are copied.
    pub(super) fn on_running(&mut self, key: &NodeKey, fields: Vec<(&str, serde_json::Value)>) {
        let Some(node) = self.node_mut(key) else {
            return;
        };
        node.starts += 1;
        let now = Utc::now();
        node.past_mut().started_at = Some(now);
        node.begin_attempt(now);
        let timer = node.start_timer.take();
        let past = node.past();
        let mut p = Point::new(Kind::Started, &node.task.id, &key.exid, &key.nid)
            .with("taskee", past.taskee.as_ref().map_or("", |t| t.as_str()))
            .with("tasker", past.tasker_path.as_deref().unwrap_or_default())
            .with("attempt", node.attempt);
        for (k, v) in fields {
            p = p.with(k, v);
        }
        if let Some(timer) = timer {
            self.sched.cancel(timer);
        }
        // Not written: the engine stops, killing this tasker.
        self.log_required(p);
        // Points the tasker wrote before this message arrived.
        self.on_started_points(key);
    }

    /// Gives back a worker slot (`worker`: the run was local) and limits;
    /// a parked node the engine dropped meanwhile (cancelled, timed out)
    /// is skipped.
    pub(super) fn release(&mut self, limits: &[(Limit, u32)], worker: bool) {
        let nodes = &self.nodes;
        self.sched
            .finish(limits, worker, |item| is_live(nodes, item));
    }
}

/// What a tasker reads on stdin: the payload, or the task as a record.
/// (A node is offered, so its body is in memory, before it starts.)
fn stdin_of(node: &Node, exid: &Exid, created_at: DateTime<Utc>, input: Input) -> Vec<u8> {
    let body = node.task.loaded();
    let bytes = match input {
        Input::Payload => match body {
            Some(b) => serde_json::to_vec(&b.payload),
            None => Ok(b"{}".to_vec()),
        },
        Input::Task => {
            let body = body.cloned().unwrap_or_default();
            let mut rec = super::execution::record_of(node, exid, created_at, State::Running, body);
            // Its reader is the attempt under way, about to start: it counts.
            rec.attempts = node.attempt;
            serde_json::to_vec(&rec)
        }
    };
    bytes.unwrap_or_default()
}

/// The limits a start takes: the tasker's `max_concurrent` and one per
/// `concurrency` key whose path the task has.
pub(super) fn limits_for(
    tasker_path: &str,
    cfg: &TaskerConfig,
    body: Option<&Loaded>,
) -> Vec<(Limit, u32)> {
    let mut limits = Vec::new();
    if let Some(n) = cfg.max_concurrent {
        limits.push((
            Limit::MaxConcurrent {
                tasker: tasker_path.to_string(),
            },
            n,
        ));
    }
    let Some(body) = body else {
        return limits;
    };
    for c in &cfg.concurrency {
        let (root, path): (&Object, &str) = match c.key.split_once('.') {
            Some(("payload", rest)) => (&body.payload, rest),
            Some(("headers", rest)) => (&body.headers, rest),
            _ => continue,
        };
        let mut parts = path.split('.');
        let first = parts.next().unwrap_or_default();
        let mut v = root.get(first);
        for p in parts {
            v = v.and_then(|x| x.get(p));
        }
        if let Some(v) = v {
            limits.push((
                Limit::Key {
                    tasker: tasker_path.to_string(),
                    key: c.key.clone(),
                    value: v.to_string(),
                },
                c.limit,
            ));
        }
    }
    limits
}
