//! SPEC 3–6 and 9, end to end: a task flows from in/ through a taskmaster
//! and a tasker to done/, with its points and record.

use crate::common::*;

#[test]
fn a_task_flows_to_done_with_points_and_record() {
    let t = TestRoot::new();
    t.taskmaster(
        "org",
        r#"if payload.kind == "big" { "big" } else { "small" }"#,
    );
    t.tasker(
        "org",
        "small",
        "#!/bin/sh\nsed 's/}$/,\"by\":\"small\"}/'\n",
    );
    t.tasker("org", "big", "#!/bin/sh\necho '{\"by\":\"big\"}'\n");
    t.drop_task(
        "a.json",
        r#"{"domain":"org.example","payload":{"kind":"small"}}"#,
    );
    t.drop_task("b.json", r#"{"domain":"org","payload":{"kind":"big"}}"#);
    t.run_drain(2);
    let a = t.must_record("a");
    assert_eq!(a["state"], "completed");
    assert_eq!(a["taskee"], "small");
    assert_eq!(
        a["payload"],
        serde_json::json!({"kind":"small","by":"small"})
    );
    assert_eq!(t.must_record("b")["payload"]["by"], "big");
    assert_eq!(
        t.point_names("a"),
        ["created", "offered", "allocated", "started", "completed"]
    );
    assert!(t.list("var/spool/run").is_empty());
    assert!(t.list("var/spool/in").is_empty());
}
