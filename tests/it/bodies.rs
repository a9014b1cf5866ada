//! A queued task's payload and headers stay in its `run/` file until it is
//! offered (the memory bound: see `resources`). They are read back for the
//! offer, for the record of a task that ends while queued, when its
//! priority changes, and for a reply the replies journal kept across a
//! crash; a `run/` file that turned bad before its offer fails its task
//! with the reason (SPEC 10: never a panic), and the engine goes on.

use std::fs;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// Task `a0` holds the one worker until `release` exists; every task
/// echoes its payload (its record's payload is what its tasker was given).
fn hold_tasker(t: &TestRoot) {
    t.tasker(
        "org",
        "t",
        &format!(
            "#!/bin/sh\nif [ \"$SPOOLFLOW_ID\" = a0 ]; then {}; fi\ncat\n",
            wait_file("release")
        ),
    );
}

/// Drops `a0`, the holder, then starts the engine with one worker and
/// waits until `a0` runs: the tasks dropped before the start are queued.
fn start_held(t: &TestRoot, tasks: &[(&str, Value)], extra: &[&str]) -> EngineProcess {
    hold_tasker(t);
    t.drop_task("a0.json", r#"{"domain":"org","tasker":"t"}"#);
    for (id, task) in tasks {
        t.drop_task(&format!("{id}.json"), &task.to_string());
    }
    let mut args = vec!["--workers", "1"];
    args.extend_from_slice(extra);
    let engine = t.spawn_engine(&args);
    wait_for("a0 started", DEADLINE, || {
        !t.points_named("a0", "started").is_empty()
    });
    assert!(t.list("var/spool/in").is_empty(), "claimed at start-up");
    engine
}

fn task(payload: Value, extra: Value) -> Value {
    let mut task = json!({"domain": "org", "tasker": "t", "payload": payload});
    if let (Some(t), Some(e)) = (task.as_object_mut(), extra.as_object()) {
        t.extend(e.clone());
    }
    task
}

#[test]
fn a_run_file_that_turned_bad_before_its_offer_fails_its_task_with_the_reason() {
    let t = TestRoot::new();
    let once = json!({"retries": 0});
    let good = json!({"n": 7, "deep": {"list": [1, "two", null]}});
    let tasks = [
        ("b1", task(json!({"n": 1}), once.clone())),
        ("b2", task(json!({"n": 2}), once.clone())),
        ("b3", task(json!({"n": 3}), once.clone())),
        ("b4", task(json!({"n": 4}), once.clone())),
        ("g", task(good.clone(), json!({"headers": {"by": "me"}}))),
    ];
    let engine = start_held(&t, &tasks, &["--drain"]);
    let run = |id: &str| t.join(&format!("var/spool/run/{id}.json"));
    // Between its claim and its offer: garbage, gone, a symlink (never
    // followed), another task's file.
    fs::write(run("b1"), "{\"payload\": {").unwrap();
    fs::remove_file(run("b2")).unwrap();
    fs::write(t.join("elsewhere.json"), r#"{"id":"b3","payload":{}}"#).unwrap();
    fs::remove_file(run("b3")).unwrap();
    std::os::unix::fs::symlink(t.join("elsewhere.json"), run("b3")).unwrap();
    fs::write(run("b4"), r#"{"id":"zz","payload":{"n":4}}"#).unwrap();
    fs::write(t.join("release"), "").unwrap();
    let (code, err) = engine.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "the engine went on and drained: {err}");
    assert!(!err.contains("panicked"), "{err}");

    for (id, says) in [
        ("b1", "run/b1.json is invalid"),
        ("b2", "cannot read its task file back"),
        ("b3", "cannot read its task file back"),
        ("b4", "it holds task id \"zz\""),
    ] {
        let rec = t.must_record(id);
        assert_eq!(rec["state"], "failed", "{id}: {rec:#}");
        assert_eq!(rec["error"]["kind"], "work", "{id}: {rec:#}");
        let reason = rec["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(says), "{id}: {reason}");
        assert!(t.points_named(id, "started").is_empty(), "{id} never ran");
    }
    // A good task afterwards is given exactly its payload.
    let rec = t.must_record("g");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], good);
    assert_eq!(rec["headers"], json!({"by": "me"}));
    assert!(t.list("var/spool/run").is_empty());
}

#[test]
fn a_taskmaster_sees_the_payload_read_back_and_a_bad_file_fails_in_the_pool_too() {
    let t = TestRoot::new();
    // The taskmaster runs in the offer pool, which reads the body back.
    t.taskmaster(
        "org",
        r#"if task.id != "a0" && payload.len() == 0 { reject("the payload did not come back") }
           "t""#,
    );
    let tasks = [
        ("b1", task(json!({"n": 1}), json!({"retries": 0}))),
        ("g", task(json!({"n": 2}), json!({"headers": {"by": "me"}}))),
    ];
    let engine = start_held(&t, &tasks, &["--drain"]);
    fs::write(t.join("var/spool/run/b1.json"), "[]").unwrap();
    fs::write(t.join("release"), "").unwrap();
    let (code, err) = engine.wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{err}");
    let rec = t.must_record("b1");
    assert_eq!(rec["state"], "failed", "{rec:#}");
    assert_eq!(rec["error"]["kind"], "work", "{rec:#}");
    assert!(rec["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("run/b1.json is invalid"));
    let rec = t.must_record("g");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"n": 2}));
    assert_eq!(rec["headers"], json!({"by": "me"}));
}

