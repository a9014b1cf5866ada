//! Re-attaching the Slurm jobs of an engine that died (SPEC 14): a job
//! that still runs, or that ended while the engine was down, is followed
//! again and its reply read (no `recovered`, no second run). Its job id is
//! read from its directory, or, for a job submitted just before the crash
//! and not yet recorded, found by its name in one `squeue`. Only a job
//! the cluster no longer knows and that left no exit status runs again.

use std::path::{Path, PathBuf};

use super::history::OpenRun;
use super::state::{key, Execution, Node, NodeState, Process, Run};
use super::tasker_points::PointsTail;
use super::Engine;
use crate::model::point::Kind;

use crate::scheduler::{Limit, NodeKey};
use crate::tasker::slurm::{command, job, squeue, Adopt};
use crate::tasker::{Launch, Taskers, Tracked};

/// This user's jobs as `squeue` showed them, asked at most once per start.
#[derive(Default)]
pub(super) struct Jobs(Option<Result<Vec<squeue::Row>, String>>);

impl Jobs {
    fn rows(&mut self) -> &Result<Vec<squeue::Row>, String> {
        self.0.get_or_insert_with(query_blocking)
    }
}

/// One `squeue` (start-up only: the engine's loop is not running yet).
fn query_blocking() -> Result<Vec<squeue::Row>, String> {
    let out = command::run_blocking("squeue", &command::squeue_args())?;
    Ok(squeue::parse(&out))
}

