//! What a node's points log says of its past (SPEC 7's counts): its
//! attempts, offers, retries, refusals, row of `uncompleted` replies and
//! attempts log, rebuilt at start-up for a task found in `run/` (see
//! `recovery`) and for the running nodes of a recovered flow.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::layout::Root;
use crate::model::names::TaskId;
use crate::model::point::{self, Kind};
use crate::model::task::{Refusal, Task};

/// What a node's points log says of its past (SPEC 7's counts).
#[derive(Debug, Default)]
pub struct History {
    /// The attempts that ran (the last one may have been cut short).
    pub(super) attempts: u32,
    offers: u32,
    retries: u32,
    refusals: Vec<Refusal>,
    uncompleted: u32,
    /// When the task was taken (its `created` point).
    pub(super) created_at: Option<DateTime<Utc>>,
    /// When the task file was written (the `created` point's
    /// `submitted_at`).
    pub(super) submitted_at: Option<DateTime<Utc>>,
    /// The attempts that started in this life of the id.
    attempts_log: Vec<crate::model::task::AttemptLog>,
    /// The last attempt was allocated and nothing ended it: it ran (or
    /// was about to) when the engine stopped.
    open_run: bool,
    /// The open run logged `started`.
    open_started: bool,
    /// The taskee and tasker of the last allocation.
    allocated_to: Option<(crate::model::names::Taskee, String)>,
    /// When the last allocation was made.
    allocated_at: Option<String>,
}

/// See [`History::open_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OpenRun {
    pub attempt: u32,
    pub offer: u32,
    pub started: bool,
}

impl History {
    /// Gives a node queued again after a crash its past: a new attempt
    /// that does not count against `retries`, its offers, refusals and row
    /// of `uncompleted` replies.
    pub(super) fn restore(&self, node: &mut super::state::Node) {
        node.attempt = self.attempts + 1;
        node.offers = self.offers;
        node.retries_done = self.retries;
        node.starts = self.attempts;
        node.uncompleted = self.uncompleted;
        if !self.refusals.is_empty() || !self.attempts_log.is_empty() {
            let past = node.past_mut();
            past.refusals = self.refusals.clone();
            past.attempts_log = self.attempts_log.clone();
        }
        if let Some((taskee, tasker)) = self.allocated_to.as_ref().filter(|_| self.open_run) {
            let past = node.past_mut();
            past.taskee = Some(taskee.clone());
            past.tasker_path = Some(tasker.clone());
        }
        // The attempt that ran when the engine died ended with it.
        node.end_attempt(Utc::now(), "interrupted", None);
    }

    /// The run the engine was in when it stopped: its attempt, its offer
    /// (a run's own number: refusals and `uncompleted` replies run an
    /// attempt again) and whether it had started.
    pub(super) fn open_run(&self) -> Option<OpenRun> {
        self.open_run.then_some(OpenRun {
            attempt: self.attempts,
            offer: self.offers,
            started: self.open_started,
        })
    }

    /// The attempt the node is queued again as.
    pub(super) fn next_attempt(&self) -> u32 {
        self.attempts + 1
    }

    /// The node's run as a flow's record lists it, if an attempt of it
    /// started in this life (its last one is the run): for a node whose
    /// end the engine never saw (it died first), ended now unless the log
    /// ended it.
    pub(super) fn last_run(&self) -> Option<crate::flow::run::TaskRun> {
        let last = self.attempts_log.last()?;
        Some(crate::flow::run::TaskRun {
            taskee: self.allocated_to.as_ref().map(|(t, _)| t.to_string()),
            attempts: self.attempts,
            started_at: Some(last.started_at.clone()),
            ended_at: Some(
                last.ended_at
                    .clone()
                    .unwrap_or_else(|| crate::model::task::timestamp(Utc::now())),
            ),
        })
    }
}

/// The history of each node of an execution, from its points log.
pub(super) fn histories(root: &Root, exid: &crate::model::names::Exid) -> Vec<point::Point> {
    crate::store::points::read_points(&root.points_log(exid)).unwrap_or_default()
}

/// A node's history among an execution's points.
pub(super) fn node_history(
    points: &[point::Point],
    id: &TaskId,
    nid: &crate::model::names::Nid,
) -> History {
    history_in(points, id, nid, Life::OfItsFlow)
}

/// A task's history, from its execution's points log.
pub(super) fn history_of(log: &Path, task: &Task) -> History {
    match crate::store::points::read_points(log) {
        Ok(points) => history_in(&points, &task.id, &task.nid, Life::Own),
        Err(_) => History::default(),
    }
}

/// A node's history, from the points of its execution's log.
/// Whose lives a node's attempts count across.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Life {
    /// A standalone task: its attempts go on counting across its lives
    /// (`retry`).
    Own,
    /// A flow's task node: each life of the flow starts its attempts over
    /// (its root's `created` point starts a life, even when the root is
    /// the task node itself).
    OfItsFlow,
}

