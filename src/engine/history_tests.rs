//! Unit tests of what recovery rebuilds from a points log: attempts,
//! `attempts_log` and `submitted_at`, and a new life of an id (a task run
//! again by `spoolflow retry`) starting over.

use super::*;
use crate::model::task::TaskFile;

/// The history of task `x` (domain `org`) read from a points log holding
/// `text`, and the task.
fn history_of_text(text: &str) -> (History, Task) {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("x.log");
    std::fs::write(&log, text).unwrap();
    let task = Task::from_file(
        TaskFile::parse(br#"{"domain":"org"}"#).unwrap(),
        Some("x"),
        None,
    )
    .unwrap();
    (history_of(&log, &task), task)
}

#[test]
fn attempts_are_rebuilt_from_the_log_and_a_new_life_starts_over() {
    let line = |ts: u32, point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:0{ts}.000000Z","id":"x","exid":"x","nid":"0","point":"{point}"{extra}}}"#
        )
    };
    let text = [
        // A first life, failed, then run again by `retry`.
        line(0, "created", ""),
        line(0, "offered", r#","taskee":"t","offer":1"#),
        line(0, "started", r#","attempt":1"#),
        line(1, "failed", r#","attempt":1"#),
        line(
            2,
            "created",
            r#","submitted_at":"2026-01-01T00:00:01.500000Z""#,
        ),
        line(2, "offered", r#","taskee":"t","offer":1"#),
        line(3, "started", r#","attempt":2"#),
        line(4, "retried", r#","attempt":3,"kind":"work","delay":"1s""#),
        line(5, "started", r#","attempt":3"#),
    ]
    .join("\n")
        + "\n";
    let (h, task) = history_of_text(&text);
    assert_eq!((h.attempts, h.offers, h.retries), (3, 1, 1));
    assert_eq!(h.next_attempt(), 4);
    assert_eq!(
        h.submitted_at.map(crate::model::task::timestamp).as_deref(),
        Some("2026-01-01T00:00:01.500000Z")
    );
    let log: Vec<_> = h
        .attempts_log
        .iter()
        .map(|a| (a.attempt, a.outcome.as_deref(), a.ended_at.is_some()))
        .collect();
    assert_eq!(log, [(2, Some("retried"), true), (3, None, false)]);
    assert_eq!(
        h.attempts_log[0].kind,
        Some(crate::model::task::ErrorKind::Work)
    );
    // Queued again, the attempt that ran when the engine died is closed.
    let mut node = crate::engine::state::Node::new(crate::engine::state::NodeTask::on_disk(task));
    h.restore(&mut node);
    assert_eq!(node.attempt, 4);
    assert_eq!(
        node.past().attempts_log[1].outcome.as_deref(),
        Some("interrupted")
    );
}

#[test]
fn a_flow_run_again_starts_its_task_nodes_over() {
    let line = |ts: u32, nid: &str, point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:0{ts}.000000Z","id":"f","exid":"f","nid":"{nid}","point":"{point}"{extra}}}"#
        )
    };
    let text = [
        // A first life: node 0_0 offered twice, retried once, failed.
        line(0, "0", "created", ""),
        line(0, "0_0", "offered", r#","taskee":"t","offer":1"#),
        line(0, "0_0", "allocated", r#","attempt":1,"taskee":"t""#),
        line(0, "0_0", "started", r#","attempt":1"#),
        line(
            1,
            "0_0",
            "retried",
            r#","attempt":2,"kind":"work","delay":"1s""#,
        ),
        line(2, "0_0", "offered", r#","taskee":"t","offer":2"#),
        line(2, "0_0", "allocated", r#","attempt":2,"taskee":"t""#),
        line(2, "0_0", "started", r#","attempt":2"#),
        line(3, "0_0", "failed", r#","attempt":2"#),
        line(3, "0", "failed", ""),
        // Run again by `retry`: the flow's `created` is at its root only.
        line(4, "0", "created", ""),
        line(5, "0_0", "offered", r#","taskee":"t","offer":1"#),
        line(5, "0_0", "allocated", r#","attempt":1,"taskee":"t""#),
        line(5, "0_0", "started", r#","attempt":1"#),
    ]
    .join("\n")
        + "\n";
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("f.log");
    std::fs::write(&log, text).unwrap();
    let points = crate::store::points::read_points(&log).unwrap();
    let id: TaskId = "f".parse().unwrap();
    let h = node_history(&points, &id, &"0_0".parse().unwrap());
    assert_eq!((h.attempts, h.offers, h.retries), (1, 1, 0));
    assert_eq!(h.next_attempt(), 2);
    assert_eq!(
        h.open_run().map(|o| (o.attempt, o.started)),
        Some((1, true))
    );
    let log: Vec<_> = h.attempts_log.iter().map(|a| a.attempt).collect();
    assert_eq!(log, [1]);
}

#[test]
fn an_attempt_allocated_when_the_engine_died_is_in_the_attempts_log() {
    let line = |ts: u32, point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:0{ts}.000000Z","id":"x","exid":"x","nid":"0","point":"{point}"{extra}}}"#
        )
    };
    let alloc = r#","taskee":"t","tasker":"tsk/t","attempt":1"#;
    let text = [
        line(0, "created", ""),
        line(1, "offered", r#","taskee":"t","offer":1"#),
        // The engine died after the spawn, before `started`.
        line(2, "allocated", alloc),
        line(3, "recovered", r#","attempt":2"#),
        line(4, "offered", r#","taskee":"t","offer":2"#),
        // And again.
        line(
            5,
            "allocated",
            &alloc.replace("\"attempt\":1", "\"attempt\":2"),
        ),
    ]
    .join("\n")
        + "\n";
    let (h, _) = history_of_text(&text);
    assert_eq!(h.attempts, 2);
    let log: Vec<_> = h
        .attempts_log
        .iter()
        .map(|a| (a.attempt, a.started_at.as_str(), a.outcome.as_deref()))
        .collect();
    assert_eq!(
        log,
        [
            (1, "2026-01-01T00:00:02.000000Z", Some("interrupted")),
            (2, "2026-01-01T00:00:05.000000Z", None),
        ]
    );
    let open = h.open_run().expect("the last run is open");
    assert!(!open.started, "it never logged `started`");
}

#[test]
fn a_flow_whose_root_is_its_task_node_starts_its_attempts_over_in_each_life() {
    let line = |ts: u32, point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:0{ts}.000000Z","id":"f","exid":"f","nid":"0","point":"{point}"{extra}}}"#
        )
    };
    let points: Vec<point::Point> = [
        line(0, "created", ""),
        line(1, "started", r#","attempt":1"#),
        line(1, "retried", r#","attempt":2,"kind":"work","delay":"1s""#),
        line(1, "started", r#","attempt":2"#),
        line(2, "failed", r#","attempt":2"#),
        // `retry`: the flow's second life.
        line(3, "created", ""),
        line(
            4,
            "allocated",
            r#","taskee":"t","tasker":"tsk/t","attempt":1"#,
        ),
        line(5, "started", r#","attempt":1"#),
    ]
    .iter()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let (id, nid) = ("f".parse().unwrap(), crate::model::names::Nid::root());
    let h = node_history(&points, &id, &nid);
    assert_eq!(h.attempts, 1, "the flow's second life ran its node once");
    assert_eq!(h.attempts_log.len(), 1);
}

#[test]
fn a_taskers_own_points_never_count_in_recovery() {
    let line = |point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:00.000001Z","id":"x","exid":"x","nid":"0","point":"{point}"{extra}}}"#
        )
    };
    let text = [
        line("created", ""),
        line("offered", r#","taskee":"t","offer":1"#),
        line("allocated", r#","attempt":1"#),
        line("started", r#","attempt":1,"pid":1"#),
        line("retried", r#","attempt":7,"source":"tasker""#),
        line("started", r#","attempt":9,"source":"tasker""#),
        line("offered", r#","source":"tasker""#),
    ]
    .join("\n")
        + "\n";
    let (h, _) = history_of_text(&text);
    assert_eq!((h.attempts, h.offers, h.retries), (1, 1, 0));
}
