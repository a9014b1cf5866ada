//! Priority requests (SPEC 13, `spoolflow priority ID P`): a file in
//! `var/spool/priority/` named after the task id, holding the new
//! priority (`5`, or `{"id": "a1", "priority": 5}`). They are handled as
//! cancel requests are (SPEC 8): watched, scanned at start-up and by the
//! safety rescans, applied to a queued task at once, kept for a task still
//! in `in/` until it is claimed, and moved to `rejected/` with the reason
//! for a running, ended, unknown or flow task.
//!
//! Applying one changes the node's place in the scheduler (it is queued
//! again under a new generation: its old entry goes stale), and rewrites
//! its `run/` file through the durable writer so that a restart keeps the
//! new priority. The request is removed only once that rewrite is durable:
//! after a crash before it, the next start applies it again (the change is
//! idempotent).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::body;
use super::state::{key, NodeState};
use super::Engine;
use crate::model::names::{Nid, TaskId};
use crate::scheduler::NodeKey;
use crate::store::spool;

/// The longest priority request read.
const REQUEST_LIMIT: u64 = 4096;

impl Engine {
    /// Looks at every request in `priority/` (start-up, rescans).
    pub(super) fn scan_priority(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.root.priority_requests()) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            self.take_priority(&p);
        }
    }

    /// Looks at one priority request.
    pub(super) fn take_priority(&mut self, path: &Path) {
        if self.in_flight.contains(path)
            || self.is_stuck(path)
            || self.priority_saving.values().any(|(p, _, _)| p == path)
        {
            return;
        }
        let name = match super::intake::request_entry(path) {
            Ok(Some(name)) => name,
            Ok(None) => return,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        let bytes = match spool::read_capped(path, REQUEST_LIMIT) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        let (id, priority) = match parse_priority(&name, &bytes) {
            Ok(r) => r,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        let id: TaskId = match id.parse() {
            Ok(id) => id,
            Err(e) => return self.reject(path, &e.to_string()),
        };
        if self.executions.contains_key(&id) {
            self.reprioritize(&id, priority, path);
        } else if self.root.done_file(&id).exists() || self.root.failed_file(&id).exists() {
            self.reject(path, &format!("task {id} has ended already"));
        } else if self.mode.is_stopping() {
            // Applied at the next start.
        } else {
            // Perhaps still in in/ (or being claimed): look, then decide
            // once the scan is over.
            self.pending_priorities
                .insert(id, (path.to_path_buf(), priority));
            self.scan_in();
            if self.scan.is_empty() {
                self.settle_priorities();
            }
        }
    }

    /// A task just claimed had a priority request waiting for it.
    pub(super) fn apply_pending_priority(&mut self, id: &TaskId) {
        if let Some((path, priority)) = self.pending_priorities.remove(id) {
            self.reprioritize(id, priority, &path);
        }
    }

    /// Rejects the priority requests whose task a complete scan of `in/`
    /// did not find (a claim being made durable keeps its request).
    pub(super) fn settle_priorities(&mut self) {
        if self.pending_priorities.is_empty() || !self.may_settle_requests() {
            return;
        }
        let unknown: Vec<TaskId> = self
            .pending_priorities
            .keys()
            .filter(|id| !self.claiming.contains_key(*id))
            .cloned()
            .collect();
        for id in unknown {
            if let Some((p, _)) = self.pending_priorities.remove(&id) {
                self.reject(&p, &format!("unknown task id {id}"));
            }
        }
    }

    /// Applies a request to a live task: a waiting node takes the new
    /// priority (a queued one is queued again under it); a running one, or
    /// a flow, refuses it.
    fn reprioritize(&mut self, id: &TaskId, priority: i32, request: &Path) {
        if self.is_flow(id) {
            return self.reject(
                request,
                &format!("task {id} is a flow; the priority of a flow cannot change"),
            );
        }
        let k = key(id, &Nid::root());
        let Some(node) = self.node(&k) else {
            return self.reject(request, &format!("unknown task id {id}"));
        };
        match node.state {
            NodeState::Running(_) => {
                return self.reject(
                    request,
                    &format!("task {id} is running; only a queued task's priority can change"),
                )
            }
            NodeState::Committing => {
                return self.reject(request, &format!("task {id} has ended already"))
            }
            _ => {}
        }
        // The rewritten file keeps its payload and headers: those in
        // memory (newer, while an `uncompleted` payload is being saved),
        // else the file's own.
        let body = match node.task.loaded() {
            Some(b) => b.clone(),
            None => match body::read(&self.root, id, body::limit(self.options.input_limit)) {
                Ok(b) => b,
                Err(e) => return self.reject(request, &format!("task {id}: {e}")),
            },
        };
        let Some(node) = self.node_mut(&k) else {
            return;
        };
        let old = node.task.priority;
        let requeue = match &mut node.state {
            NodeState::Offering(offer) => {
                offer.entry.priority = priority;
                false
            }
            NodeState::Queued { .. } => true,
            _ => false,
        };
        node.task.priority = priority;
        let bytes = node.task.to_file_json(&body).to_string().into_bytes();
        if requeue && old != priority {
            self.enqueue(&k);
        }
        tracing::info!("priority of task {id}: {old} -> {priority}");
        let seq = self.rewrite(&k, format!("{id}.json"), bytes);
        self.priority_saving
            .insert(k, (request.to_path_buf(), priority, seq));
    }

    /// A `run/` file was rewritten: a priority request it carried is done
    /// and removed — unless a newer request replaced it meanwhile (its
    /// events were passed over while the first was being saved): that one
    /// is looked at now.
    /// Only the rewrite that carried the request, or a later one, says
    /// so (`seq`): an earlier rewrite (an `uncompleted` payload's) does not.
    pub(super) fn priority_saved(&mut self, k: &NodeKey, seq: u64) {
        if self
            .priority_saving
            .get(k)
            .is_none_or(|(_, _, by)| *by > seq)
        {
            return;
        }
        let Some((path, applied, _)) = self.priority_saving.remove(k) else {
            return;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let now = spool::read_capped(&path, REQUEST_LIMIT)
            .ok()
            .and_then(|b| parse_priority(name, &b).ok());
        match now {
            Some((_, p)) if p != applied => self.take_priority(&path),
            _ => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// The task id and priority of a request named `name` holding `bytes`:
/// a JSON object with `priority` (and `id`, else the name's stem), or a
/// bare integer.
fn parse_priority(name: &str, bytes: &[u8]) -> Result<(String, i32), String> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let as_i32 = |v: &Value| crate::model::json_int(v).and_then(|n| i32::try_from(n).ok());
    let bad = || "expected an integer (i32), or {\"id\": …, \"priority\": …}".to_string();
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => {
            let id = o.get("id").and_then(Value::as_str).unwrap_or(stem);
            let p = o.get("priority").and_then(as_i32).ok_or_else(bad)?;
            Ok((id.to_string(), p))
        }
        Ok(v) => as_i32(&v).map(|p| (stem.to_string(), p)).ok_or_else(bad),
        Err(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_priority;

    #[test]
    fn priority_requests_name_their_task_and_priority() {
        assert_eq!(parse_priority("a1", b"5\n"), Ok(("a1".into(), 5)));
        assert_eq!(parse_priority("a1", b" -3 "), Ok(("a1".into(), -3)));
        assert_eq!(
            parse_priority("x.json", br#"{"id":"b2","priority":7}"#),
            Ok(("b2".into(), 7))
        );
        assert_eq!(
            parse_priority("x.json", br#"{"priority":7}"#),
            Ok(("x".into(), 7))
        );
        assert_eq!(parse_priority("a1", b"-0"), Ok(("a1".into(), 0)));
        for bad in [&b""[..], b"high", b"1.5", b"3000000000", br#"{"id":"a"}"#] {
            assert!(parse_priority("a1", bad).is_err(), "{bad:?}");
        }
    }
}
