//! One line of `list` and one count of `status`: a task's [`Summary`], built
//! from whatever the spool holds for it (a record, a `run/` file and its
//! points, a file waiting in `in/`, a rejected file). The state of a task in
//! `run/` — queued, delayed or running — is derived from its points (pure:
//! [`live_state`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::point::{Kind, Point};
use crate::model::task::{Record, State};

/// The states `status` counts and `list --state` filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListState {
    /// Waiting for a worker, an offer or its turn (in `in/` or `run/`).
    Queued,
    /// Waiting on purpose: a retry's backoff, a concurrency key, a budget.
    Delayed,
    /// A tasker runs for it.
    Running,
    Completed,
    Failed,
    Aborted,
    /// Input that could not be accepted (`rejected/`).
    Rejected,
}

impl ListState {
    pub const ALL: [ListState; 7] = [
        ListState::Queued,
        ListState::Delayed,
        ListState::Running,
        ListState::Completed,
        ListState::Failed,
        ListState::Aborted,
        ListState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListState::Queued => "queued",
            ListState::Delayed => "delayed",
            ListState::Running => "running",
            ListState::Completed => "completed",
            ListState::Failed => "failed",
            ListState::Aborted => "aborted",
            ListState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<ListState> {
        match s {
            // `suspended` is SPEC's word for the same wait.
            "suspended" => Some(ListState::Delayed),
            _ => ListState::ALL.into_iter().find(|x| x.as_str() == s),
        }
    }

    /// Whether the task has ended (a record, or a rejection).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            ListState::Queued | ListState::Delayed | ListState::Running
        )
    }
}

impl std::fmt::Display for ListState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `list` shows of a task and `status` counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    pub state: ListState,
    /// The task's domain (`-` for a rejected file, which may have none).
    pub domain: String,
    pub taskee: Option<String>,
    pub attempts: u32,
    pub priority: i32,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// A failure's `error.kind`.
    pub error_kind: Option<String>,
    /// The first line of a failure's or a rejection's reason.
    pub reason: Option<String>,
    /// Whether the task is a flow.
    #[serde(default)]
    pub flow: bool,
    /// The Slurm jobs its nodes run as now (SPEC 14).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slurm: Vec<SlurmJob>,
}

/// A Slurm job a live node runs as, from its points (SPEC 14): `PENDING`
/// once `submitted`, `RUNNING` (on `node`) once `started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmJob {
    pub nid: String,
    pub job_id: u64,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl std::fmt::Display for SlurmJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} {}", self.job_id, self.state)?;
        if let Some(n) = &self.node {
            write!(f, " on {n}")?;
        }
        Ok(())
    }
}

/// The first line of a text, for one-line tables.
pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim_end().to_string()
}

impl Summary {
    /// The summary of an ended task.
    pub fn of_record(r: &Record) -> Summary {
        let state = match r.state {
            State::Completed => ListState::Completed,
            State::Aborted => ListState::Aborted,
            // A record is never queued or running; `failed` covers them.
            _ => ListState::Failed,
        };
        let reason = r
            .error
            .as_ref()
            .map(|e| e.message.as_str())
            .or(r.reason.as_deref())
            .map(first_line);
        Summary {
            id: r.id.as_str().to_string(),
            state,
            domain: r.domain.as_str().to_string(),
            taskee: r.taskee.as_ref().map(|t| t.as_str().to_string()),
            attempts: r.attempts,
            priority: r.priority,
            created_at: r.created_at.clone(),
            // The first attempt's start: a duration across retries.
            started_at: r.first_started_at.clone().or_else(|| r.started_at.clone()),
            ended_at: r.ended_at.clone(),
            error_kind: r.error.as_ref().map(|e| kind_name(e.kind)),
            reason,
            flow: r.flow.is_some(),
            slurm: Vec::new(),
        }
    }

    /// The time `--since` and `gc` age a task by: its end, else its
    /// creation.
    pub fn last_time(&self) -> Option<&str> {
        self.ended_at.as_deref().or(self.created_at.as_deref())
    }
}

fn kind_name(kind: crate::model::task::ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What the points of a live execution (one in `run/`) say of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub state: Option<ListState>,
    pub taskee: Option<String>,
    pub attempts: u32,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    /// Task nodes running now.
    pub running: usize,
    /// The Slurm jobs of its live nodes, by node id.
    pub jobs: Vec<SlurmJob>,
}

/// The state of a live execution from its points: the engine's last point
/// of each node decides that node's state (taskers' own points do not
/// count); the execution runs when a node runs, else waits on purpose when
/// a node does, else is queued. Ended nodes (a flow's finished ones) do
/// not count.
pub fn live_state(points: &[Point]) -> Live {
    let mut last: HashMap<&str, Kind> = HashMap::new();
    let mut jobs: HashMap<&str, SlurmJob> = HashMap::new();
    let mut live = Live::default();
    for p in points {
        if p.fields.get("source").and_then(|v| v.as_str()) == Some("tasker") {
            continue;
        }
        let Some(kind) = p.kind() else { continue };
        last.insert(p.nid.as_str(), kind);
        note_job(&mut jobs, p, kind);
        match kind {
            Kind::Created if live.created_at.is_none() => live.created_at = Some(p.ts.clone()),
            Kind::Started => {
                live.attempts += 1;
                live.started_at.get_or_insert_with(|| p.ts.clone());
                if let Some(t) = p.fields.get("taskee").and_then(|v| v.as_str()) {
                    live.taskee = Some(t.to_string());
                }
            }
            _ => {}
        }
    }
    // A node waiting for an unreachable Slurm controller while its job
    // runs is still running.
    for nid in jobs.keys() {
        if last.get(nid) == Some(&Kind::Suspended) {
            last.insert(nid, Kind::Started);
        }
    }
    live.jobs = jobs.into_values().collect();
    live.jobs.sort_by(|a, b| a.nid.cmp(&b.nid));
    let node_state = |k: Kind| match k {
        Kind::Allocated | Kind::Submitted | Kind::Started => Some(ListState::Running),
        Kind::Suspended | Kind::Retried => Some(ListState::Delayed),
        k if k.is_final() => None,
        _ => Some(ListState::Queued),
    };
    let states: Vec<ListState> = last.values().filter_map(|k| node_state(*k)).collect();
    live.running = states.iter().filter(|s| **s == ListState::Running).count();
    live.state = [ListState::Running, ListState::Delayed, ListState::Queued]
        .into_iter()
        .find(|s| states.contains(s))
        .or(Some(ListState::Queued));
    live
}