impl Engine {
    /// The Slurm job a node's open attempt ran as, if it did and the job
    /// can be followed or read.
    pub(super) fn slurm_job_of(
        &self,
        k: &NodeKey,
        open: OpenRun,
        jobs: &mut Jobs,
    ) -> Option<Adopt> {
        let dir = self
            .root
            .slurm_job_dir(&k.exid, &k.nid, open.attempt, open.offer);
        if !dir.join(job::SCRIPT).exists() {
            return None;
        }
        if let Some(id) = std::fs::read_to_string(dir.join(job::JOB_ID))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Some(Adopt::Job(id));
        }
        let name = job::name_of(&dir);
        match jobs.rows() {
            Ok(rows) => {
                if let Some(row) = squeue::newest_run(rows, &name, &job::work_dir(&dir)) {
                    let id = row.id;
                    tracing::info!("task {}: found its Slurm job {id} by name ({name})", k.exid);
                    record_job_id(&dir, id);
                    return Some(Adopt::Job(id));
                }
            }
            // Never submitted again while it may exist: looked up by name
            // once the controller answers.
            Err(e) => {
                tracing::warn!(
                    "task {}: cannot ask Slurm whether its job {name} exists ({e}); it will be looked up when the controller answers",
                    k.exid
                );
                return Some(Adopt::Name);
            }
        }
        dir.join(job::STATUS).exists().then_some(Adopt::Ended)
    }

    /// A standalone task whose job is followed again: its execution is
    /// inserted, its node runs.
    pub(super) fn reattach(
        &mut self,
        mut node: Box<Node>,
        exec: Execution,
        open: OpenRun,
        found: Adopt,
    ) {
        let k = key(&node.task.id, &node.task.nid);
        // A running node holds its body (as an offered one does): its
        // reply's record is built on it.
        let limit = super::body::limit(self.options.input_limit);
        match super::body::read(&self.root, &node.task.id, limit) {
            Ok(b) => node.task.body = super::state::Body::Loaded(Box::new(b)),
            Err(e) => tracing::warn!("task {}: {e}", node.task.id),
        }
        self.executions.insert(k.exid.clone(), exec);
        self.names.share(&mut node.task);
        self.nodes.insert(k.clone(), node);
        self.adopt_node(&k, open, found);
    }

    /// Follows a dead engine's job again: the node (standalone, or a
    /// flow's, queued by the flow's resumption) runs, holding a unit of
    /// `--slurm-jobs`, its attempt open as the log left it. A scheduler
    /// entry it had is left stale (its generation changes).
    pub(super) fn adopt_node(&mut self, k: &NodeKey, open: OpenRun, found: Adopt) {
        self.build_flow_payload(k);
        let attempt = open.attempt;
        let dir = self
            .root
            .slurm_job_dir(&k.exid, &k.nid, open.attempt, open.offer);
        self.next_gen += 1;
        let gen = self.next_gen;
        let points = dir.join(job::POINTS);
        let Some(mut node) = self.nodes.remove(k) else {
            return;
        };
        let started = reopen_attempt(&mut node, open);
        let (timeout, mut limits) = self.reattached_options(&mut node);
        limits.push((Limit::SlurmJobs, self.options.slurm_jobs));
        node.gen = gen;
        node.state = NodeState::Running(Box::new(Run {
            taskee: node
                .past()
                .taskee
                .clone()
                .unwrap_or_else(|| "unknown".parse().expect("a valid taskee")),
            process: Process::Adopting { started },
            limits: limits.clone(),
            slot: None,
            points: PointsTail::resuming(points.clone(), self.points_copied(k)),
        }));
        let launch = self.adopt_launch(k, &node, timeout);
        self.nodes.insert(k.clone(), node);
        // A job that ended while the engine was down has its result.
        if !started && !matches!(found, Adopt::Ended) {
            self.watch_adopted_start_timeout(k);
        }
        // Counted, never refused: the job exists already.
        self.sched.start_anyway(&limits, false);
        self.points_files.insert(points, k.clone());
        self.slurm_running.insert(k.clone());
        tracing::info!(
            "task {}: re-attached to its Slurm job ({}), attempt {attempt}",
            k.exid,
            match found {
                Adopt::Job(id) => format!("job {id}"),
                Adopt::Ended => "ended, its result kept".into(),
                Adopt::Name => "not known yet: looked up by name".into(),
            }
        );
        let report = self.report_to_loop(k, gen, None);
        self.executors.slurm().adopt(found, launch, dir, report);
    }

    /// A re-attached node's run timeout and the limits its run holds
    /// (its tasker's `max_concurrent` and concurrency keys): its tasker's
    /// `tasker.json` resolved again (its effective options restored with
    /// it).
    fn reattached_options(
        &self,
        node: &mut Node,
    ) -> (Option<std::time::Duration>, Vec<(Limit, u32)>) {
        let Some(taskee) = node.past().taskee.clone() else {
            return (None, Vec::new());
        };
        let Ok(resolved) = Taskers::new(self.root.tsk()).resolve(&node.task.domain, &taskee) else {
            return (None, Vec::new());
        };
        let tasker_path = self.root.relative(&resolved.path).display().to_string();
        let limits =
            super::dispatch::limits_for(&tasker_path, &resolved.config, node.task.loaded());
        let effective = super::policy::Effective::of(node.task.options(), &resolved.config);
        node.past_mut().effective = Some(effective);
        // The run timeout counts from the job's start, crash or not.
        let ran = node
            .past()
            .started_at
            .and_then(|t| (chrono::Utc::now() - t).to_std().ok())
            .unwrap_or_default();
        let left = node.effective().timeout.map(|d| d.0.saturating_sub(ran));
        (left, limits)
    }

    /// How many of a node's own points its last run had copied before the
    /// engine died: those after the run's last engine point of its start.
    fn points_copied(&self, k: &NodeKey) -> u32 {
        let points = super::history::histories(&self.root, &k.exid);
        let mine = points.iter().filter(|p| p.nid == k.nid);
        let mut copied = 0u32;
        for p in mine {
            match p.fields.get("source").and_then(|v| v.as_str()) {
                Some("tasker") => copied = copied.saturating_add(1),
                Some(_) => {}
                None if matches!(p.kind(), Some(Kind::Allocated)) => copied = 0,
                None => {}
            }
        }
        copied
    }

    fn adopt_launch(
        &self,
        k: &NodeKey,
        node: &Node,
        timeout: Option<std::time::Duration>,
    ) -> Launch {
        Launch {
            argv: Vec::new(),
            dir: PathBuf::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            stderr_path: self.root.stderr_log(&k.exid),
            stderr_prefix: node.task.id.to_string(),
            timeout,
            kill_grace: self.options.kill_grace,
            tracked: Tracked::Groups,
        }
    }
}

