//! A flow's record (SPEC 12), built from its execution when it ends.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::FlowExec;
use crate::flow::run::NodeProgress;
use crate::flow::tree;
use crate::model::names::Nid;
use crate::model::task::{timestamp, ErrorKind, Object, Record, State, TaskError};

/// A flow's record (SPEC 12): the record of SPEC 9 with `tasker` and
/// `taskee` null, the tree that ran, `errors` and one `nodes` entry per
/// task node that ran.
pub(super) fn flow_record(
    fx: &FlowExec,
    created_at: DateTime<Utc>,
    state: State,
    error: Option<TaskError>,
    payload: Object,
) -> Record {
    let nodes: Vec<Value> = fx
        .flow
        .progress
        .nodes
        .iter()
        .filter_map(|(nid, p)| {
            let (st, run) = match p {
                NodeProgress::Done {
                    task: Some(run), ..
                } => ("completed", run),
                NodeProgress::Failed {
                    task: Some(run),
                    kind,
                    ..
                } => (
                    if *kind == ErrorKind::Aborted {
                        "aborted"
                    } else {
                        "failed"
                    },
                    run,
                ),
                _ => return None,
            };
            // Only task nodes whose tasker ran.
            if run.started_at.is_none() && run.attempts == 0 {
                return None;
            }
            Some(serde_json::json!({
                "nid": nid, "taskee": run.taskee, "state": st, "attempts": run.attempts,
                "started_at": run.started_at, "ended_at": run.ended_at,
            }))
        })
        .collect();
    let t = &fx.task;
    Record {
        id: t.id.clone(),
        exid: t.exid.clone(),
        nid: Nid::root(),
        domain: t.domain.clone(),
        tasker: None,
        taskee: None,
        tasker_path: None,
        state,
        reason: error.as_ref().map(|e| e.message.clone()),
        error,
        // One life of the flow; see maybe_end_flow.
        attempts: 1,
        offers: 0,
        priority: t.priority,
        headers: t.headers.clone(),
        created_at: Some(timestamp(created_at)),
        started_at: Some(timestamp(created_at)),
        ended_at: Some(timestamp(Utc::now())),
        payload,
        flow: Some(tree::to_json(&fx.flow.tree)),
        errors: Some(serde_json::to_value(&fx.flow.progress.errors).unwrap_or_default()),
        nodes: Some(nodes),
        first_started_at: None,
        attempts_log: Vec::new(),
        // Its nodes' defaults: `retry` queues the flow with them again.
        options: t.options.to_record(),
    }
}