/// Follows one node's Slurm job through its points: set by `submitted`
/// and a `started` that names a job, gone with a new allocation or the
/// end of the run.
fn note_job<'a>(jobs: &mut HashMap<&'a str, SlurmJob>, p: &'a Point, kind: Kind) {
    let nid = p.nid.as_str();
    let job_id = p.fields.get("job_id").and_then(|v| v.as_u64());
    match (kind, job_id) {
        (Kind::Submitted, Some(job_id)) => {
            jobs.insert(
                nid,
                SlurmJob {
                    nid: nid.to_string(),
                    job_id,
                    state: "PENDING".into(),
                    node: None,
                },
            );
        }
        (Kind::Started, Some(job_id)) => {
            let node = p
                .fields
                .get("node")
                .and_then(|v| v.as_str())
                .map(String::from);
            jobs.insert(
                nid,
                SlurmJob {
                    nid: nid.to_string(),
                    job_id,
                    state: "RUNNING".into(),
                    node,
                },
            );
        }
        (Kind::Allocated, _) => {
            jobs.remove(nid);
        }
        (k, _) if k.ends_a_run() => {
            jobs.remove(nid);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::names::{Nid, TaskId};

    fn point(nid: &str, kind: Kind) -> Point {
        let id: TaskId = "t".parse().unwrap();
        let nid: Nid = nid.parse().unwrap();
        Point::new(kind, &id, &id, &nid).with("taskee", "stamp")
    }

    #[test]
    fn a_task_with_no_points_is_queued() {
        assert_eq!(live_state(&[]).state, Some(ListState::Queued));
    }

    #[test]
    fn the_last_point_decides() {
        let cases = [
            (vec![Kind::Created, Kind::Offered], ListState::Queued),
            (
                vec![Kind::Created, Kind::Offered, Kind::Allocated],
                ListState::Running,
            ),
            (vec![Kind::Offered, Kind::Started], ListState::Running),
            (vec![Kind::Started, Kind::Retried], ListState::Delayed),
            (vec![Kind::Created, Kind::Suspended], ListState::Delayed),
            (vec![Kind::Started, Kind::Refused], ListState::Queued),
            (vec![Kind::Started, Kind::Uncompleted], ListState::Queued),
            (vec![Kind::Started, Kind::Recovered], ListState::Queued),
        ];
        for (kinds, want) in cases {
            let points: Vec<Point> = kinds.iter().map(|k| point("0", *k)).collect();
            assert_eq!(live_state(&points).state, Some(want), "{kinds:?}");
        }
    }

    #[test]
    fn a_flow_runs_when_one_node_runs_and_ended_nodes_do_not_count() {
        let points = vec![
            point("0", Kind::Created),
            point("0_0", Kind::Started),
            point("0_0", Kind::Completed),
            point("0_1", Kind::Started),
            point("0_2", Kind::Retried),
        ];
        let live = live_state(&points);
        assert_eq!(live.state, Some(ListState::Running));
        assert_eq!(live.running, 1);
        assert_eq!(live.attempts, 2);
    }

    #[test]
    fn slurm_jobs_are_followed_from_submitted_to_started_to_the_end() {
        let submitted = point("0", Kind::Submitted).with("job_id", 12);
        let started = point("0", Kind::Started)
            .with("job_id", 12)
            .with("node", "n1");
        let live = live_state(&[point("0", Kind::Allocated), submitted.clone()]);
        assert_eq!(live.state, Some(ListState::Running));
        assert_eq!(live.jobs.len(), 1);
        assert_eq!(live.jobs[0].to_string(), "job 12 PENDING");
        let live = live_state(&[submitted.clone(), started.clone()]);
        assert_eq!(live.jobs[0].to_string(), "job 12 RUNNING on n1");
        let outage = point("0", Kind::Suspended).with("reason", "controller down");
        let live = live_state(&[submitted.clone(), started.clone(), outage]);
        assert_eq!(live.state, Some(ListState::Running), "its job runs on");
        let live = live_state(&[submitted, started, point("0", Kind::Retried)]);
        assert!(live.jobs.is_empty());
    }

    #[test]
    fn a_taskers_own_points_do_not_count() {
        let mut own = point("0", Kind::Started);
        own.fields.insert("source".into(), "tasker".into());
        let points = vec![point("0", Kind::Offered), own];
        assert_eq!(live_state(&points).state, Some(ListState::Queued));
    }

    #[test]
    fn states_parse_by_name_and_suspended_is_delayed() {
        for s in ListState::ALL {
            assert_eq!(ListState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ListState::parse("suspended"), Some(ListState::Delayed));
        assert_eq!(ListState::parse("nope"), None);
    }
}
