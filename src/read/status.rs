//! `status`: counts by state in total, per domain and per taskee, the
//! running engine and its workers (pure over a [`Listing`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::task::timestamp;
use crate::read::engine::EngineInfo;
use crate::read::summary::{ListState, Summary};
use crate::read::tasks::Listing;

/// Counts by state; every state is present (0 when none), plus `total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counts(pub BTreeMap<&'static str, usize>);

impl Default for Counts {
    fn default() -> Counts {
        let mut m: BTreeMap<&'static str, usize> =
            ListState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        m.insert("total", 0);
        Counts(m)
    }
}

impl Counts {
    fn add(&mut self, state: ListState) {
        *self.0.entry(state.as_str()).or_default() += 1;
        *self.0.entry("total").or_default() += 1;
    }

    pub fn get(&self, state: ListState) -> usize {
        self.0.get(state.as_str()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.0.get("total").copied().unwrap_or(0)
    }
}

/// The engine as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineStatus {
    pub pid: i32,
    pub started_at: String,
    pub uptime_secs: u64,
    pub workers: Option<usize>,
    pub workers_busy: usize,
    /// This engine's Slurm jobs pending and running (SPEC 14).
    pub slurm_pending: usize,
    pub slurm_running: usize,
}

/// What `status` shows (and `--json` prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The running engine; `null` when none runs.
    pub engine: Option<EngineStatus>,
    pub total: Counts,
    pub domains: BTreeMap<String, Counts>,
    /// Per taskee, for tasks that have one (queued ones may not yet).
    pub taskees: BTreeMap<String, Counts>,
    /// Files that could not be read, with why.
    pub unreadable: Vec<String>,
}

/// Counts a listing.
pub fn status(listing: &Listing, engine: Option<&EngineInfo>, now: DateTime<Utc>) -> Status {
    status_of(
        &listing.tasks,
        listing.running_nodes,
        listing.unreadable.clone(),
        engine,
        now,
    )
}

/// Counts tasks (a reader that keeps the records' summaries passes them
/// by reference): `running_nodes` occupy the workers, `unreadable` are
/// the files that could not be read.
pub fn status_of<'a>(
    tasks: impl IntoIterator<Item = &'a Summary>,
    running_nodes: usize,
    unreadable: Vec<String>,
    engine: Option<&EngineInfo>,
    now: DateTime<Utc>,
) -> Status {
    let mut total = Counts::default();
    let mut domains: BTreeMap<String, Counts> = BTreeMap::new();
    let mut taskees: BTreeMap<String, Counts> = BTreeMap::new();
    // Look up before inserting: no key is cloned for a name already seen.
    let count = |map: &mut BTreeMap<String, Counts>, key: &str, state| match map.get_mut(key) {
        Some(c) => c.add(state),
        None => map.entry(key.to_string()).or_default().add(state),
    };
    let (mut slurm_pending, mut slurm_running) = (0, 0);
    for t in tasks {
        for j in &t.slurm {
            match j.state.as_str() {
                "PENDING" => slurm_pending += 1,
                _ => slurm_running += 1,
            }
        }
        total.add(t.state);
        count(&mut domains, &t.domain, t.state);
        if let Some(taskee) = &t.taskee {
            count(&mut taskees, taskee, t.state);
        }
    }
    Status {
        engine: engine.map(|e| EngineStatus {
            pid: e.pid,
            started_at: timestamp(e.started_at),
            uptime_secs: (now - e.started_at).num_seconds().max(0) as u64,
            workers: e.workers,
            // A Slurm job holds no worker.
            workers_busy: running_nodes.saturating_sub(slurm_pending + slurm_running),
            slurm_pending,
            slurm_running,
        }),
        total,
        domains,
        taskees,
        unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: ListState, domain: &str, taskee: Option<&str>) -> Summary {
        Summary {
            id: "x".into(),
            state,
            domain: domain.into(),
            taskee: taskee.map(str::to_string),
            attempts: 0,
            priority: 0,
            created_at: None,
            started_at: None,
            ended_at: None,
            error_kind: None,
            reason: None,
            flow: false,
            slurm: Vec::new(),
        }
    }

    #[test]
    fn counts_by_state_domain_and_taskee() {
        let listing = Listing {
            tasks: vec![
                task(ListState::Completed, "a", Some("t1")),
                task(ListState::Failed, "a", Some("t1")),
                task(ListState::Queued, "b", None),
                task(ListState::Running, "b", Some("t2")),
            ],
            requests: vec![],
            running_nodes: 1,
            unreadable: vec![],
        };
        let now = Utc::now();
        let engine = EngineInfo {
            pid: 7,
            started_at: now - chrono::Duration::seconds(90),
            workers: Some(2),
        };
        let s = status(&listing, Some(&engine), now);
        assert_eq!(s.total.total(), 4);
        assert_eq!(s.total.get(ListState::Rejected), 0);
        assert_eq!(s.domains["a"].get(ListState::Failed), 1);
        assert_eq!(s.domains["b"].total(), 2);
        assert_eq!(s.taskees["t1"].total(), 2);
        assert!(!s.taskees.contains_key("-"));
        let e = s.engine.unwrap();
        assert_eq!((e.uptime_secs, e.workers, e.workers_busy), (90, Some(2), 1));
        assert!(status(&listing, None, now).engine.is_none());
    }
}