fn history_in(
    points: &[point::Point],
    id: &TaskId,
    nid: &crate::model::names::Nid,
    life: Life,
) -> History {
    let mut h = History::default();
    let root = crate::model::names::Nid::root();
    // A tasker's informative points change nothing (SPEC 6).
    for p in points
        .iter()
        .filter(|p| &p.id == id && !p.fields.contains_key("source"))
    {
        let is_created_at_root = p.nid == root && p.kind() == Some(Kind::Created);
        if &p.nid != nid || (life == Life::OfItsFlow && is_created_at_root) {
            // A flow's `created` is logged at its root only: a new life
            // of the flow (`retry`) starts each of its task nodes over,
            // their attempts too (as when the flow first reached them).
            if is_created_at_root {
                h = History::default();
            }
            continue;
        }
        h.note(p);
    }
    h.note_unstarted();
    h
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl History {
    /// One point of the node's own, in log order.
    fn note(&mut self, p: &point::Point) {
        if p.kind() == Some(Kind::Recovered) {
            self.note_unstarted();
        }
        if p.kind().is_some_and(Kind::ends_a_run) {
            self.open_run = false;
        }
        match p.kind() {
            Some(Kind::Created) => self.new_life(p),
            Some(Kind::Offered) => self.offers += 1,
            Some(Kind::Started) => self.note_start(p),
            Some(Kind::Refused) => {
                // A refusal breaks a row of `uncompleted` replies.
                self.uncompleted = 0;
                let field = |k: &str| p.fields.get(k).and_then(|v| v.as_str());
                self.end_attempt(p, "refused");
                if let Some(taskee) = field("taskee").and_then(|t| t.parse().ok()) {
                    let reason = field("reason").unwrap_or("no reason given").to_string();
                    self.refusals.push(Refusal { taskee, reason });
                }
            }
            Some(Kind::Uncompleted) => {
                self.uncompleted = self.uncompleted.saturating_add(1);
                self.end_attempt(p, "uncompleted");
            }
            Some(Kind::Retried) => {
                // A failed attempt breaks a row of `uncompleted` replies.
                self.uncompleted = 0;
                self.retries += 1;
                self.end_attempt(p, "retried");
                if let Some(a) = p.fields.get("attempt").and_then(|a| a.as_u64()) {
                    let a = u32::try_from(a).unwrap_or(u32::MAX);
                    self.attempts = self.attempts.max(a.saturating_sub(1));
                }
            }
            Some(Kind::Recovered) => {
                self.end_attempt(p, "interrupted");
                self.note_attempt(p);
            }
            Some(Kind::Allocated) => self.note_allocation(p),
            _ => {}
        }
    }

    /// A `created` point: a new life of the id (a task run again by
    /// `retry`): what SPEC 7 counts and what its record shows start over;
    /// its attempts go on counting.
    fn new_life(&mut self, p: &point::Point) {
        self.created_at = parse_ts(&p.ts);
        self.submitted_at = p
            .fields
            .get("submitted_at")
            .and_then(|v| v.as_str())
            .and_then(parse_ts);
        self.refusals.clear();
        self.uncompleted = 0;
        self.offers = 0;
        self.retries = 0;
        self.attempts_log.clear();
    }

    /// A `started` point: an attempt that started (with its Slurm job and
    /// node, when it ran on a cluster).
    fn note_start(&mut self, p: &point::Point) {
        self.open_started = self.open_run;
        let attempt = p.fields.get("attempt").and_then(|a| a.as_u64());
        let text = |k: &str| p.fields.get(k).and_then(|v| v.as_str()).map(String::from);
        self.attempts_log.push(crate::model::task::AttemptLog {
            attempt: attempt.and_then(|a| u32::try_from(a).ok()).unwrap_or(0),
            started_at: p.ts.clone(),
            ended_at: None,
            outcome: None,
            kind: None,
            job_id: p.fields.get("job_id").and_then(|v| v.as_u64()),
            node: text("node"),
        });
        self.note_attempt(p);
    }

    /// An `allocated` point: a run begins (open until a point ends it).
    fn note_allocation(&mut self, p: &point::Point) {
        self.note_attempt(p);
        self.open_run = true;
        self.open_started = false;
        self.allocated_at = Some(p.ts.clone());
        let field = |k: &str| p.fields.get(k).and_then(|v| v.as_str());
        self.allocated_to = field("taskee")
            .and_then(|t| t.parse().ok())
            .map(|t| (t, field("tasker").unwrap_or_default().to_string()));
    }

    /// The attempt an `allocated`, `started` or `recovered` point names:
    /// `allocated` and `started` name an attempt that may have run (the
    /// engine can die between the spawn and the `started` point);
    /// `recovered` the one about to run.
    fn note_attempt(&mut self, p: &point::Point) {
        if let Some(a) = p.fields.get("attempt").and_then(|a| a.as_u64()) {
            let a = u32::try_from(a).unwrap_or(u32::MAX);
            let ran = if p.kind() != Some(Kind::Recovered) {
                a
            } else {
                a.saturating_sub(1)
            };
            self.attempts = self.attempts.max(ran);
        }
    }

    /// The engine died between an allocation and its `started` point (the
    /// run is open, or a `recovered` point closes it): its tasker may have
    /// run, so the attempt, which `attempts` counts, is in the attempts
    /// log too, from the allocation's time.
    fn note_unstarted(&mut self) {
        if !self.open_run || self.open_started {
            return;
        }
        // Once per allocation.
        let Some(started_at) = self.allocated_at.take() else {
            return;
        };
        self.attempts_log.push(crate::model::task::AttemptLog {
            attempt: self.attempts,
            started_at,
            ended_at: None,
            outcome: None,
            kind: None,
            job_id: None,
            node: None,
        });
    }

    /// The open attempt of the log ended at the point's time.
    fn end_attempt(&mut self, p: &point::Point, outcome: &str) {
        if let Some(a) = self.attempts_log.last_mut().filter(|a| a.outcome.is_none()) {
            a.ended_at = Some(p.ts.clone());
            a.outcome = Some(outcome.to_string());
            a.kind = p
                .fields
                .get("kind")
                .and_then(|k| serde_json::from_value(k.clone()).ok());
        }
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod history_tests;