/// Opens again the attempt the log left open (the restore of the node's
/// past closed it as interrupted); whether it had `started`.
fn reopen_attempt(node: &mut Node, open: OpenRun) -> bool {
    let (attempt, started) = (open.attempt, open.started);
    node.attempt = attempt;
    node.offers = open.offer;
    node.starts = if started {
        attempt
    } else {
        attempt.saturating_sub(1)
    };
    if !started {
        let log = &mut node.past_mut().attempts_log;
        // The entry the log's history gave an attempt cut short before
        // `started` (its tasker may have run): this one is a job still
        // followed, whose start opens its entry.
        if log
            .last()
            .is_some_and(|a| a.attempt == attempt && a.job_id.is_none())
        {
            log.pop();
        }
        return false;
    }
    node.reopen_last_attempt();
    true
}

impl Engine {
    /// The cluster no longer knows a node's job and the job left no result
    /// (SPEC 14: "only a job the cluster no longer knows and that left no
    /// result is run again"): the node is queued again as a new attempt,
    /// logged `recovered`, as after a crash.
    pub(super) fn on_vanished(&mut self, key: NodeKey, gen: u64) {
        let Some(run) = self.take_run(&key, gen) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&key) else {
            return;
        };
        node.end_attempt(chrono::Utc::now(), "interrupted", None);
        node.attempt += 1;
        let attempt = node.attempt;
        self.release(&run.limits, false);
        self.slurm_running.remove(&key);
        self.points_files.remove(run.points.path());
        if let Some(why) = run.process.stop_asked().cloned() {
            // Asked to stop meanwhile: it is stopped.
            return self.on_stopped_run(&key, why);
        }
        tracing::warn!(
            "task {}: the Slurm cluster no longer knows its job and it left no result; it runs again (attempt {attempt})",
            key.exid
        );
        let p = self.point(&key, Kind::Recovered).with("attempt", attempt);
        self.log_idle(p);
        self.enqueue(&key);
    }
}

/// Records a job id found by name, as a submission would have.
fn record_job_id(dir: &Path, id: u64) {
    let bytes = format!("{id}\n");
    if let Err(e) =
        crate::store::spool::write_atomic(dir, job::JOB_ID, bytes.as_bytes(), false, true)
    {
        tracing::warn!("cannot record Slurm job {id} in {}: {e}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::task::{Task, TaskFile};

    /// A Slurm job still pending when the engine died (`allocated` and
    /// `submitted`, no `started`), re-attached: the history's entry for an
    /// attempt cut short before `started` is not kept, so the job's own
    /// start opens the attempt's only entry.
    #[test]
    fn a_pending_job_re_attached_has_one_entry_once_it_starts() {
        let line = |ts: u32, point: &str, extra: &str| {
            format!(
                r#"{{"ts":"2026-01-01T00:00:0{ts}.000000Z","id":"x","exid":"x","nid":"0","point":"{point}"{extra}}}"#
            )
        };
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.log");
        let text = [
            line(0, "created", ""),
            line(1, "offered", r#","taskee":"t","offer":1"#),
            line(
                2,
                "allocated",
                r#","taskee":"t","tasker":"tsk/t","attempt":1"#,
            ),
            line(3, "submitted", r#","attempt":1,"job_id":5"#),
        ];
        std::fs::write(&log, text.join("\n") + "\n").unwrap();
        let file = TaskFile::parse(br#"{"domain":"org"}"#).unwrap();
        let task = Task::from_file(file, Some("x"), None).unwrap();
        let h = super::super::history::history_of(&log, &task);
        let open = h.open_run().expect("an open run");
        let mut node = Node::new(super::super::state::NodeTask::on_disk(task));
        h.restore(&mut node);
        assert!(!reopen_attempt(&mut node, open), "it had not started");
        assert!(node.past().attempts_log.is_empty());
        // The job starts (as `on_running` does), then completes.
        node.starts += 1;
        node.begin_attempt(chrono::Utc::now());
        node.end_attempt(chrono::Utc::now(), "completed", None);
        let log: Vec<_> = node
            .past()
            .attempts_log
            .iter()
            .map(|a| (a.attempt, a.outcome.clone()))
            .collect();
        assert_eq!(log, [(1, Some("completed".to_string()))]);
    }
}