#[test]
fn a_task_that_ends_while_queued_has_its_payload_and_headers_in_its_record() {
    let t = TestRoot::new();
    let tasks = [
        (
            "b",
            task(
                json!({"n": 1}),
                json!({"headers": {"by": "me"}, "priority": -1}),
            ),
        ),
        (
            "c",
            task(
                json!({"n": 2}),
                json!({"headers": {"h": 2}, "start_timeout": "300ms"}),
            ),
        ),
    ];
    let engine = start_held(&t, &tasks, &[]);
    fs::write(t.join("var/spool/cancel/b"), "no longer needed").unwrap();
    wait_for("the records of b and c", DEADLINE, || {
        t.record("b").is_some() && t.record("c").is_some()
    });
    let b = t.must_record("b");
    assert_eq!(b["state"], "aborted", "{b:#}");
    assert_eq!(b["payload"], json!({"n": 1}));
    assert_eq!(b["headers"], json!({"by": "me"}));
    let c = t.must_record("c");
    assert_eq!(c["state"], "failed", "{c:#}");
    assert_eq!(c["error"]["kind"], "timeout", "{c:#}");
    assert_eq!(c["payload"], json!({"n": 2}));
    assert_eq!(c["headers"], json!({"h": 2}));
    fs::write(t.join("release"), "").unwrap();
    wait_for("a0's record", DEADLINE, || t.record("a0").is_some());
    drop(engine);
}

#[test]
fn a_priority_change_keeps_the_payload_and_headers_of_a_queued_task() {
    let t = TestRoot::new();
    let payload = json!({"n": 1, "s": "x".repeat(10_000)});
    let tasks = [(
        "b",
        task(
            payload.clone(),
            json!({"headers": {"by": "me"}, "retries": 2}),
        ),
    )];
    let engine = start_held(&t, &tasks, &[]);
    fs::write(t.join("var/spool/priority/b"), "5").unwrap();
    wait_for("the request applied", DEADLINE, || {
        t.list("var/spool/priority").is_empty()
    });
    let run: Value =
        serde_json::from_slice(&fs::read(t.join("var/spool/run/b.json")).unwrap()).unwrap();
    assert_eq!(run["priority"], 5);
    assert_eq!(run["payload"], payload);
    assert_eq!(run["headers"], json!({"by": "me"}));
    assert_eq!(run["retries"], 2);
    fs::write(t.join("release"), "").unwrap();
    wait_for("b's record", DEADLINE, || t.record("b").is_some());
    drop(engine);
    let rec = t.must_record("b");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["priority"], 5);
    assert_eq!(rec["payload"], payload);
    assert_eq!(rec["headers"], json!({"by": "me"}));
}

#[test]
fn a_reply_journaled_before_a_crash_completes_its_task_with_its_payload_and_headers() {
    let t = TestRoot::new();
    t.tasker(
        "org",
        "t",
        "#!/bin/sh\ntouch \"$SPOOLFLOW_ROOT/ran\"\ncat\n",
    );
    // What a kill -9 leaves after the reply reached the engine and before
    // its record was durable: the run/ file, the points up to `started`,
    // and the reply in the journal.
    let file = json!({"id": "x", "domain": "org", "tasker": "t", "priority": 0,
                      "payload": {"a": 1}, "headers": {"h": "v"}});
    fs::write(t.join("var/spool/run/x.json"), file.to_string()).unwrap();
    let point = |ts: u32, point: &str, extra: &str| {
        format!(
            r#"{{"ts":"2026-01-01T00:00:0{ts}.000000Z","id":"x","exid":"x","nid":"0","point":"{point}"{extra}}}"#
        )
    };
    let log = [
        point(0, "created", r#","domain":"org","priority":0"#),
        point(1, "offered", r#","taskee":"t","offer":1"#),
        point(1, "allocated", r#","taskee":"t","attempt":1"#),
        point(2, "started", r#","taskee":"t","attempt":1,"pid":1"#),
    ]
    .join("\n");
    fs::create_dir_all(t.join("var/log/tsk")).unwrap();
    fs::write(t.join("var/log/tsk/x.log"), log + "\n").unwrap();
    let reply = json!({"exid": "x", "nid": "0", "attempt": 1, "payload": {"done": 1}});
    fs::write(t.join("var/run/replies.log"), format!("{reply}\n")).unwrap();
    t.run_drain(1);
    let rec = t.must_record("x");
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["payload"], json!({"done": 1}), "the journaled reply's");
    assert_eq!(rec["headers"], json!({"h": "v"}), "the run/ file's");
    assert_eq!(rec["attempts"], 1);
    assert_eq!(rec["started_at"], "2026-01-01T00:00:02.000000Z", "{rec:#}");
    assert!(!t.join("ran").exists(), "its tasker did not run again");
}
