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

/// The engine caches what a taskee resolves to while it watches `tsk/`: a
/// change there (a tasker added nearer the domain, a tasker rewritten, a
/// tasker made non-executable) is seen by the next task.
#[test]
fn a_running_engine_sees_changes_under_tsk() {
    let t = TestRoot::new();
    t.tasker("org", "w", "#!/bin/sh\necho '{\"by\":\"org\"}'\n");
    let engine = t.start_in_process(spoolflow::Options {
        workers: 1,
        ..spoolflow::Options::default()
    });
    let run = |id: &str| {
        t.drop_task(
            &format!("{id}.json"),
            r#"{"domain":"org.example","tasker":"w"}"#,
        );
        wait_for(id, DEADLINE, || t.record(id).is_some());
        t.must_record(id)
    };
    assert_eq!(run("a")["payload"]["by"], "org");
    // A nearer tasker of the same name now wins.
    t.tasker(
        "org.example",
        "w",
        "#!/bin/sh\necho '{\"by\":\"org.example\"}'\n",
    );
    assert_eq!(run("b")["payload"]["by"], "org.example");
    // Rewritten in place.
    t.tasker(
        "org.example",
        "w",
        "#!/bin/sh\necho '{\"by\":\"rewritten\"}'\n",
    );
    assert_eq!(run("c")["payload"]["by"], "rewritten");
    // Made non-executable: the task fails config.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        t.join("tsk/org.example/w"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let d = run("d");
    assert_eq!(d["error"]["kind"], "config", "{d}");
    engine.stop();
}

/// Records are written into recycled `run/` files, but never into one that
/// has another link: a user who kept a hard link to the task file dropped
/// must not see (or change) a later task's record through it.
#[test]
fn a_task_file_with_another_link_is_never_recycled_into_a_record() {
    use std::os::unix::fs::MetadataExt;
    let t = TestRoot::new();
    t.tasker("org", "echo", "#!/bin/sh\ncat\n");
    let kept = t.join("kept.json");
    std::fs::write(
        &kept,
        r#"{"domain":"org","tasker":"echo","payload":{"n":1}}"#,
    )
    .unwrap();
    std::fs::hard_link(&kept, t.join("var/spool/in/a.json")).unwrap();
    let mut dropped = Vec::new();
    for i in 0..5 {
        let p = t.drop_task(
            &format!("b{i}.json"),
            r#"{"domain":"org","tasker":"echo","payload":{"n":2}}"#,
        );
        dropped.push(std::fs::metadata(p).unwrap().ino());
    }
    t.run_drain(1);
    assert_eq!(t.must_record("a")["state"], "completed");
    let kept_ino = std::fs::metadata(&kept).unwrap().ino();
    for i in 0..5 {
        let rec = t.join(&format!("var/spool/done/b{i}.json"));
        assert_ne!(std::fs::metadata(&rec).unwrap().ino(), kept_ino);
    }
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        r#"{"domain":"org","tasker":"echo","payload":{"n":1}}"#
    );
    // Recycling does happen for the others: some record reuses the inode of
    // an earlier task's file (the records are not all new inodes).
    let mode = std::fs::metadata(t.join("var/spool/done/b4.json"))
        .unwrap()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "records are private to the engine's user"
    );
}
